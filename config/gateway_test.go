package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"
)

// heisenbridgeRegistration is a registration as heisenbridge writes it: a user regex without a
// server part, a url, and keys heirloom does not know.
const heisenbridgeRegistration = `id: heisenbridge
url: http://127.0.0.1:9898
as_token: bridge-as-token-0123456789abcdef
hs_token: bridge-hs-token-0123456789abcdef
rate_limited: false
sender_localpart: heisenbridge
namespaces:
  users:
  - regex: '@irc_.*'
    exclusive: true
  aliases: []
  rooms: []
heisenbridge:
  media_url: http://example.org
`

func gatewayConfig(t *testing.T, registration string) *Config {
	t.Helper()
	cfg := validConfig(t)
	cfg.Gateway.Registration = filepath.Join(t.TempDir(), "bridge.yaml")
	require.NoError(t, os.WriteFile(cfg.Gateway.Registration, []byte(registration), 0o600))
	require.NoError(t, cfg.Validate())
	return cfg
}

func TestLoadBridge(t *testing.T) {
	cfg := gatewayConfig(t, heisenbridgeRegistration)
	b, err := cfg.LoadBridge()
	require.NoError(t, err)
	require.Equal(t, "http://127.0.0.1:9898", b.URL)
	require.Equal(t, id.UserID("@heisenbridge:localhost"), b.Bot)
	require.True(t, b.isUser("@irc_alice:localhost"))
	require.True(t, b.isUser("@heisenbridge:localhost"))
	require.False(t, b.isUser("@alice:localhost"))
	require.False(t, b.isUser("@x_irc_alice:localhost"), "a namespace regex is anchored at the start, as Synapse matches it")

	cfg.Gateway.BridgeURL = "http://127.0.0.1:7777"
	b, err = cfg.LoadBridge()
	require.NoError(t, err)
	require.Equal(t, "http://127.0.0.1:7777", b.URL, "gateway.bridge_url wins over the registration's url")
}

