package daemon

import (
	"context"
	"io"

	"github.com/rs/zerolog"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/lease"
)

// processLease is the process's lease on its database and what holds its store open.
type processLease struct {
	*lease.Lease
	store lease.Store
}

// close closes the lease's own connection (PostgreSQL); the file lock ends with the process.
func (l *processLease) close() {
	if c, ok := l.store.(io.Closer); ok {
		_ = c.Close()
	}
}

// openLease makes the first attempt to take the lease on the database. On SQLite a process that
// cannot take it refuses to start (exitLeaseHeld), naming the database and the process that holds
// it; on PostgreSQL it goes on as a standby (processLease.Active is false).
func openLease(ctx context.Context, cfg config.Database) (*processLease, int) {
	log := zerolog.Ctx(ctx)
	me := lease.Me()
	store, timing, err := database.LeaseStore(cfg, me)
	if err != nil {
		log.Error().Err(err).Msg("Failed to open the database lease")
		return nil, exitDatabase
	}
	if store == nil {
		store = lease.Solo("an SQLite database in memory")
	}
	l := &processLease{Lease: lease.New(store, me, timing, nil), store: store}
	got, err := l.TryAcquire(ctx)
	switch {
	case err != nil:
		log.Error().Err(err).Msg("Failed to take the database lease")
		l.close()
		return nil, exitDatabase
	case !got.Acquired && timing.TTL == 0:
		log.Error().Str("database", l.Describe()).Str("active_host", got.Holder.Host).Int("active_pid", got.Holder.PID).
			Time("active_since", got.Holder.Since).
			Msg("Another heirloom process holds the database: only one process may run on an SQLite database (stop it first; PostgreSQL allows a standby)")
		l.close()
		return nil, exitLeaseHeld
	case got.Acquired:
		logTakeover(ctx, l.Describe(), got)
	}
	return l, ExitOK
}

// logTakeover says that this process holds the lease, and whose it took over.
func logTakeover(ctx context.Context, database string, got lease.Attempt) {
	ev := zerolog.Ctx(ctx).Info().Str("database", database).Int64("epoch", got.Holder.Epoch)
	if got.Previous != nil {
		ev = ev.Str("previous_host", got.Previous.Host).Int("previous_pid", got.Previous.PID)
	}
	ev.Msg("Holding the database lease: this process is the active one")
}
