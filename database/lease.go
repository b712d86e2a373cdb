package database

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/lib/pq"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/lease"
)

// The lease (package lease) that makes one heirloom process the only writer of a database.
//
// On PostgreSQL it is one row of heirloom_lease: the holder renews it, and it expires by the
// database's clock. Its table is created here, not by a migration: the lease must be held before
// anything is written, the schema upgrade included. Fencing on top of the holder's own deadline:
// every connection of a holder's pool names the holder (application_name) and is refused at
// connect unless the holder's lease runs (OpenFenced); a process that takes the lease over first
// ends every connection of the previous holder. A statement of a process paused past its deadline,
// or a packet late on the network, then finds no connection to run on.

// leaseRow names the row of the writers' lease.
const leaseRow = "writer"

// leaseTableLock serialises the creation of heirloom_lease (two processes starting together).
const leaseTableLock = 7_246_551_302_112_201

const leaseTable = `CREATE TABLE IF NOT EXISTS heirloom_lease (
	name       TEXT PRIMARY KEY,
	holder     TEXT NOT NULL,
	host       TEXT NOT NULL,
	pid        INTEGER NOT NULL,
	epoch      BIGINT NOT NULL,
	since      TIMESTAMPTZ NOT NULL,
	expires_at TIMESTAMPTZ NOT NULL
)`

// LeaseStore returns the store of the lease on the configured database and how it is kept: a row
// in PostgreSQL, an flock on a file beside an SQLite database (its path with .lock appended). It
// returns nil for an in-memory SQLite database, which no other process can open.
func LeaseStore(cfg config.Database, me lease.Holder) (lease.Store, lease.Timing, error) {
	if driverFor(cfg.Type) == sqliteDriver {
		path := sqlitePath(cfg.URI)
		if path == "" {
			return nil, lease.FileTiming, nil
		}
		return lease.NewFileStore(path+".lock", path), lease.FileTiming, nil
	}
	store, err := newPostgresLease(cfg.URI, me.ID)
	return store, lease.DatabaseTiming, err
}

// sqlitePath returns the file of an SQLite URI ("file:x.db?…" or "x.db"), or "" for a database in
// memory.
func sqlitePath(uri string) string {
	path, query, _ := strings.Cut(strings.TrimPrefix(uri, "file:"), "?")
	if unescaped, err := url.PathUnescape(path); err == nil {
		path = unescaped
	}
	if values, err := url.ParseQuery(query); err == nil && values.Get("mode") == "memory" {
		return ""
	}
	if path == "" || path == ":memory:" {
		return ""
	}
	return path
}

// postgresLease is the lease row, reached on a connection of its own.
type postgresLease struct {
	db   *sql.DB
	desc string
	// tableReady is set once heirloom_lease is known to exist.
	tableReady bool
}

var _ lease.Store = (*postgresLease)(nil)

func newPostgresLease(uri, holder string) (*postgresLease, error) {
	connector, cfg, err := pgConnector(uri, holder)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(connector)
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	return &postgresLease{db: db, desc: fmt.Sprintf("PostgreSQL database %s on %s:%d", cfg.Database, cfg.Host, cfg.Port)}, nil
}

// pgConnector returns a connector to uri whose connections carry application_name holder.
func pgConnector(uri, holder string) (*pq.Connector, pq.Config, error) {
	cfg, err := pq.NewConfig(uri)
	if err != nil {
		return nil, cfg, fmt.Errorf("failed to parse database.uri: %w", err)
	}
	cfg.ApplicationName = holder
	connector, err := pq.NewConnectorConfig(cfg)
	return connector, cfg, err
}

func (s *postgresLease) Describe() string { return s.desc }

// Close closes the lease's connection.
func (s *postgresLease) Close() error { return s.db.Close() }

// createTable creates heirloom_lease unless it exists: a standby that finds it does nothing but
// read.
func (s *postgresLease) createTable(ctx context.Context) error {
	if s.tableReady {
		return nil
	}
	var exists bool
	if err := s.db.QueryRowContext(ctx, `SELECT to_regclass('heirloom_lease') IS NOT NULL`).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		if _, err = tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(leaseTableLock)); err != nil {
			return err
		}
		if _, err = tx.ExecContext(ctx, leaseTable); err != nil {
			return err
		}
		if err = tx.Commit(); err != nil {
			return err
		}
	}
	s.tableReady = true
	return nil
}

// TryAcquire takes the row if nobody holds it or its lease expired by the database's clock, then
// ends every connection of the holder it replaced.
func (s *postgresLease) TryAcquire(ctx context.Context, me lease.Holder, ttl time.Duration) (lease.Attempt, error) {
	if err := s.createTable(ctx); err != nil {
		return lease.Attempt{}, fmt.Errorf("failed to create heirloom_lease: %w", err)
	}
	got, err := s.take(ctx, me, ttl)
	if err != nil || !got.Acquired || got.Previous == nil {
		return got, err
	}
	// The previous holder stopped acting by its own clock before its lease expired; its
	// connections end now, so nothing it sent late can still be written.
	if err = s.endConnections(ctx, got.Previous.ID); err != nil {
		return got, fmt.Errorf("took over the lease, but failed to end the previous holder's connections: %w", err)
	}
	return got, nil
}

// leaseQuery reads the row: its holder, whether it expired and how long it has left, by the
// database's clock.
const leaseQuery = `SELECT holder, host, pid, epoch, since, expires_at <= clock_timestamp(),
		EXTRACT(EPOCH FROM expires_at - clock_timestamp())::float8
	FROM heirloom_lease WHERE name=$1`

