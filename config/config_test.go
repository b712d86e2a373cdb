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

func exampleConfig(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile("../config.example.yaml")
	require.NoError(t, err)
	return data
}

// validConfig is the example with the placeholders a bridge admin must edit filled in.
func validConfig(t *testing.T) *Config {
	t.Helper()
	filled, _, err := fillSecrets(exampleConfig(t))
	require.NoError(t, err)
	cfg, err := Parse(filled)
	require.NoError(t, err)
	cfg.Homeserver.Address = "http://127.0.0.1:8008"
	cfg.Homeserver.Domain = "localhost"
	require.NoError(t, cfg.Validate())
	return cfg
}

func TestExampleConfigRefusedUntilEdited(t *testing.T) {
	filled, _, err := fillSecrets(exampleConfig(t))
	require.NoError(t, err)
	cfg, err := Parse(filled)
	require.NoError(t, err)
	err = cfg.Validate()
	require.ErrorIs(t, err, errInvalid)
	require.Contains(t, err.Error(), "homeserver.address")
}

func TestValidateNamesTheBadKey(t *testing.T) {
	for _, tc := range []struct {
		key    string
		mutate func(*Config)
	}{
		{"homeserver.address", func(c *Config) { c.Homeserver.Address = "ftp://x" }},
		{"homeserver.domain", func(c *Config) { c.Homeserver.Domain = "" }},
		{"appservice.address", func(c *Config) { c.AppService.Address = "not a url" }},
		{"appservice.port", func(c *Config) { c.AppService.Port = 70000 }},
		{"appservice.puppet_prefix", func(c *Config) { c.AppService.PuppetPrefix = "" }},
		{"appservice.bot_username", func(c *Config) { c.AppService.BotUsername = "Bad User" }},
		{"appservice.bot_username", func(c *Config) { c.AppService.BotUsername = "heirloom_bot" }},
		{"appservice.as_token", func(c *Config) { c.AppService.ASToken = "generate" }},
		{"appservice.hs_token", func(c *Config) { c.AppService.HSToken = "short" }},
		{"appservice.hs_token", func(c *Config) { c.AppService.HSToken = c.AppService.ASToken }},
		{"encryption.pickle_key", func(c *Config) { c.Encryption.PickleKey = "" }},
		{"provisioning.shared_secret", func(c *Config) { c.Provisioning.SharedSecret = "generate" }},
		{"database.type", func(c *Config) { c.Database.Type = "mysql" }},
		{"database.uri", func(c *Config) { c.Database.URI = "" }},
		{"encryption.maintenance_interval", func(c *Config) { c.Encryption.MaintenanceInterval = time.Millisecond }},
		{"history_sharing.accept_window", func(c *Config) { c.HistorySharing.AcceptWindow = 0 }},
		{"history_sharing.max_bundle_size", func(c *Config) { c.HistorySharing.MaxBundleSize = 10 }},
		{"history_sharing.auto_join", func(c *Config) { c.HistorySharing.AutoJoin = []string{"@[:x"} }},
		{"logging.level", func(c *Config) { c.Logging.Level = "loud" }},
		{"logging.format", func(c *Config) { c.Logging.Format = "xml" }},
	} {
		t.Run(tc.key, func(t *testing.T) {
			cfg := validConfig(t)
			tc.mutate(cfg)
			err := cfg.Validate()
			require.ErrorIs(t, err, errInvalid)
			require.Contains(t, err.Error(), tc.key)
		})
	}
}

func TestUnknownKeyRefused(t *testing.T) {
	_, err := Parse([]byte("homeserver:\n    adress: http://x\n"))
	require.ErrorIs(t, err, errInvalid)
	require.Contains(t, err.Error(), "adress")
}

func TestLoadGeneratesSecretsOnce(t *testing.T) {
	data := strings.Replace(string(exampleConfig(t)), "https://matrix.example.com", "http://127.0.0.1:8008", 1)
	data = strings.Replace(data, "domain: example.com", "domain: localhost", 1)
	path := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(path, []byte(data), 0o644))

	first, err := Load(path)
	require.NoError(t, err)
	require.NotEqual(t, generate, first.AppService.ASToken)
	require.NotEqual(t, first.AppService.ASToken, first.AppService.HSToken)
	saved, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NotContains(t, string(saved), ": generate")
	require.Contains(t, string(saved), "# Tokens shared with the homeserver", "comments survive the rewrite")
	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm(), "a config holding secrets is 0600")

	second, err := Load(path)
	require.NoError(t, err)
	require.Equal(t, first.AppService, second.AppService)
	require.Equal(t, first.Encryption, second.Encryption)
	require.Equal(t, first.Provisioning, second.Provisioning)
}

func TestPuppetNamespace(t *testing.T) {
	cfg := validConfig(t)
	for userID, want := range map[id.UserID]bool{
		"@heirloom_alice:localhost":   true,
		"@heirloom_:localhost":        false,
		"@heirloom_alice:example.org": false,
		"@alice:localhost":            false,
		"@heirloombot:localhost":      false,
		"@heirloom_Alice:localhost":   false,
		"not a user":                  false,
	} {
		require.Equal(t, want, cfg.IsPuppet(userID), userID)
	}
}

