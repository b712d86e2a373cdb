package testdb

import (
	"database/sql"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Each test gets an SQLite file of its own, in its temporary directory, opened as heirloom opens
// its database (immediate write transactions).
func TestSQLiteIsATestsOwn(t *testing.T) {
	var first, second string
	t.Run("first", func(t *testing.T) { first = SQLite(t).URI })
	t.Run("second", func(t *testing.T) { second = SQLite(t).URI })
	require.NotEqual(t, first, second)
	require.Contains(t, first, "?_txlock=immediate")
}

// On PostgreSQL each test gets a database of its own, dropped when the test ends.
func TestPostgresDatabaseIsDroppedAfterTheTest(t *testing.T) {
	var name string
	t.Run("own", func(t *testing.T) {
		cfg := Postgres(t)
		db, err := sql.Open("postgres", cfg.URI)
		require.NoError(t, err)
		defer db.Close()
		require.NoError(t, db.QueryRow(`SELECT current_database()`).Scan(&name))
		require.True(t, strings.HasPrefix(name, "heirloom_t_"), name)
	})
	if name == "" {
		t.Skip("the PostgreSQL subtest did not run")
	}
	admin, err := sql.Open("postgres", os.Getenv(postgresEnv))
	require.NoError(t, err)
	defer admin.Close()
	var n int
	require.NoError(t, admin.QueryRow(`SELECT COUNT(*) FROM pg_database WHERE datname=$1`, name).Scan(&n))
	require.Zero(t, n, "%s dropped", name)
}
