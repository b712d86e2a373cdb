package migrations_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.mau.fi/util/dbutil"
	_ "go.mau.fi/util/dbutil/litestream" // sqlite3-fk-wal

	"github.com/heirloom-matrix/heirloom/migrations"
)

func openSQLite(t *testing.T) *dbutil.Database {
	t.Helper()
	raw, err := dbutil.NewWithDialect("file:"+filepath.Join(t.TempDir(), "t.db")+"?_txlock=immediate", "sqlite3-fk-wal")
	require.NoError(t, err)
	t.Cleanup(func() { _ = raw.Close() })
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
