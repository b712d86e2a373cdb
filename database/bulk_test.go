package database_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
)

// countTxns counts the rows of heirloom_txn, which the bulk tests write.
func countTxns(t *testing.T, db *database.Database) int {
	t.Helper()
	var n int
	require.NoError(t, db.Raw.QueryRow(context.Background(), `SELECT COUNT(*) FROM heirloom_txn`).Scan(&n))
	return n
}

// writeTxns records n transaction IDs of about 4 KB each (one SQLite page apiece).
func writeTxns(ctx context.Context, db *database.Database, prefix string, n int) error {
	pad := strings.Repeat("x", 4000)
	for i := range n {
		if err := db.MarkTxnProcessed(ctx, fmt.Sprintf("%s-%d-%s", prefix, i, pad), "hash"); err != nil {
			return err
		}
	}
	return nil
}

// A bulk transaction commits what its function wrote, or nothing if the function fails, on every
// backend.
func TestBulkTxnCommitsOrRollsBack(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		require.NoError(t, db.DoBulkTxn(ctx, 0, func(ctx context.Context) error { return writeTxns(ctx, db, "kept", 3) }))
		failure := errors.New("bundle hash mismatch")
		err := db.DoBulkTxn(ctx, 0, func(ctx context.Context) error {
			if err := writeTxns(ctx, db, "dropped", 3); err != nil {
				return err
			}
			return failure
		})
		require.ErrorIs(t, err, failure)
		db.WaitCheckpoints()
		require.Equal(t, 3, countTxns(t, db))
	})
}

// On SQLite a bulk transaction runs with a page cache of its own and no checkpoint in its commit;
// the connection goes back to the pool with SQLite's settings, and the WAL reaches the database
// file after the commit all the same.
func TestSQLiteBulkTxnConnectionAndCheckpoint(t *testing.T) {
	cfg := testdb.SQLite(t)
	cfg.MaxOpenConns = 1 // the bulk transaction's connection is the one the next query gets
	path := strings.TrimPrefix(cfg.URI[:strings.IndexByte(cfg.URI, '?')], "file:")
	db := openDatabase(t, cfg)
	ctx := context.Background()
	pragma := func(ctx context.Context, name string) int {
		var v int
		require.NoError(t, db.Raw.QueryRow(ctx, "PRAGMA "+name).Scan(&v))
		return v
	}
	defaultCache, defaultCheckpoint := pragma(ctx, "cache_size"), pragma(ctx, "wal_autocheckpoint")
	require.NoError(t, db.Raw.QueryRow(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(new(int), new(int), new(int)))
	before, err := os.Stat(path)
	require.NoError(t, err)

	const pages = 1500 // more than the 1,000-page automatic checkpoint
	// A 40 MB bundle's import gets a 10 MB cache: a quarter of its bytes.
	require.NoError(t, db.DoBulkTxn(ctx, 40<<20, func(ctx context.Context) error {
		require.Equal(t, -10240, pragma(ctx, "cache_size"))
		require.Zero(t, pragma(ctx, "wal_autocheckpoint"))
		return writeTxns(ctx, db, "bulk", pages)
	}))
	db.WaitCheckpoints()
	require.Equal(t, defaultCache, pragma(ctx, "cache_size"), "the pool's connection has SQLite's cache again")
	require.Equal(t, defaultCheckpoint, pragma(ctx, "wal_autocheckpoint"), "and its automatic checkpoint")
	after, err := os.Stat(path)
	require.NoError(t, err)
	require.Greater(t, after.Size()-before.Size(), int64(pages*4096), "the checkpoint copied the WAL into the database file")
	require.Equal(t, pages, countTxns(t, db))
}

// Close waits for the checkpoint a bulk transaction left running.
func TestCloseWaitsForBulkCheckpoint(t *testing.T) {
	db, err := database.Open(testdb.SQLite(t), zerolog.Nop())
	require.NoError(t, err)
	require.NoError(t, db.Upgrade(context.Background()))
	require.NoError(t, db.DoBulkTxn(context.Background(), 0, func(ctx context.Context) error { return writeTxns(ctx, db, "bulk", 1200) }))
	require.NoError(t, db.Close(), "closing while the checkpoint runs neither fails nor races it")
}

// The cache is a quarter of the bytes written, never below SQLite's default nor above 16 MB.
func TestBulkCacheSize(t *testing.T) {
	for _, c := range []struct {
		size int64
		kib  int64
	}{{0, 2048}, {4 << 20, 2048}, {25 << 20, 6400}, {51 << 20, 13056}, {256 << 20, 16384}} {
		require.Equal(t, c.kib, database.BulkCacheKiB(c.size), "size %d", c.size)
	}
}
