package database_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	_ "github.com/lib/pq"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
)

// postgresEnv names the variable that points the store tests at a PostgreSQL server, e.g.
// postgres://heirloom@127.0.0.1:55432/heirloom_test?sslmode=disable (scripts/postgres.sh start).
const postgresEnv = "HEIRLOOM_TEST_POSTGRES"

// backend opens a fresh, upgraded database for one test.
type backend struct {
	name string
	open func(t *testing.T) *database.Database
}

func backends() []backend {
	return []backend{{"sqlite", openSQLite}, {"postgres", openPostgres}}
}

// forEachBackend runs test once per database backend, each on a fresh database.
func forEachBackend(t *testing.T, test func(t *testing.T, db *database.Database)) {
	t.Helper()
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			test(t, b.open(t))
		})
	}
}

func openDatabase(t *testing.T, cfg config.Database) *database.Database {
	t.Helper()
	db, err := database.Open(cfg, zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	require.NoError(t, db.Upgrade(context.Background()))
	return db
}

func openSQLite(t *testing.T) *database.Database {
	t.Helper()
	uri := "file:" + filepath.Join(t.TempDir(), "t.db") + "?_txlock=immediate"
	return openDatabase(t, config.Database{Type: "sqlite3-fk-wal", URI: uri, MaxOpenConns: 5, MaxIdleConns: 1})
}

// openPostgres creates a database of its own for the test and drops it afterwards. A schema per
// test would not do: dbutil looks tables up in information_schema without naming the schema, so
// a version table in another test's schema would count as existing.
func openPostgres(t *testing.T) *database.Database {
	t.Helper()
	base := os.Getenv(postgresEnv)
	if base == "" {
		const msg = postgresEnv + " is unset: the PostgreSQL store tests did not run (make unit-postgres runs them; CI must)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	admin, err := sql.Open("postgres", base)
	require.NoError(t, err)
	t.Cleanup(func() { _ = admin.Close() })
	require.NoError(t, admin.Ping(), "cannot reach %s=%s", postgresEnv, base)

	suffix := make([]byte, 6)
	_, _ = rand.Read(suffix)
	name := "heirloom_t_" + hex.EncodeToString(suffix)
	_, err = admin.Exec(`CREATE DATABASE ` + name)
	require.NoError(t, err)
	t.Cleanup(func() {
		// Cleanups run last-in first-out: the test's handle is closed before this runs.
		_, err := admin.Exec(`DROP DATABASE IF EXISTS ` + name + ` WITH (FORCE)`)
		if err != nil {
			t.Logf("failed to drop test database %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	require.NoError(t, err)
	u.Path = "/" + name
	return openDatabase(t, config.Database{Type: "postgres", URI: u.String(), MaxOpenConns: 5, MaxIdleConns: 1})
}
