package database_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
)

// forEachBackend runs test once per database backend, each on a fresh database.
func forEachBackend(t *testing.T, test func(t *testing.T, db *database.Database)) {
	t.Helper()
	testdb.ForEach(t, func(t *testing.T, cfg config.Database) {
		test(t, openDatabase(t, cfg))
	})
}

func openDatabase(t *testing.T, cfg config.Database) *database.Database {
	t.Helper()
	db, err := database.Open(cfg, zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	require.NoError(t, db.Upgrade(context.Background()))
	return db
}

// stepClock is a clock that moves one millisecond on each reading, so that every timestamp a
// test writes is distinct without the test sleeping.
func stepClock(db *database.Database) {
	var mu sync.Mutex
	now := time.Now()
	db.Now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(time.Millisecond)
		return now
	}
}
