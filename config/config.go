// Package config provides heirloom's configuration: the schema, loading, validation and
// the one-time generation of secrets.
package config

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix/id"
)

// generate is the placeholder value that asks heirloom to fill in a random secret.
const generate = "generate"

// errInvalid is wrapped by every validation error, so callers can tell a bad config from an unreadable file.
var errInvalid = errors.New("invalid configuration")

// Config is heirloom's configuration, as documented in config.example.yaml.
type Config struct {
	Homeserver     Homeserver     `yaml:"homeserver"`
	AppService     AppService     `yaml:"appservice"`
	Database       Database       `yaml:"database"`
	Encryption     Encryption     `yaml:"encryption"`
	Provisioning   Provisioning   `yaml:"provisioning"`
	HistorySharing HistorySharing `yaml:"history_sharing"`
	Gateway        Gateway        `yaml:"gateway"`
	// Admins are the users heirloom's bot answers: user IDs or user-ID globs.
	Admins  []string `yaml:"admins"`
	Logging Logging  `yaml:"logging"`

	// Bridge is the bridge gateway mode stands in front of, read from gateway.registration by
	// Load; nil when gateway mode is off.
	Bridge *Bridge `yaml:"-"`
}

// Homeserver says where the homeserver is and what it is called.
type Homeserver struct {
	Address string `yaml:"address"`
	Domain  string `yaml:"domain"`
}

// AppService holds heirloom's listener and registration identity.
type AppService struct {
	Address      string `yaml:"address"`
	Hostname     string `yaml:"hostname"`
	Port         int    `yaml:"port"`
	ID           string `yaml:"id"`
	BotUsername  string `yaml:"bot_username"`
	PuppetPrefix string `yaml:"puppet_prefix"`
	ASToken      string `yaml:"as_token"`
	HSToken      string `yaml:"hs_token"`
}

// Database selects the database backend.
type Database struct {
	Type         string `yaml:"type"`
	URI          string `yaml:"uri"`
	MaxOpenConns int    `yaml:"max_open_conns"`
	MaxIdleConns int    `yaml:"max_idle_conns"`
}

// Encryption holds the pickle key for secrets at rest and the puppets' device upkeep.
type Encryption struct {
	PickleKey string `yaml:"pickle_key"`
	// MaintenanceInterval is how often one-time keys are replenished, loaded puppets' to-device
	// inboxes swept and idle machines unloaded. Zero (a config from before the key) means 5m.
	MaintenanceInterval time.Duration `yaml:"maintenance_interval"`
}

// defaultMaintenanceInterval is encryption.maintenance_interval when the config leaves it out.
const defaultMaintenanceInterval = 5 * time.Minute

// Maintenance returns encryption.maintenance_interval, or its default when unset.
func (e Encryption) Maintenance() time.Duration {
	if e.MaintenanceInterval == 0 {
		return defaultMaintenanceInterval
	}
	return e.MaintenanceInterval
}

// Provisioning holds the bridge-facing API's secret.
type Provisioning struct {
	SharedSecret string `yaml:"shared_secret"`
}

// HistorySharing configures MSC4268.
type HistorySharing struct {
	ShareOnInvite bool          `yaml:"share_on_invite"`
	AutoJoin      []string      `yaml:"auto_join"`
	AcceptWindow  time.Duration `yaml:"accept_window"`
	MaxBundleSize int64         `yaml:"max_bundle_size"`
	// RedeliverWindow is how long after a puppet's invite its bundle still goes to the invitee's
	// new devices. Unset (a config from before the key) means 7 days; 0 turns redelivery off.
	RedeliverWindow *time.Duration `yaml:"redeliver_window"`
}

// defaultRedeliverWindow is history_sharing.redeliver_window when the config leaves it out.
const defaultRedeliverWindow = 7 * 24 * time.Hour

// Redeliver returns history_sharing.redeliver_window: its default when unset, 0 when off.
func (h HistorySharing) Redeliver() time.Duration {
	if h.RedeliverWindow == nil {
		return defaultRedeliverWindow
	}
	return *h.RedeliverWindow
}

// Logging configures zerolog.
type Logging struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// Parse decodes a configuration document. It does not validate it.
func Parse(data []byte) (*Config, error) {
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("%w: %w", errInvalid, err)
	}
	return &cfg, nil
}

// Load reads the file at path, fills in "generate" secrets (saving them back to the file
// once, so they stay stable across restarts) and validates the result.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("failed to read config: %w", err)
	}
	filled, changed, err := fillSecrets(data)
	if err != nil {
		return nil, err
	}
	cfg, err := Parse(filled)
	if err != nil {
		return nil, err
	}
	if err = cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Gateway.enabled() {
		if cfg.Bridge, err = cfg.LoadBridge(); err != nil {
			return nil, err
		}
	}
	if changed {
		if err = os.WriteFile(path, filled, 0o600); err != nil {
			return nil, fmt.Errorf("failed to save generated secrets to config: %w", err)
		}
		// WriteFile keeps the mode of an existing file: a file that now holds secrets must be 0600.
		if err = os.Chmod(path, 0o600); err != nil {
			return nil, fmt.Errorf("failed to restrict config permissions: %w", err)
		}
	}
	return cfg, nil
}