// leaseRowOf is the row as leaseQuery reads it.
type leaseRowOf struct {
	holder  lease.Holder
	expired bool
	left    time.Duration
	found   bool
}

func readLease(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, lock bool) (leaseRowOf, error) {
	query := leaseQuery
	if lock {
		query += " FOR UPDATE"
	}
	var r leaseRowOf
	var leftSeconds float64
	err := q.QueryRowContext(ctx, query, leaseRow).
		Scan(&r.holder.ID, &r.holder.Host, &r.holder.PID, &r.holder.Epoch, &r.holder.Since, &r.expired, &leftSeconds)
	if errors.Is(err, sql.ErrNoRows) {
		return leaseRowOf{}, nil
	}
	r.found, r.left = err == nil, time.Duration(leftSeconds*float64(time.Second))
	return r, err
}

// heldByOther reports whether another process's lease on the row runs.
func (r leaseRowOf) heldByOther(me lease.Holder) bool {
	return r.found && !r.expired && r.holder.ID != me.ID
}

// take takes the row if it is free, expired or already this process's. It reads it without a
// lock first: a standby that finds the lease held writes and locks nothing.
func (s *postgresLease) take(ctx context.Context, me lease.Holder, ttl time.Duration) (lease.Attempt, error) {
	if r, err := readLease(ctx, s.db, false); err != nil {
		return lease.Attempt{}, err
	} else if r.heldByOther(me) {
		return lease.Attempt{Holder: r.holder, ExpiresIn: r.left}, nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return lease.Attempt{}, err
	}
	defer tx.Rollback()
	r, err := readLease(ctx, tx, true)
	if err != nil {
		return lease.Attempt{}, err
	} else if r.heldByOther(me) {
		return lease.Attempt{Holder: r.holder, ExpiresIn: r.left}, nil
	}
	err = tx.QueryRowContext(ctx, `
		INSERT INTO heirloom_lease (name, holder, host, pid, epoch, since, expires_at)
		VALUES ($1, $2, $3, $4, 1, clock_timestamp(), clock_timestamp() + $5 * interval '1 millisecond')
		ON CONFLICT (name) DO UPDATE SET holder=excluded.holder, host=excluded.host, pid=excluded.pid,
			epoch=heirloom_lease.epoch+1, since=excluded.since, expires_at=excluded.expires_at
		RETURNING epoch, since`, leaseRow, me.ID, me.Host, me.PID, ttl.Milliseconds()).Scan(&me.Epoch, &me.Since)
	if err != nil {
		return lease.Attempt{}, err
	}
	if err = tx.Commit(); err != nil {
		return lease.Attempt{}, err
	}
	got := lease.Attempt{Acquired: true, Holder: me}
	if r.found && r.holder.ID != me.ID {
		previous := r.holder
		got.Previous = &previous
	}
	return got, nil
}

// endConnections terminates every connection named holder to this database and waits until they
// are gone.
func (s *postgresLease) endConnections(ctx context.Context, holder string) error {
	const others = `FROM pg_stat_activity WHERE application_name=$1 AND datname=current_database() AND pid <> pg_backend_pid()`
	if _, err := s.db.ExecContext(ctx, `SELECT pg_terminate_backend(pid) `+others, holder); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		var left int
		if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) `+others, holder).Scan(&left); err != nil {
			return err
		} else if left == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Renew moves the expiry to ttl from now, if this process still holds the row.
func (s *postgresLease) Renew(ctx context.Context, me lease.Holder, ttl time.Duration) error {
	res, err := s.db.ExecContext(ctx, `
		UPDATE heirloom_lease SET expires_at = clock_timestamp() + $3 * interval '1 millisecond'
		WHERE name=$1 AND holder=$2`, leaseRow, me.ID, ttl.Milliseconds())
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return lease.ErrNotHolder
	}
	return nil
}

// Release lets the row expire now.
func (s *postgresLease) Release(ctx context.Context, me lease.Holder) error {
	_, err := s.db.ExecContext(ctx, `UPDATE heirloom_lease SET expires_at = clock_timestamp() WHERE name=$1 AND holder=$2`, leaseRow, me.ID)
	return err
}

// errLeaseNotHeld is what a connection of a fenced pool fails with when its process does not hold
// the lease.
var errLeaseNotHeld = errors.New("this heirloom process does not hold the lease on the database: connection refused")

// fencedConnector opens connections named holder and keeps each only if holder's lease runs.
type fencedConnector struct {
	*pq.Connector
	holder string
}

func (c *fencedConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	if err = c.check(ctx, conn); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return conn, nil
}

func (c *fencedConnector) check(ctx context.Context, conn driver.Conn) error {
	rows, err := conn.(driver.QueryerContext).QueryContext(ctx,
		`SELECT COUNT(*) FROM heirloom_lease WHERE name=$1 AND holder=$2 AND expires_at > clock_timestamp()`,
		[]driver.NamedValue{{Ordinal: 1, Value: leaseRow}, {Ordinal: 2, Value: c.holder}})
	if err != nil {
		return fmt.Errorf("failed to check the lease: %w", err)
	}
	defer rows.Close()
	held := make([]driver.Value, 1)
	if err = rows.Next(held); err != nil {
		return fmt.Errorf("failed to check the lease: %w", err)
	}
	if n, _ := held[0].(int64); n != 1 {
		return errLeaseNotHeld
	}
	return nil
}
