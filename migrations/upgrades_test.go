package migrations_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"
	"go.mau.fi/util/dbutil"
	_ "go.mau.fi/util/dbutil/litestream" // sqlite3-fk-wal
	"maunium.net/go/mautrix/crypto/sql_store_upgrade"

	"github.com/heirloom-matrix/heirloom/migrations"
)

func openSQLite(t *testing.T) *dbutil.Database {
	t.Helper()
	raw, err := dbutil.NewWithDialect("file:"+filepath.Join(t.TempDir(), "t.db")+"?_txlock=immediate", "sqlite3-fk-wal")
	require.NoError(t, err)
	t.Cleanup(func() { _ = raw.Close() })
	// heirloom's schema indexes a table of mautrix's crypto store, which is created first.
	require.NoError(t, raw.Child(sql_store_upgrade.VersionTableName, sql_store_upgrade.Table, nil).Upgrade(context.Background()))
	return raw.Child(migrations.VersionTable, migrations.Table, nil)
}

func TestLatestRevisionReachesLatestVersion(t *testing.T) {
	require.NotEmpty(t, migrations.Table)
	db := openSQLite(t)
	// The latest revision sits at v0 and creates the whole current schema in one step.
	upgradesTo, compat, err := migrations.Table[0].DangerouslyRun(context.Background(), db)
	require.NoError(t, err)
	require.Equal(t, len(migrations.Table), upgradesTo)
	require.LessOrEqual(t, compat, upgradesTo)
	for _, table := range []string{"heirloom_txn", "puppet", "room_rotation", "bundle_sent", "bundle_delivery", "bundle_received", "puppet_invite"} {
		exists, err := db.TableExists(context.Background(), table)
		require.NoError(t, err)
		require.True(t, exists, "table %s", table)
	}
}

func TestUpgradeRecordsVersion(t *testing.T) {
	ctx := context.Background()
	db := openSQLite(t)
	require.NoError(t, db.Upgrade(ctx))
	var version int
	require.NoError(t, db.QueryRow(ctx, `SELECT version FROM `+migrations.VersionTable).Scan(&version))
	require.Equal(t, len(migrations.Table), version)
	require.NoError(t, db.Upgrade(ctx), "upgrading an up-to-date database is a no-op")
}

func TestUpgradeRefusesNewerDatabase(t *testing.T) {
	ctx := context.Background()
	db := openSQLite(t)
	require.NoError(t, db.Upgrade(ctx))
	newer := len(migrations.Table) + 1
	_, err := db.Exec(ctx, `UPDATE `+migrations.VersionTable+` SET version=$1, compat=$1`, newer)
	require.NoError(t, err)

	err = db.Upgrade(ctx)
	require.ErrorIs(t, err, dbutil.ErrUnsupportedDatabaseVersion, "a database from a newer heirloom must not be used")
	var version int
	require.NoError(t, db.QueryRow(ctx, `SELECT version FROM `+migrations.VersionTable).Scan(&version))
	require.Equal(t, newer, version, "the refused database is left as it was")
}

