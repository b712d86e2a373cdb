// Package testdb provides the databases heirloom's tests run on: a fresh SQLite file, and a fresh
// PostgreSQL database of its own when HEIRLOOM_TEST_POSTGRES names a server (CI always does).
package testdb

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	_ "github.com/lib/pq" // PostgreSQL driver

	"github.com/heirloom-matrix/heirloom/config"
)

// postgresEnv names the PostgreSQL server (a URI) the tests create their databases on.
const postgresEnv = "HEIRLOOM_TEST_POSTGRES"

// backend opens the configuration of a fresh, empty database for one test.
type backend struct {
	Name string
	Open func(tb testing.TB) config.Database
}

// Backends returns every backend: SQLite, then PostgreSQL.
func Backends() []backend {
	return []backend{{"sqlite", SQLite}, {"postgres", Postgres}}
}

// ForEach runs test once per backend, each on a fresh database.
func ForEach(t *testing.T, test func(t *testing.T, cfg config.Database)) {
	t.Helper()
	for _, b := range Backends() {
		t.Run(b.Name, func(t *testing.T) {
			test(t, b.Open(t))
		})
	}
}

// SQLite returns a fresh SQLite database file in the test's temporary directory.
func SQLite(tb testing.TB) config.Database {
	tb.Helper()
	uri := "file:" + filepath.Join(tb.TempDir(), "t.db") + "?_txlock=immediate"
	return config.Database{Type: "sqlite3-fk-wal", URI: uri, MaxOpenConns: 5, MaxIdleConns: 1}
}

// Postgres creates a database of its own for the test and drops it afterwards; it skips the test
// (fails it in CI) if HEIRLOOM_TEST_POSTGRES is unset. A schema per test would not do: dbutil looks
// tables up in information_schema without naming the schema, so a version table in another test's
// schema would count as existing.
func Postgres(tb testing.TB) config.Database {
	tb.Helper()
	base := os.Getenv(postgresEnv)
	if base == "" {
		const msg = postgresEnv + " is unset: the PostgreSQL tests did not run (make unit-postgres runs them; CI must)"
		if os.Getenv("CI") != "" {
			tb.Fatal(msg)
		}
		tb.Skip(msg)
	}
	admin, err := sql.Open("postgres", base)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = admin.Close() })
	if err = admin.Ping(); err != nil {
		tb.Fatalf("cannot reach %s=%s: %v", postgresEnv, base, err)
	}
	suffix := make([]byte, 6)
	_, _ = rand.Read(suffix)
	name := "heirloom_t_" + hex.EncodeToString(suffix)
	if _, err = admin.Exec(`CREATE DATABASE ` + name); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		// Cleanups run last-in first-out: the test's handle is closed before this runs.
		if _, err := admin.Exec(`DROP DATABASE IF EXISTS ` + name + ` WITH (FORCE)`); err != nil {
			tb.Logf("failed to drop test database %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		tb.Fatal(err)
	}
	u.Path = "/" + name
	return config.Database{Type: "postgres", URI: u.String(), MaxOpenConns: 5, MaxIdleConns: 1}
}
