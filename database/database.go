// Package database provides heirloom's database handle and the queries on its own tables.
// mautrix's crypto store and state store share the same database under their own version tables.
package database

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	_ "github.com/lib/pq" // PostgreSQL driver for database.type: postgres
	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto/sql_store_upgrade"
	"maunium.net/go/mautrix/sqlstatestore"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/migrations"
)

// Database is heirloom's handle on the shared database: the queries on heirloom's own tables are
// its methods; mautrix's crypto store (package e2ee) and state store reach theirs through Raw.
type Database struct {
	// Raw is the shared handle that mautrix's stores make their children from. A transaction
	// begun on it (doTxn) covers heirloom's queries and mautrix's alike.
	Raw *dbutil.Database
	// own is heirloom's child of Raw, upgraded under heirloom's version table.
	own        *dbutil.Database
	StateStore *sqlstatestore.SQLStateStore
	log        zerolog.Logger
	// Now is the clock every timestamp heirloom writes comes from (time.Now unless a test sets it).
	Now func() time.Time
	bulkState
}

// Open connects to the configured database. It does not upgrade the schema.
func Open(cfg config.Database, log zerolog.Logger) (*Database, error) {
	return OpenFenced(cfg, log, "")
}

// OpenFenced is Open for the process whose lease (package lease) is holder: on PostgreSQL every
// connection carries holder as its application_name and is refused unless holder's lease runs (see
// lease.go), so that a process that lost the lease cannot write through a new connection.
// SQLite's lock file needs no such check. An empty holder opens unfenced.
func OpenFenced(cfg config.Database, log zerolog.Logger, holder string) (*Database, error) {
	dblog := dbutil.ZeroLogger(log.With().Str("component", "database").Logger())
	raw, err := openRaw(cfg, dblog, holder)
	if err != nil {
		return nil, fmt.Errorf("failed to open database: %w", err)
	}
	return &Database{
		Raw:        raw,
		own:        raw.Child(migrations.VersionTable, migrations.Table, dblog),
		StateStore: sqlstatestore.NewSQLStateStore(raw, dblog, false),
		log:        log,
		Now:        time.Now,
	}, nil
}

func openRaw(cfg config.Database, dblog dbutil.DatabaseLogger, holder string) (*dbutil.Database, error) {
	pool := dbutil.PoolConfig{Type: driverFor(cfg.Type), URI: cfg.URI, MaxOpenConns: cfg.MaxOpenConns, MaxIdleConns: cfg.MaxIdleConns}
	if holder == "" || pool.Type == sqliteDriver {
		return dbutil.NewFromConfig("heirloom", dbutil.Config{PoolConfig: pool}, dblog)
	}
	connector, _, err := pgConnector(cfg.URI, holder)
	if err != nil {
		return nil, err
	}
	raw, err := dbutil.NewWithDB(sql.OpenDB(&fencedConnector{Connector: connector, holder: holder}), "postgres")
	if err != nil {
		return nil, err
	}
	raw.Owner, raw.Log = "heirloom", dblog
	return raw, raw.Configure(dbutil.Config{PoolConfig: pool})
}

// Upgrade brings heirloom's tables, mautrix's state store and mautrix's crypto store to
// their latest schema, each under its own version table.
func (db *Database) Upgrade(ctx context.Context) error {
	// mautrix's stores first: heirloom's schema indexes a table of the crypto store (v3, and again v9
	// after mautrix's schema 23 rebuilt that table on SQLite).
	dblog := dbutil.ZeroLogger(db.log.With().Str("component", "database").Logger())
	cryptoDB := db.Raw.Child(sql_store_upgrade.VersionTableName, sql_store_upgrade.Table, dblog)
	if err := cryptoDB.Upgrade(ctx); err != nil {
		return fmt.Errorf("failed to upgrade crypto store: %w", err)
	}
	if err := db.StateStore.Upgrade(ctx); err != nil {
		return fmt.Errorf("failed to upgrade state store: %w", err)
	}
	if err := db.own.Upgrade(ctx); err != nil {
		return fmt.Errorf("failed to upgrade heirloom tables: %w", err)
	}
	return nil
}

// doTxn runs fn in one database transaction, committed if fn returns nil and rolled back if not.
// Every query of heirloom's and of mautrix's stores made with fn's context is part of it.
func (db *Database) doTxn(ctx context.Context, fn func(ctx context.Context) error) error {
	return db.Raw.DoTxn(ctx, nil, fn)
}

// Close closes the database, once the checkpoints of bulk transactions (DoBulkTxn) have finished.
func (db *Database) Close() error {
	db.WaitCheckpoints()
	return db.Raw.Close()
}

func (db *Database) nowMillis() int64 {
	return db.Now().UnixMilli()
}

// listOf scans every row with scan, wrapping a failure as "failed to <what>".
func listOf[T any](rows dbutil.Rows, err error, scan dbutil.ConvertRowFn[T], what string) ([]T, error) {
	out, err := dbutil.NewRowIterWithError(rows, scan, err).AsList()
	if err != nil {
		return nil, fmt.Errorf("failed to %s: %w", what, err)
	}
	return out, nil
}
