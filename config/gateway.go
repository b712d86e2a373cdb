package config

import (
	"fmt"
	"os"
	"regexp"
	"time"

	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Gateway configures gateway mode: heirloom in front of one unmodified appservice bridge.
// Gateway mode is off when Registration is empty.
type Gateway struct {
	// Registration is the bridge's own registration file, read as it is.
	Registration string `yaml:"registration"`
	// BridgeURL is where heirloom delivers the bridge's transactions; empty: the registration's url.
	BridgeURL string `yaml:"bridge_url"`
	// EncryptNewRooms adds m.room.encryption and HistoryVisibility to rooms the bridge creates.
	EncryptNewRooms bool `yaml:"encrypt_new_rooms"`
	// HistoryVisibility is the history visibility of rooms heirloom encrypts for the bridge.
	HistoryVisibility event.HistoryVisibility `yaml:"history_visibility"`
	// DecryptWait is how long an event whose key has not arrived holds back its room.
	DecryptWait time.Duration `yaml:"decrypt_wait"`
	// MaxMediaSize caps a file heirloom encrypts for a bridge's send, in bytes.
	MaxMediaSize int64 `yaml:"max_media_size"`
	// MaxOutboxSize caps the bytes of the events stored for the bridge and not yet acknowledged:
	// over it, heirloom refuses the homeserver's transactions, which the homeserver holds and
	// sends again (or, while the bridge is up, sets aside the new events of a room holding more
	// than a quarter of it); and the bytes of the events set aside.
	MaxOutboxSize int64 `yaml:"max_outbox_size"`
}

// Gateway defaults, for keys a config leaves out.
const (
	defaultDecryptWait   = 5 * time.Second
	defaultMaxMediaSize  = 50 << 20
	defaultMaxOutboxSize = 256 << 20
	// MinMaxOutboxSize is the smallest gateway.max_outbox_size: a few homeserver transactions of
	// large events.
	MinMaxOutboxSize = 1 << 20
)

// enabled reports whether gateway mode is configured.
func (g Gateway) enabled() bool { return g.Registration != "" }

// Wait returns gateway.decrypt_wait, or its default.
func (g Gateway) Wait() time.Duration {
	if g.DecryptWait == 0 {
		return defaultDecryptWait
	}
	return g.DecryptWait
}

// MediaCap returns gateway.max_media_size, or its default.
func (g Gateway) MediaCap() int64 {
	if g.MaxMediaSize == 0 {
		return defaultMaxMediaSize
	}
	return g.MaxMediaSize
}

// OutboxCap returns gateway.max_outbox_size, or its default.
func (g Gateway) OutboxCap() int64 {
	if g.MaxOutboxSize == 0 {
		return defaultMaxOutboxSize
	}
	return g.MaxOutboxSize
}

// Visibility returns gateway.history_visibility, or shared.
func (g Gateway) Visibility() event.HistoryVisibility {
	if g.HistoryVisibility == "" {
		return event.HistoryVisibilityShared
	}
	return g.HistoryVisibility
}

func (g Gateway) validate(bad func(key, format string, args ...any) error) error {
	if !g.enabled() {
		return nil
	}
	if g.Registration == "/path/to/bridge-registration.yaml" {
		return bad("gateway.registration", "not configured (still the example value)")
	}
	if g.BridgeURL != "" {
		if err := checkURL(g.BridgeURL); err != nil {
			return bad("gateway.bridge_url", "%v", err)
		}
	}
	switch g.Visibility() {
	case event.HistoryVisibilityShared, event.HistoryVisibilityJoined, event.HistoryVisibilityInvited, event.HistoryVisibilityWorldReadable:
	default:
		return bad("gateway.history_visibility", "must be shared, joined, invited or world_readable")
	}
	if g.DecryptWait < 0 || g.DecryptWait > 10*time.Minute {
		return bad("gateway.decrypt_wait", "must be between 0s and 10m (default 5s)")
	}
	if g.MaxMediaSize < 0 {
		return bad("gateway.max_media_size", "must not be negative")
	}
	if g.MaxOutboxSize != 0 && g.MaxOutboxSize < MinMaxOutboxSize {
		return bad("gateway.max_outbox_size", "must be at least %d bytes (1 MiB; default %d, 256 MiB)", MinMaxOutboxSize, defaultMaxOutboxSize)
	}
	return nil
}

// Bridge is the bridge gateway mode stands in front of, from its own registration.
type Bridge struct {
	Registration *appservice.Registration
	// URL is where heirloom delivers the bridge's transactions.
	URL string
	// Bot is the bridge's sender_localpart as a user ID.
	Bot id.UserID

	users []*regexp.Regexp
	rooms []*regexp.Regexp
	alias []*regexp.Regexp
}

// LoadBridge reads the bridge's registration named by gateway.registration and checks what
// heirloom relies on: an ID, both tokens (different from heirloom's own), a sender_localpart and
// a URL to deliver to.
func (cfg *Config) LoadBridge() (*Bridge, error) {
	g := cfg.Gateway
	data, err := os.ReadFile(g.Registration)
	if err != nil {
		return nil, fmt.Errorf("%w: gateway.registration: %w", errInvalid, err)
	}
	reg, err := parseBridgeRegistration(data)
	if err != nil {
		return nil, fmt.Errorf("%w: gateway.registration %s: %w", errInvalid, g.Registration, err)
	}
	b := &Bridge{Registration: reg, URL: reg.URL, Bot: id.NewUserID(reg.SenderLocalpart, cfg.Homeserver.Domain)}
	if g.BridgeURL != "" {
		b.URL = g.BridgeURL
	}
	switch {
	case reg.ID == "":
		return nil, fmt.Errorf("%w: gateway.registration %s has no id", errInvalid, g.Registration)
	case reg.AppToken == "" || reg.ServerToken == "":
		return nil, fmt.Errorf("%w: gateway.registration %s lacks as_token or hs_token", errInvalid, g.Registration)
	case reg.AppToken == cfg.AppService.ASToken || reg.ServerToken == cfg.AppService.HSToken ||
		reg.AppToken == cfg.AppService.HSToken || reg.ServerToken == cfg.AppService.ASToken:
		return nil, fmt.Errorf("%w: appservice.as_token and hs_token must differ from the bridge's tokens in %s", errInvalid, g.Registration)
	case reg.SenderLocalpart == "":
		return nil, fmt.Errorf("%w: gateway.registration %s has no sender_localpart", errInvalid, g.Registration)
	case b.URL == "" || b.URL == "null":
		return nil, fmt.Errorf("%w: gateway.registration %s has no url; set gateway.bridge_url", errInvalid, g.Registration)
	}
	if err = checkURL(b.URL); err != nil {
		return nil, fmt.Errorf("%w: the bridge's url: %w", errInvalid, err)
	}
	compile := func(ns []appservice.Namespace) ([]*regexp.Regexp, error) {
		var out []*regexp.Regexp
		for _, n := range ns {
			re, err := regexp.Compile(n.Regex)
			if err != nil {
				return nil, fmt.Errorf("%w: gateway.registration %s: bad namespace regex %q: %w", errInvalid, g.Registration, n.Regex, err)
			}
			out = append(out, re)
		}
		return out, nil
	}
	if b.users, err = compile(reg.Namespaces.UserIDs); err != nil {
		return nil, err
	}
	if b.rooms, err = compile(reg.Namespaces.RoomIDs); err != nil {
		return nil, err
	}
	if b.alias, err = compile(reg.Namespaces.RoomAliases); err != nil {
		return nil, err
	}
	return b, nil
}

// parseBridgeRegistration reads a registration file as a bridge wrote it: keys heirloom does not
// know are the bridge's business and are left alone.
func parseBridgeRegistration(data []byte) (*appservice.Registration, error) {
	var reg appservice.Registration
	if err := yaml.Unmarshal(data, &reg); err != nil {
		return nil, err
	}
	return &reg, nil
}

// isUser reports whether userID is the bridge's: its bot or in its user namespaces. Namespace
// regexes are matched against the whole user ID, as Synapse does (anchored at the start; a regex
// such as heisenbridge's @irc_.* names no server part).
func (b *Bridge) isUser(userID id.UserID) bool {
	if userID == b.Bot {
		return true
	}
	return matchAny(b.users, string(userID))
}

// IsRoom reports whether the room ID lies in the bridge's room namespaces.
func (b *Bridge) IsRoom(roomID id.RoomID) bool { return matchAny(b.rooms, string(roomID)) }

// IsAlias reports whether the alias lies in the bridge's alias namespaces.
func (b *Bridge) IsAlias(alias id.RoomAlias) bool { return matchAny(b.alias, string(alias)) }

func matchAny(res []*regexp.Regexp, s string) bool {
	for _, re := range res {
		if loc := re.FindStringIndex(s); loc != nil && loc[0] == 0 {
			return true
		}
	}
	return false
}