func TestAutoJoinAllowList(t *testing.T) {
	cfg := validConfig(t)
	cfg.HistorySharing.AutoJoin = []string{"@alice:example.org", "@*:trusted.example", "localhost"}
	for inviter, want := range map[id.UserID]bool{
		"@alice:example.org":    true,
		"@bob:example.org":      false,
		"@bob:trusted.example":  true,
		"@carol:localhost":      true,
		"@mallory:evil.example": false,
	} {
		require.Equal(t, want, cfg.AutoJoinAllowed(inviter), inviter)
	}
	cfg.HistorySharing.AutoJoin = nil
	require.False(t, cfg.AutoJoinAllowed("@alice:example.org"), "an empty list turns auto-join off")
}

func TestRegistrationForSynapse(t *testing.T) {
	cfg := validConfig(t)
	data, err := RegistrationYAML(cfg)
	require.NoError(t, err)
	text := string(data)
	for _, want := range []string{
		"receive_ephemeral: true", "de.sorunome.msc2409.push_ephemeral: true",
		"org.matrix.msc3202: true", "io.element.msc4190: true", "exclusive: true",
		`regex: ^@heirloom_.+:localhost$`, `regex: ^@heirloombot:localhost$`,
		"as_token: " + cfg.AppService.ASToken, "hs_token: " + cfg.AppService.HSToken,
		"url: http://localhost:29340",
	} {
		require.Contains(t, text, want)
	}
	reg := cfg.Registration()
	require.True(t, reg.Namespaces.UserIDs[0].Exclusive)
}

// The committed registration.yaml is what -g produces from the example config (placeholder tokens).
func TestCommittedRegistrationMatchesExample(t *testing.T) {
	cfg, err := Parse(exampleConfig(t))
	require.NoError(t, err)
	data, err := RegistrationYAML(cfg)
	require.NoError(t, err)
	committed, err := os.ReadFile("../registration.yaml")
	require.NoError(t, err)
	require.Equal(t, string(data), string(committed), "registration.yaml is stale: run make registration")
}

// The example's maintenance interval is the documented default, and a config written before the
// key existed gets the same.
func TestMaintenanceIntervalDefault(t *testing.T) {
	cfg := validConfig(t)
	require.Equal(t, defaultMaintenanceInterval, cfg.Encryption.MaintenanceInterval)
	require.Equal(t, 5*time.Minute, defaultMaintenanceInterval)
	cfg.Encryption.MaintenanceInterval = 0
	require.NoError(t, cfg.Validate())
	require.Equal(t, 5*time.Minute, cfg.Encryption.Maintenance())
	cfg.Encryption.MaintenanceInterval = 3 * time.Second
	require.Equal(t, 3*time.Second, cfg.Encryption.Maintenance())
}

// history_sharing.redeliver_window: the example's value is the default, a config without the key
// gets it, 0 turns redelivery off, and a negative window is refused.
func TestRedeliverWindow(t *testing.T) {
	cfg := validConfig(t)
	require.Equal(t, 7*24*time.Hour, cfg.HistorySharing.Redeliver())
	require.Equal(t, defaultRedeliverWindow, cfg.HistorySharing.Redeliver())
	cfg.HistorySharing.RedeliverWindow = nil
	require.Equal(t, defaultRedeliverWindow, cfg.HistorySharing.Redeliver())
	off := time.Duration(0)
	cfg.HistorySharing.RedeliverWindow = &off
	require.NoError(t, cfg.Validate())
	require.Zero(t, cfg.HistorySharing.Redeliver())
	negative := -time.Hour
	cfg.HistorySharing.RedeliverWindow = &negative
	err := cfg.Validate()
	require.ErrorIs(t, err, errInvalid)
	require.Contains(t, err.Error(), "history_sharing.redeliver_window")

	parsed, err := Parse([]byte("history_sharing:\n    redeliver_window: 36h\n"))
	require.NoError(t, err)
	require.Equal(t, 36*time.Hour, parsed.HistorySharing.Redeliver())
}

// admins: user IDs and globs match as written; anything that is not a user ID or a glob over
// user IDs is refused, naming the key.
func TestAdmins(t *testing.T) {
	cfg := validConfig(t)
	require.Empty(t, cfg.Admins, "the example config has no admins")
	require.False(t, cfg.IsAdmin("@alice:localhost"))
	cfg.Admins = []string{"@alice:example.com", "@ops_*:localhost"}
	require.NoError(t, cfg.Validate())
	for userID, want := range map[id.UserID]bool{
		"@alice:example.com": true, "@ops_bob:localhost": true, "@alice:localhost": false,
		"@ops_bob:example.com": false, "@mallory:example.com": false, "not a user": false,
	} {
		require.Equal(t, want, cfg.IsAdmin(userID), "%s", userID)
	}
	for _, bad := range []string{"", "example.com", "alice", "@alice", "@:example.com", "@[:example.com"} {
		cfg.Admins = []string{bad}
		err := cfg.Validate()
		require.ErrorIs(t, err, errInvalid, "%q", bad)
		require.Contains(t, err.Error(), "admins", "%q", bad)
	}
}