func TestLoadBridgeRefusesWhatHeirloomCannotRelyOn(t *testing.T) {
	for _, tc := range []struct {
		name, registration, want string
		mutate                   func(cfg *Config)
	}{
		{"missing file", "", "gateway.registration", func(cfg *Config) { cfg.Gateway.Registration += ".missing" }},
		{"not YAML", "{{{", "gateway.registration", nil},
		{"no tokens", strings.Replace(heisenbridgeRegistration, "as_token: bridge-as-token-0123456789abcdef\n", "", 1), "as_token", nil},
		{"no sender", strings.Replace(heisenbridgeRegistration, "sender_localpart: heisenbridge\n", "", 1), "sender_localpart", nil},
		{"no url", strings.Replace(heisenbridgeRegistration, "url: http://127.0.0.1:9898\n", "", 1), "gateway.bridge_url", nil},
		{"bad regex", strings.Replace(heisenbridgeRegistration, "'@irc_.*'", "'@irc_(('", 1), "regex", nil},
		{"heirloom's own token", heisenbridgeRegistration, "must differ", func(cfg *Config) {
			cfg.AppService.ASToken = "bridge-as-token-0123456789abcdef"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := gatewayConfig(t, tc.registration)
			if tc.mutate != nil {
				tc.mutate(cfg)
			}
			_, err := cfg.LoadBridge()
			require.ErrorIs(t, err, errInvalid)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestGatewayValidation(t *testing.T) {
	for _, tc := range []struct {
		key    string
		mutate func(*Gateway)
	}{
		{"gateway.registration", func(g *Gateway) { g.Registration = "/path/to/bridge-registration.yaml" }},
		{"gateway.bridge_url", func(g *Gateway) { g.BridgeURL = "ftp://bridge" }},
		{"gateway.history_visibility", func(g *Gateway) { g.HistoryVisibility = "everyone" }},
		{"gateway.decrypt_wait", func(g *Gateway) { g.DecryptWait = time.Hour }},
		{"gateway.max_media_size", func(g *Gateway) { g.MaxMediaSize = -1 }},
		{"gateway.max_outbox_size", func(g *Gateway) { g.MaxOutboxSize = -1 }},
		{"gateway.max_outbox_size", func(g *Gateway) { g.MaxOutboxSize = 4096 }},
	} {
		t.Run(tc.key, func(t *testing.T) {
			cfg := validConfig(t)
			cfg.Gateway.Registration = "bridge.yaml"
			tc.mutate(&cfg.Gateway)
			err := cfg.Validate()
			require.ErrorIs(t, err, errInvalid)
			require.Contains(t, err.Error(), tc.key)
		})
	}
}

// gateway.max_outbox_size left out is 256 MiB; a value of at least 1 MiB is taken as it is.
func TestGatewayOutboxCap(t *testing.T) {
	require.EqualValues(t, 256<<20, Gateway{}.OutboxCap())
	cfg := validConfig(t)
	cfg.Gateway.Registration = "bridge.yaml"
	cfg.Gateway.MaxOutboxSize = 1 << 20
	require.NoError(t, cfg.Validate())
	require.EqualValues(t, 1<<20, cfg.Gateway.OutboxCap())
}

// In gateway mode, the registration the homeserver loads is the bridge's with heirloom's URL and
// heirloom's own tokens, never the bridge's; heirloom's namespace stays beside the bridge's.
func TestGatewayRegistration(t *testing.T) {
	cfg := gatewayConfig(t, heisenbridgeRegistration)
	var err error
	cfg.Bridge, err = cfg.LoadBridge()
	require.NoError(t, err)
	reg := cfg.Registration()
	require.Equal(t, "heisenbridge", reg.ID)
	require.Equal(t, "heisenbridge", reg.SenderLocalpart)
	require.Equal(t, cfg.AppService.Address, reg.URL)
	require.Equal(t, cfg.AppService.ASToken, reg.AppToken)
	require.Equal(t, cfg.AppService.HSToken, reg.ServerToken)
	require.NotContains(t, []string{reg.AppToken, reg.ServerToken}, "bridge-as-token-0123456789abcdef")
	require.True(t, reg.EphemeralEvents && reg.SoruEphemeralEvents && reg.MSC3202 && reg.MSC4190)
	var regexes []string
	for _, ns := range reg.Namespaces.UserIDs {
		regexes = append(regexes, ns.Regex)
	}
	require.Contains(t, regexes, "@irc_.*", "the bridge's namespace is copied as it is")
	require.Contains(t, regexes, `^@heirloom_.+:localhost$`)
	require.Equal(t, "heisenbridge", cfg.RegisteredID())
	require.Equal(t, id.UserID("@heisenbridge:localhost"), cfg.SenderUserID(), "the homeserver's sender is the bridge's bot")
	require.NotEqual(t, cfg.BotUserID(), cfg.SenderUserID())
	cfg.Bridge = nil
	require.Equal(t, cfg.BotUserID(), cfg.SenderUserID(), "without a bridge, heirloom's bot is the sender")
}

// A bridge whose namespace is wider than it should be still cannot claim heirloom's own users:
// its token would act as them and read with their keys.
func TestBridgeNamespaceNeverCoversHeirloomsUsers(t *testing.T) {
	cfg := gatewayConfig(t, strings.Replace(heisenbridgeRegistration, "'@irc_.*'", "'@.*'", 1))
	var err error
	cfg.Bridge, err = cfg.LoadBridge()
	require.NoError(t, err)
	require.True(t, cfg.IsBridgeUser("@anyone:localhost"))
	require.False(t, cfg.IsBridgeUser(id.NewUserID(cfg.AppService.PuppetPrefix+"bob", cfg.Homeserver.Domain)))
	require.False(t, cfg.IsBridgeUser(cfg.BotUserID()))
	require.False(t, cfg.IsBridgeUser("@anyone:elsewhere.example"), "only local users are the bridge's")
	require.True(t, cfg.IsManaged(id.NewUserID(cfg.AppService.PuppetPrefix+"bob", cfg.Homeserver.Domain)))
}
