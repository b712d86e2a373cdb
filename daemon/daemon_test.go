package daemon

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/lease"
)

// -e writes the example once, readable by heirloom's user only, and never overwrites a config.
func TestWriteExampleNeverOverwrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	require.Equal(t, ExitOK, WriteExample(path, []byte("example: 1\n")))
	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	require.NoError(t, os.WriteFile(path, []byte("edited: 1\n"), 0o600))
	require.Equal(t, ExitConfig, WriteExample(path, []byte("example: 1\n")))
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "edited: 1\n", string(data), "the admin's config stays")
}

// -g writes a registration, 0600, whose tokens are the ones the config (now saved with its
// generated secrets) holds; a config that does not load writes nothing.
func TestGenerateRegistration(t *testing.T) {
	_, configPath := testConfig(t, "http://127.0.0.1:8008")
	regPath := filepath.Join(t.TempDir(), "registration.yaml")
	require.Equal(t, ExitOK, GenerateRegistration(configPath, regPath))
	info, err := os.Stat(regPath)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm(), "the registration holds the tokens")
	data, err := os.ReadFile(regPath)
	require.NoError(t, err)
	var reg struct {
		ASToken string `yaml:"as_token"`
		HSToken string `yaml:"hs_token"`
	}
	require.NoError(t, yaml.Unmarshal(data, &reg))
	cfg, err := config.Load(configPath)
	require.NoError(t, err)
	require.Equal(t, cfg.AppService.ASToken, reg.ASToken)
	require.Equal(t, cfg.AppService.HSToken, reg.HSToken)

	missing := filepath.Join(t.TempDir(), "absent.yaml")
	other := filepath.Join(t.TempDir(), "registration.yaml")
	require.Equal(t, ExitConfig, GenerateRegistration(missing, other))
	_, err = os.Stat(other)
	require.ErrorIs(t, err, os.ErrNotExist)
}

// The configured level applies; a level heirloom does not know logs at info rather than not at all.
func TestLoggerLevel(t *testing.T) {
	require.Equal(t, zerolog.DebugLevel, newLogger(config.Logging{Level: "debug", Format: "json"}).GetLevel())
	require.Equal(t, zerolog.WarnLevel, newLogger(config.Logging{Level: "warn"}).GetLevel())
	require.Equal(t, zerolog.InfoLevel, newLogger(config.Logging{Level: "loud"}).GetLevel())
}

// Only one process runs on an SQLite database: a second one is refused with exitLeaseHeld while
// the first holds it, and starts once it is gone. A database in memory is the process's own.
func TestSQLiteLeaseAtStartup(t *testing.T) {
	ctx := zerolog.Nop().WithContext(context.Background())
	cfg := config.Database{Type: "sqlite3-fk-wal", URI: "file:" + filepath.Join(t.TempDir(), "heirloom.db") + "?_txlock=immediate"}
	first, code := openLease(ctx, cfg)
	require.Equal(t, ExitOK, code)
	require.True(t, first.Active())
	second, code := openLease(ctx, cfg)
	require.Equal(t, exitLeaseHeld, code)
	require.Nil(t, second)

	first.Release(ctx)
	first.close()
	third, code := openLease(ctx, cfg)
	require.Equal(t, ExitOK, code)
	require.True(t, third.Active())
	third.close()

	memory, code := openLease(ctx, config.Database{Type: "sqlite3-fk-wal", URI: ":memory:"})
	require.Equal(t, ExitOK, code)
	require.True(t, memory.Active())
	require.Equal(t, "an SQLite database in memory", memory.Describe())
}

// A standby builds heirloom's parts while it waits: building touches neither the homeserver nor
// the database (not even its schema), and gateway mode is off without a bridge.
func TestBuildTouchesNothing(t *testing.T) {
	var requests atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		requests.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(hs.Close)
	cfg, _ := testConfig(t, hs.URL)
	cfg.Database = config.Database{Type: "sqlite3-fk-wal", URI: "file:" + filepath.Join(t.TempDir(), "heirloom.db") + "?_txlock=immediate"}
	db, err := database.Open(cfg.Database, zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })

	p, err := build(cfg, db, lease.New(lease.Solo("test"), lease.Me(), lease.FileTiming, nil), zerolog.Nop())
	require.NoError(t, err)
	require.Nil(t, p.gw, "no bridge, no gateway")
	require.NotNil(t, p.srv.OnRoomEvent, "room events reach the admin bot")
	require.Zero(t, requests.Load(), "no request to the homeserver")
	var tables int
	require.NoError(t, db.Raw.QueryRow(context.Background(), `SELECT COUNT(*) FROM sqlite_master WHERE type='table'`).Scan(&tables))
	require.Zero(t, tables, "no schema written")
}

// A start says with its exit code what stopped it: a config that does not load (ExitConfig), an
// SQLite database another process runs on (exitLeaseHeld), a database that does not open
// (exitDatabase).
func TestRunExitCodes(t *testing.T) {
	require.Equal(t, ExitConfig, Run(filepath.Join(t.TempDir(), "absent.yaml")))

	_, configPath := testConfig(t, "http://127.0.0.1:1")
	dbPath := filepath.Join(t.TempDir(), "heirloom.db")
	setDatabase(t, configPath, "file:"+dbPath+"?_txlock=immediate")
	ctx := zerolog.Nop().WithContext(context.Background())
	cfg, err := config.Load(configPath)
	require.NoError(t, err)
	other, code := openLease(ctx, cfg.Database)
	require.Equal(t, ExitOK, code)
	require.Equal(t, exitLeaseHeld, Run(configPath), "another process holds the database")
	other.close()

	setDatabase(t, configPath, "file:"+filepath.Join(t.TempDir(), "missing-dir", "heirloom.db")+"?_txlock=immediate")
	require.Equal(t, exitDatabase, Run(configPath))
}

// setDatabase points the config file at another SQLite database.
func setDatabase(t *testing.T, configPath, uri string) {
	t.Helper()
	data, err := os.ReadFile(configPath)
	require.NoError(t, err)
	var doc yaml.Node
	require.NoError(t, yaml.Unmarshal(data, &doc))
	root := doc.Content[0]
	for i := 0; i < len(root.Content); i += 2 {
		if root.Content[i].Value != "database" {
			continue
		}
		db := root.Content[i+1]
		for j := 0; j < len(db.Content); j += 2 {
			if db.Content[j].Value == "uri" {
				db.Content[j+1].Value = uri
			}
		}
	}
	out, err := yaml.Marshal(&doc)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(configPath, out, 0o600))
}
