package database

import (
	"database/sql"
	"database/sql/driver"
	"fmt"

	"github.com/mattn/go-sqlite3"
)

// sqliteDriver is the driver heirloom opens database.type sqlite3-fk-wal with: the same settings
// as go.mau.fi/util's sqlite3-fk-wal (foreign keys, WAL, synchronous=NORMAL), but writers wait a
// minute for the lock instead of five seconds. A bundle import writes in one transaction and
// holds SQLite's single writer for its whole length (seconds for the largest bundles): every
// other write, of any puppet, must wait for it rather than fail and lose a room key.
const sqliteDriver = "sqlite3-fk-wal-heirloom"

// sqliteBusyTimeoutMS is how long a write waits for SQLite's lock.
const sqliteBusyTimeoutMS = 60_000

func init() {
	sql.Register(sqliteDriver, &sqlite3.SQLiteDriver{
		ConnectHook: func(conn *sqlite3.SQLiteConn) error {
			for _, pragma := range []string{
				"PRAGMA foreign_keys = ON",
				"PRAGMA journal_mode = WAL",
				"PRAGMA synchronous = NORMAL",
				fmt.Sprintf("PRAGMA busy_timeout = %d", sqliteBusyTimeoutMS),
			} {
				if _, err := conn.Exec(pragma, []driver.Value{}); err != nil {
					return err
				}
			}
			return nil
		},
	})
}

// driverFor returns the driver a configured database.type opens with.
func driverFor(dbType string) string {
	if dbType == "sqlite3-fk-wal" {
		return sqliteDriver
	}
	return dbType
}