// Secrets and config changes are handled here rather than with go.mau.fi/util/configupgrade, which
// the mautrix bridges use: it rebuilds the file from the embedded example on every start, copying
// the user's values across, so the user's own comments and layout are lost and unknown keys vanish
// silently, where heirloom refuses unknown keys (a typo must not pass for a default). heirloom's
// schema has had no renamed or moved key yet; a key added later defaults in code
// (Encryption.Maintenance). The first rename is the point to adopt configupgrade, whose Copy and
// Move helpers are made for it.

// secretKeys are the dotted keys whose "generate" value is replaced with a random secret.
var secretKeys = []string{"appservice.as_token", "appservice.hs_token", "encryption.pickle_key", "provisioning.shared_secret"}

// fillSecrets replaces every "generate" secret in the YAML document with a random value,
// keeping comments and layout. It reports whether anything changed.
func fillSecrets(data []byte) ([]byte, bool, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, false, fmt.Errorf("%w: %w", errInvalid, err)
	}
	changed := false
	for _, key := range secretKeys {
		node := lookup(&doc, strings.Split(key, "."))
		if node != nil && node.Value == generate {
			node.Value = randomSecret()
			node.Style = 0
			changed = true
		}
	}
	if !changed {
		return data, false, nil
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(4)
	if err := enc.Encode(&doc); err != nil {
		return nil, false, fmt.Errorf("failed to encode config: %w", err)
	}
	return buf.Bytes(), true, nil
}

func lookup(node *yaml.Node, keys []string) *yaml.Node {
	if node.Kind == yaml.DocumentNode && len(node.Content) > 0 {
		node = node.Content[0]
	}
	for _, key := range keys {
		if node.Kind != yaml.MappingNode {
			return nil
		}
		var next *yaml.Node
		for i := 0; i+1 < len(node.Content); i += 2 {
			if node.Content[i].Value == key {
				next = node.Content[i+1]
			}
		}
		if next == nil {
			return nil
		}
		node = next
	}
	return node
}

func randomSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

var localpartRe = regexp.MustCompile(`^[a-z0-9._=/+-]+$`)

// Validate checks every value and returns an error naming the first bad key.
func (cfg *Config) Validate() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("%w: %s %s", errInvalid, key, fmt.Sprintf(format, args...))
	}
	if err := checkURL(cfg.Homeserver.Address); err != nil {
		return bad("homeserver.address", "%v", err)
	} else if cfg.Homeserver.Address == "https://matrix.example.com" {
		return bad("homeserver.address", "not configured (still the example value)")
	}
	if cfg.Homeserver.Domain == "" || cfg.Homeserver.Domain == "example.com" {
		return bad("homeserver.domain", "not configured")
	}
	if err := checkURL(cfg.AppService.Address); err != nil {
		return bad("appservice.address", "%v", err)
	}
	if cfg.AppService.Hostname == "" {
		return bad("appservice.hostname", "is empty")
	}
	if cfg.AppService.Port <= 0 || cfg.AppService.Port > 65535 {
		return bad("appservice.port", "must be between 1 and 65535, got %d", cfg.AppService.Port)
	}
	if cfg.AppService.ID == "" {
		return bad("appservice.id", "is empty")
	}
	if !localpartRe.MatchString(cfg.AppService.BotUsername) {
		return bad("appservice.bot_username", "is not a valid localpart: %q", cfg.AppService.BotUsername)
	}
	if cfg.AppService.PuppetPrefix == "" || !localpartRe.MatchString(cfg.AppService.PuppetPrefix) {
		return bad("appservice.puppet_prefix", "must be a non-empty localpart prefix, got %q", cfg.AppService.PuppetPrefix)
	}
	if strings.HasPrefix(cfg.AppService.BotUsername, cfg.AppService.PuppetPrefix) {
		return bad("appservice.bot_username", "must not start with the puppet prefix %q", cfg.AppService.PuppetPrefix)
	}
	for key, value := range map[string]string{
		"appservice.as_token":        cfg.AppService.ASToken,
		"appservice.hs_token":        cfg.AppService.HSToken,
		"encryption.pickle_key":      cfg.Encryption.PickleKey,
		"provisioning.shared_secret": cfg.Provisioning.SharedSecret,
	} {
		if value == generate || len(value) < 16 {
			return bad(key, "must be at least 16 characters (or \"generate\")")
		}
	}
	if cfg.AppService.ASToken == cfg.AppService.HSToken {
		return bad("appservice.hs_token", "must differ from appservice.as_token")
	}
	switch cfg.Database.Type {
	case "sqlite3-fk-wal", "postgres":
	default:
		return bad("database.type", "must be sqlite3-fk-wal or postgres, got %q", cfg.Database.Type)
	}
	if cfg.Database.URI == "" {
		return bad("database.uri", "is empty")
	}
	if cfg.Database.MaxOpenConns < 1 {
		return bad("database.max_open_conns", "must be at least 1")
	}
	if cfg.Encryption.MaintenanceInterval != 0 && cfg.Encryption.MaintenanceInterval < time.Second {
		return bad("encryption.maintenance_interval", "must be at least 1s (default 5m)")
	}
	if cfg.HistorySharing.AcceptWindow <= 0 {
		return bad("history_sharing.accept_window", "must be a positive duration such as 24h")
	}
	if cfg.HistorySharing.MaxBundleSize < 1024 {
		return bad("history_sharing.max_bundle_size", "must be at least 1024 bytes")
	}
	for _, entry := range cfg.HistorySharing.AutoJoin {
		if entry == "" {
			return bad("history_sharing.auto_join", "has an empty entry")
		}
		if _, err := path.Match(entry, "@x:y"); err != nil {
			return bad("history_sharing.auto_join", "has a bad glob %q: %v", entry, err)
		}
	}
	if err := cfg.Gateway.validate(bad); err != nil {
		return err
	}
	if w := cfg.HistorySharing.RedeliverWindow; w != nil && *w < 0 {
		return bad("history_sharing.redeliver_window", "must not be negative (0 turns redelivery off; default 168h)")
	}
	for _, entry := range cfg.Admins {
		if err := checkUserGlob(entry); err != nil {
			return bad("admins", "%v", err)
		}
	}
	switch cfg.Logging.Level {
	case "trace", "debug", "info", "warn", "error":
	default:
		return bad("logging.level", "must be trace, debug, info, warn or error")
	}
	switch cfg.Logging.Format {
	case "pretty", "json":
	default:
		return bad("logging.format", "must be pretty or json")
	}
	return nil
}

func checkURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("must be an http(s) URL, got %q", raw)
	}
	if u.Host == "" {
		return fmt.Errorf("has no host: %q", raw)
	}
	return nil
}

// checkUserGlob checks an admins entry: a user ID, or a glob over user IDs ("@*:example.com").
func checkUserGlob(entry string) error {
	localpart, server, ok := strings.Cut(strings.TrimPrefix(entry, "@"), ":")
	if !strings.HasPrefix(entry, "@") || !ok || localpart == "" || server == "" {
		return fmt.Errorf("has %q, which is not a user ID or a glob such as @*:example.com", entry)
	}
	if _, err := path.Match(entry, "@x:y"); err != nil {
		return fmt.Errorf("has a bad glob %q: %v", entry, err)
	}
	return nil
}

// IsAdmin reports whether userID is one of the admins heirloom's bot answers.
func (cfg *Config) IsAdmin(userID id.UserID) bool {
	if _, _, err := userID.Parse(); err != nil {
		return false
	}
	for _, entry := range cfg.Admins {
		if ok, _ := path.Match(entry, string(userID)); ok {
			return true
		}
	}
	return false
}

// BotUserID returns heirloom's own bot user.
func (cfg *Config) BotUserID() id.UserID {
	return id.NewUserID(cfg.AppService.BotUsername, cfg.Homeserver.Domain)
}

// IsManaged reports whether heirloom holds (or may create) the user's E2EE device: a puppet of
// heirloom's own namespace, or, in gateway mode, a local user of the bridge (its bot or a ghost).
func (cfg *Config) IsManaged(userID id.UserID) bool {
	return cfg.IsPuppet(userID) || cfg.IsBridgeUser(userID)
}

// IsBridgeUser reports whether userID is a local user of the bridge gateway mode stands in front of.
// heirloom's own puppets and bot never are, whatever the bridge's namespaces say: the bridge's
// token must not act as them, nor read with their keys.
func (cfg *Config) IsBridgeUser(userID id.UserID) bool {
	if cfg.Bridge == nil || cfg.IsPuppet(userID) || userID == cfg.BotUserID() {
		return false
	}
	_, server, err := userID.Parse()
	return err == nil && server == cfg.Homeserver.Domain && cfg.Bridge.isUser(userID)
}

// IsPuppet reports whether userID lies in heirloom's puppet namespace.
func (cfg *Config) IsPuppet(userID id.UserID) bool {
	localpart, server, err := userID.Parse()
	if err != nil || !localpartRe.MatchString(localpart) {
		return false
	}
	return server == cfg.Homeserver.Domain &&
		strings.HasPrefix(localpart, cfg.AppService.PuppetPrefix) &&
		len(localpart) > len(cfg.AppService.PuppetPrefix)
}

// AutoJoinAllowed reports whether a puppet may accept an invite from inviter without the bridge asking.
func (cfg *Config) AutoJoinAllowed(inviter id.UserID) bool {
	_, server, err := inviter.Parse()
	if err != nil {
		return false
	}
	for _, entry := range cfg.HistorySharing.AutoJoin {
		if !strings.HasPrefix(entry, "@") {
			if entry == server {
				return true
			}
			continue
		}
		if ok, _ := path.Match(entry, string(inviter)); ok {
			return true
		}
	}
	return false
}