// A v1 database (the schema heirloom shipped first, testdata/v1-schema.sql: transactions known by
// ID only, acceptances not bound to a join) upgrades through every later file and keeps its rows.
func TestUpgradeFromV1(t *testing.T) {
	ctx := context.Background()
	db := openSQLite(t)
	schema, err := os.ReadFile("testdata/v1-schema.sql")
	require.NoError(t, err)
	_, err = db.Exec(ctx, string(schema))
	require.NoError(t, err)
	_, err = db.Exec(ctx, `INSERT INTO heirloom_txn (txn_id, received_at) VALUES ('old', 1)`)
	require.NoError(t, err)
	_, err = db.Exec(ctx, `INSERT INTO puppet_invite (puppet, room_id, inviter, invite_event_id, invited_at, accepted_at)
		VALUES ('@p:hs', '!accepted:hs', '@a:hs', '$i1', 1, 5), ('@p:hs', '!open:hs', '@a:hs', '$i2', 1, 0)`)
	require.NoError(t, err)
	_, err = db.Exec(ctx, `CREATE TABLE `+migrations.VersionTable+` (version INTEGER, compat INTEGER)`)
	require.NoError(t, err)
	_, err = db.Exec(ctx, `INSERT INTO `+migrations.VersionTable+` (version, compat) VALUES (1, 1)`)
	require.NoError(t, err)

	require.NoError(t, db.Upgrade(ctx))
	var hash string
	require.NoError(t, db.QueryRow(ctx, `SELECT body_hash FROM heirloom_txn WHERE txn_id='old'`).Scan(&hash))
	require.Empty(t, hash, "a v1 row matches no body, so no new transaction is wrongly skipped")
	joins := map[string]string{}
	rows, err := db.Query(ctx, `SELECT room_id, join_event_id FROM puppet_invite`)
	require.NoError(t, err)
	for rows.Next() {
		var room, join string
		require.NoError(t, rows.Scan(&room, &join))
		joins[room] = join
	}
	require.NoError(t, rows.Err())
	require.NotEmpty(t, joins["!accepted:hs"], "an acceptance recorded before v4 still counts")
	require.Empty(t, joins["!open:hs"], "an invite not accepted stays unaccepted")
	var version int
	require.NoError(t, db.QueryRow(ctx, `SELECT version FROM `+migrations.VersionTable).Scan(&version))
	require.Equal(t, len(migrations.Table), version)
}

// columnsAndIndexes describes heirloom's tables on SQLite: every column with its type, nullability
// and default, and every index, independent of the order the columns were added in.
func columnsAndIndexes(t *testing.T, db *dbutil.Database) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	for _, table := range []string{"heirloom_txn", "puppet", "room_rotation", "bundle_sent", "bundle_delivery",
		"bundle_received", "puppet_invite", "admin_refusal", "room_encryption", "gateway_event", "gateway_txn", "gateway_counter",
		"gateway_late", "gateway_send", "gateway_media"} {
		rows, err := db.Query(ctx, `SELECT name, type, "notnull", COALESCE(dflt_value, ''), pk FROM pragma_table_info($1)`, table)
		require.NoError(t, err)
		for rows.Next() {
			var name, typ, dflt string
			var notNull, pk int
			require.NoError(t, rows.Scan(&name, &typ, &notNull, &dflt, &pk))
			out = append(out, fmt.Sprintf("%s.%s %s notnull=%d default=%s pk=%d", table, name, typ, notNull, dflt, pk))
		}
		require.NoError(t, rows.Err())
		rows, err = db.Query(ctx, `SELECT name FROM sqlite_master WHERE type='index' AND tbl_name=$1 AND name NOT LIKE 'sqlite_%'`, table)
		require.NoError(t, err)
		for rows.Next() {
			var name string
			require.NoError(t, rows.Scan(&name))
			out = append(out, "index "+name)
		}
		require.NoError(t, rows.Err())
	}
	sort.Strings(out)
	return out
}

// A database upgraded file by file from v1 ends with the same tables, columns and indexes as one
// created from the latest revision.
func TestUpgradedSchemaEqualsLatestRevision(t *testing.T) {
	ctx := context.Background()
	fresh := openSQLite(t)
	require.NoError(t, fresh.Upgrade(ctx))

	old := openSQLite(t)
	schema, err := os.ReadFile("testdata/v1-schema.sql")
	require.NoError(t, err)
	_, err = old.Exec(ctx, string(schema))
	require.NoError(t, err)
	_, err = old.Exec(ctx, `CREATE TABLE `+migrations.VersionTable+` (version INTEGER, compat INTEGER)`)
	require.NoError(t, err)
	_, err = old.Exec(ctx, `INSERT INTO `+migrations.VersionTable+` (version, compat) VALUES (1, 1)`)
	require.NoError(t, err)
	require.NoError(t, old.Upgrade(ctx))

	require.Equal(t, columnsAndIndexes(t, fresh), columnsAndIndexes(t, old))
}
