// Package database provides heirloom's database handle and the queries on its own tables.
// mautrix's crypto store and state store share the same database under their own version tables.
package database

import (
	"context"
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

// Database is heirloom's handle on the shared database.
type Database struct {
	// Raw is the shared handle that mautrix's stores make their children from.
	Raw *dbutil.Database
	*dbutil.Database
	StateStore *sqlstatestore.SQLStateStore
	log        zerolog.Logger
}

// Open connects to the configured database. It does not upgrade the schema.
func Open(cfg config.Database, log zerolog.Logger) (*Database, error) {
	raw, err := dbutil.NewFromConfig("heirloom", dbutil.Config{
		PoolConfig: dbutil.PoolConfig{
			Type:         driverFor(cfg.Type),
			URI:          cfg.URI,
			MaxOpenConns: cfg.MaxOpenConns,
			MaxIdleConns: cfg.MaxIdleConns,
		},
	}, dbutil.ZeroLogger(log.With().Str("component", "database").Logger()))
	if err != nil {
		return nil, fmt.Errorf("failed to open database: %w", err)
	}
	dblog := dbutil.ZeroLogger(log.With().Str("component", "database").Logger())
	return &Database{
		Raw:        raw,
		Database:   raw.Child(migrations.VersionTable, migrations.Table, dblog),
		StateStore: sqlstatestore.NewSQLStateStore(raw, dblog, false),
		log:        log,
	}, nil
}

// Upgrade brings heirloom's tables, mautrix's state store and mautrix's crypto store to
// their latest schema, each under its own version table.
func (db *Database) Upgrade(ctx context.Context) error {
	// mautrix's stores first: heirloom's schema adds an index to the crypto store's table.
	dblog := dbutil.ZeroLogger(db.log.With().Str("component", "database").Logger())
	cryptoDB := db.Raw.Child(sql_store_upgrade.VersionTableName, sql_store_upgrade.Table, dblog)
	if err := cryptoDB.Upgrade(ctx); err != nil {
		return fmt.Errorf("failed to upgrade crypto store: %w", err)
	}
	if err := db.StateStore.Upgrade(ctx); err != nil {
		return fmt.Errorf("failed to upgrade state store: %w", err)
	}
	if err := db.Database.Upgrade(ctx); err != nil {
		return fmt.Errorf("failed to upgrade heirloom tables: %w", err)
	}
	return nil
}

// Close closes the database.
func (db *Database) Close() error {
	return db.Raw.Close()
}

func nowMillis() int64 {
	return time.Now().UnixMilli()
}
