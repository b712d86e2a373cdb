package database

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"sync"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
)

// The SQLite page cache of a bulk transaction's connection. A 100,000-session import's primary-key
// index (session IDs, in random order) is ≈ 8 MB, and every index page it touches is needed again
// soon: with SQLite's default 2 MB cache those pages are evicted and read back from the WAL all the
// time. The index is about a seventh of the bundle's bytes, so the cache is a quarter of them
// (bulkCacheShare), between SQLite's default and 16 MB, which holds the index of the largest bundle
// the default history_sharing.max_bundle_size admits (≈ 130,000 sessions). Larger caches measured
// no faster: the table's own pages are written once, in order, but they fill whatever cache there
// is, so the cache is what an import adds to heirloom's peak memory, and a fixed 16 MB took a
// 25 MB bundle's import over the bundle's own size. The cache is given back when the transaction ends.
const (
	bulkCacheMinKiB = 2048
	bulkCacheMaxKiB = 16384
	bulkCacheShare  = 4
)

// bulkCacheKiB is the page cache for a bulk transaction writing about size bytes.
func bulkCacheKiB(size int64) int64 {
	return min(max(size/bulkCacheShare/1024, bulkCacheMinKiB), bulkCacheMaxKiB)
}

// DoBulkTxn is doTxn for a transaction that writes about size bytes at once (a key bundle import): fn
// runs in one transaction, committed if it returns nil. On SQLite it runs on a connection of its own,
// with a page cache sized for the work (bulkCacheKiB) and without the WAL checkpoint in the commit: the commit makes the
// transaction durable in the WAL (as every SQLite commit here does), and copying the WAL back into
// the database file (≈ as many bytes again as the import wrote) runs on that connection after the
// commit, in the background, instead of inside the caller's wait. Close waits for it.
func (db *Database) DoBulkTxn(ctx context.Context, size int64, fn func(ctx context.Context) error) error {
	if db.Raw.Dialect != dbutil.SQLite {
		return db.doTxn(ctx, fn)
	}
	acquired, err := db.Raw.AcquireConn(ctx)
	if err != nil {
		return fmt.Errorf("failed to get a connection: %w", err)
	}
	conn := acquired.(*dbutil.LoggingExecable).UnderlyingExecable.(*sql.Conn)
	var cacheSize, autocheckpoint int
	err = conn.QueryRowContext(ctx, "PRAGMA cache_size").Scan(&cacheSize)
	if err == nil {
		err = conn.QueryRowContext(ctx, "PRAGMA wal_autocheckpoint").Scan(&autocheckpoint)
	}
	restore := func(ctx context.Context) {
		_, err := conn.ExecContext(ctx, fmt.Sprintf("PRAGMA cache_size = %d", cacheSize))
		if err == nil {
			_, err = conn.ExecContext(ctx, fmt.Sprintf("PRAGMA wal_autocheckpoint = %d", autocheckpoint))
		}
		if err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to restore a bulk connection's settings; discarding it")
			// A connection with the bulk settings must not go back to the pool.
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		_ = conn.Close()
	}
	if err != nil {
		_ = conn.Close()
		return fmt.Errorf("failed to read connection settings: %w", err)
	}
	if _, err = conn.ExecContext(ctx, fmt.Sprintf("PRAGMA cache_size = -%d", bulkCacheKiB(size))); err == nil {
		_, err = conn.ExecContext(ctx, "PRAGMA wal_autocheckpoint = 0")
	}
	if err != nil {
		restore(context.WithoutCancel(ctx))
		return fmt.Errorf("failed to set up a bulk connection: %w", err)
	}
	err = db.Raw.DoTxn(ctx, &dbutil.TxnOptions{Conn: acquired}, fn)
	if err != nil {
		restore(context.WithoutCancel(ctx))
		return err
	}
	// The page cache goes first: the checkpoint copies WAL frames without it.
	ctx = context.WithoutCancel(ctx)
	if _, err = conn.ExecContext(ctx, fmt.Sprintf("PRAGMA cache_size = %d", cacheSize)); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to shrink a bulk connection's page cache")
	}
	db.checkpoints.Add(1)
	go func() {
		defer db.checkpoints.Done()
		db.checkpoint(ctx, conn)
		restore(ctx)
	}()
	return nil
}

// checkpoint copies what the WAL holds back into the database file, without waiting for readers
// (PASSIVE: what a reader still needs stays for a later checkpoint; every later commit's automatic
// checkpoint carries on).
func (db *Database) checkpoint(ctx context.Context, conn *sql.Conn) {
	db.checkpointLock.Lock()
	defer db.checkpointLock.Unlock()
	var busy, logFrames, done int
	if err := conn.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &logFrames, &done); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to checkpoint the WAL after a bulk transaction")
		return
	}
	zerolog.Ctx(ctx).Debug().Int("wal_frames", logFrames).Int("checkpointed", done).Msg("Checkpointed the WAL after a bulk transaction")
}

// WaitCheckpoints waits until the checkpoints started after bulk transactions have finished.
func (db *Database) WaitCheckpoints() {
	db.checkpoints.Wait()
}

// bulkState is what DoBulkTxn keeps across calls.
type bulkState struct {
	checkpoints    sync.WaitGroup
	checkpointLock sync.Mutex
}
