package database_test

import (
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
	"github.com/heirloom-matrix/heirloom/lease"
)

func leaseStore(t *testing.T, cfg config.Database, me lease.Holder) lease.Store {
	t.Helper()
	store, _, err := database.LeaseStore(cfg, me)
	require.NoError(t, err)
	if c, ok := store.(io.Closer); ok {
		t.Cleanup(func() { _ = c.Close() })
	}
	return store
}

func fencedDatabase(t *testing.T, cfg config.Database, holder string) *database.Database {
	t.Helper()
	db, err := database.OpenFenced(cfg, zerolog.Nop(), holder)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func TestPostgresLeaseHasOneHolder(t *testing.T) {
	ctx := context.Background()
	cfg := testdb.Postgres(t)
	a, b := lease.Holder{ID: "heirloom-aaaa", Host: "host-a", PID: 11}, lease.Holder{ID: "heirloom-bbbb", Host: "host-b", PID: 22}
	storeA, storeB := leaseStore(t, cfg, a), leaseStore(t, cfg, b)
	require.Contains(t, storeA.Describe(), "PostgreSQL database heirloom_t_")

	got, err := storeA.TryAcquire(ctx, a, 5*time.Second)
	require.NoError(t, err)
	require.True(t, got.Acquired)
	require.Nil(t, got.Previous)
	got, err = storeB.TryAcquire(ctx, b, 5*time.Second)
	require.NoError(t, err)
	require.False(t, got.Acquired)
	require.Equal(t, "host-a", got.Holder.Host)
	require.Equal(t, 11, got.Holder.PID)
	require.InDelta(t, 5*time.Second, got.ExpiresIn, float64(time.Second))
	require.NoError(t, storeA.Renew(ctx, a, 5*time.Second))
	require.ErrorIs(t, storeB.Renew(ctx, b, 5*time.Second), lease.ErrNotHolder)

	// A released lease is taken at once.
	require.NoError(t, storeA.Release(ctx, a))
	got, err = storeB.TryAcquire(ctx, b, 5*time.Second)
	require.NoError(t, err)
	require.True(t, got.Acquired)
	require.Equal(t, int64(2), got.Holder.Epoch, "each takeover moves the fencing token on")
	require.ErrorIs(t, storeA.Renew(ctx, a, 5*time.Second), lease.ErrNotHolder)
}

// Only the holder's pool reaches the database; a takeover ends the previous holder's connections,
// one in the middle of a transaction included, and its pool cannot open another.
func TestPostgresTakeoverFencesThePreviousHolder(t *testing.T) {
	ctx := context.Background()
	cfg := testdb.Postgres(t)
	a, b := lease.Holder{ID: "heirloom-aaaa", Host: "host-a", PID: 11}, lease.Holder{ID: "heirloom-bbbb", Host: "host-b", PID: 22}
	storeA, storeB := leaseStore(t, cfg, a), leaseStore(t, cfg, b)
	dbA, dbB := fencedDatabase(t, cfg, a.ID), fencedDatabase(t, cfg, b.ID)

	got, err := storeA.TryAcquire(ctx, a, 500*time.Millisecond)
	require.NoError(t, err)
	require.True(t, got.Acquired)
	require.NoError(t, dbA.Upgrade(ctx), "the holder writes")
	err = dbB.Upgrade(ctx)
	require.ErrorIs(t, err, database.ErrLeaseNotHeld, "a process without the lease cannot even connect")

	// a opens a transaction, then stops renewing (paused, say).
	tx, err := dbA.Raw.RawDB.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	_, err = tx.ExecContext(ctx, `INSERT INTO heirloom_txn (txn_id, body_hash, received_at) VALUES ('late', 'x', 1)`)
	require.NoError(t, err)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		got, err = storeB.TryAcquire(ctx, b, 5*time.Second)
		if assert.NoError(c, err) {
			assert.True(c, got.Acquired)
		}
	}, 5*time.Second, 50*time.Millisecond)
	require.Equal(t, a.ID, got.Previous.ID)

	require.Error(t, tx.Commit(), "the previous holder's transaction cannot commit after the takeover")
	_, err = dbA.Raw.Exec(ctx, `INSERT INTO heirloom_txn (txn_id, body_hash, received_at) VALUES ('later', 'x', 1)`)
	require.ErrorIs(t, err, database.ErrLeaseNotHeld)
	var n int
	require.NoError(t, dbB.Upgrade(ctx))
	require.NoError(t, dbB.Raw.QueryRow(ctx, `SELECT COUNT(*) FROM heirloom_txn`).Scan(&n))
	require.Zero(t, n, "nothing of the previous holder's was written after the takeover")
}

func TestSQLiteLeaseIsALockFileBesideTheDatabase(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Database{Type: "sqlite3-fk-wal", URI: "file:" + filepath.Join(dir, "h.db") + "?_txlock=immediate"}
	store, timing, err := database.LeaseStore(cfg, lease.Me())
	require.NoError(t, err)
	require.Zero(t, timing.TTL, "a file lock does not expire")
	require.Equal(t, filepath.Join(dir, "h.db")+" (lock file "+filepath.Join(dir, "h.db.lock")+")", store.Describe())
	for _, uri := range []string{":memory:", "file::memory:?cache=shared", "file:x.db?mode=memory&cache=shared"} {
		store, _, err = database.LeaseStore(config.Database{Type: "sqlite3-fk-wal", URI: uri}, lease.Me())
		require.NoError(t, err)
		require.Nil(t, store, uri)
	}
}
