package database_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
	"github.com/heirloom-matrix/heirloom/migrations"
)

func versionOf(t *testing.T, db *database.Database, table string) int {
	t.Helper()
	var version int
	require.NoError(t, db.Raw.QueryRow(context.Background(), `SELECT version FROM `+table).Scan(&version))
	return version
}

func TestUpgrade(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		versions := map[string]int{}
		for _, table := range []string{migrations.VersionTable, "crypto_version", "mx_version"} {
			exists, err := db.Raw.TableExists(ctx, table)
			require.NoError(t, err)
			require.True(t, exists, "version table %s", table)
			versions[table] = versionOf(t, db, table)
			require.Positive(t, versions[table], "version of %s", table)
		}
		require.Equal(t, len(migrations.Table), versions[migrations.VersionTable])
		for _, table := range []string{"heirloom_txn", "puppet", "room_rotation", "bundle_sent", "bundle_delivery",
			"bundle_received", "puppet_invite", "crypto_account", "crypto_megolm_inbound_session", "mx_room_state"} {
			exists, err := db.Raw.TableExists(ctx, table)
			require.NoError(t, err)
			require.True(t, exists, "table %s", table)
		}

		// A second upgrade changes nothing and keeps the data.
		require.NoError(t, db.PutPuppet(ctx, &database.Puppet{UserID: "@heirloom_a:hs", DeviceID: "DEV", Ready: true}))
		require.NoError(t, db.Upgrade(ctx))
		for table, version := range versions {
			require.Equal(t, version, versionOf(t, db, table), "version of %s after a second upgrade", table)
			var rows int
			require.NoError(t, db.Raw.QueryRow(ctx, `SELECT COUNT(*) FROM `+table).Scan(&rows))
			require.Equal(t, 1, rows, "%s holds one row", table)
		}
		p, err := db.GetPuppet(ctx, "@heirloom_a:hs")
		require.NoError(t, err)
		require.NotNil(t, p)
	})
}

func TestUpgradeRefusesNewerSchema(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		_, err := db.Raw.Exec(ctx, `UPDATE `+migrations.VersionTable+` SET version=$1, compat=$1`, len(migrations.Table)+1)
		require.NoError(t, err)
		err = db.Upgrade(ctx)
		require.ErrorIs(t, err, dbutil.ErrUnsupportedDatabaseVersion)
		require.Contains(t, err.Error(), "heirloom tables")
	})
}

func TestTransactions(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		done, err := db.IsTxnProcessed(ctx, "txn1", "hash-a")
		require.NoError(t, err)
		require.False(t, done)

		require.NoError(t, db.MarkTxnProcessed(ctx, "txn1", "hash-a"))
		require.NoError(t, db.MarkTxnProcessed(ctx, "txn1", "hash-a"), "marking twice is harmless")
		done, err = db.IsTxnProcessed(ctx, "txn1", "hash-a")
		require.NoError(t, err)
		require.True(t, done)
		done, err = db.IsTxnProcessed(ctx, "txn2", "hash-a")
		require.NoError(t, err)
		require.False(t, done, "transaction IDs are not prefixes of each other")

		// Synapse on SQLite reuses IDs after a restart: the same ID with another body is new.
		done, err = db.IsTxnProcessed(ctx, "txn1", "hash-b")
		require.NoError(t, err)
		require.False(t, done, "a reused transaction ID with a different body is a new transaction")

		// Prune forgets only old IDs.
		require.NoError(t, db.MarkTxnProcessed(ctx, "old", "hash-o"))
		_, err = db.Raw.Exec(ctx, `UPDATE heirloom_txn SET received_at=$1 WHERE txn_id='old'`, time.Now().Add(-48*time.Hour).UnixMilli())
		require.NoError(t, err)
		require.NoError(t, db.PruneTxns(ctx, 24*time.Hour))
		for txnID, want := range map[string]bool{"txn1": true, "old": false} {
			hash := map[string]string{"txn1": "hash-a", "old": "hash-o"}[txnID]
			done, err = db.IsTxnProcessed(ctx, txnID, hash)
			require.NoError(t, err)
			require.Equal(t, want, done, "transaction %s after pruning", txnID)
		}
	})
}

func TestPuppets(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		p, err := db.GetPuppet(ctx, "@heirloom_nobody:hs")
		require.NoError(t, err)
		require.Nil(t, p, "unknown puppet")
		n, err := db.CountPuppets(ctx)
		require.NoError(t, err)
		require.Zero(t, n)
		ids, err := db.ListPuppetIDs(ctx)
		require.NoError(t, err)
		require.Empty(t, ids)

		// Half-provisioned: saved, but neither counted nor listed.
		bob := &database.Puppet{UserID: "@heirloom_bob:hs", DeviceID: "BOBDEV", Displayname: "Bob"}
		require.NoError(t, db.PutPuppet(ctx, bob))
		require.NotZero(t, bob.CreatedAt)
		n, err = db.CountPuppets(ctx)
		require.NoError(t, err)
		require.Zero(t, n)

		bob.Ready, bob.CrossSigningSeeds, bob.MasterKey = true, "c2VhbGVk", "bWFzdGVy"
		createdAt := bob.CreatedAt
		require.NoError(t, db.PutPuppet(ctx, bob))
		alice := &database.Puppet{UserID: "@heirloom_alice:hs", DeviceID: "ALICEDEV", Ready: true, CreatedAt: 1234}
		require.NoError(t, db.PutPuppet(ctx, alice))

		got, err := db.GetPuppet(ctx, bob.UserID)
		require.NoError(t, err)
		require.Equal(t, &database.Puppet{
			UserID: "@heirloom_bob:hs", DeviceID: "BOBDEV", Displayname: "Bob", CrossSigningSeeds: "c2VhbGVk",
			MasterKey: "bWFzdGVy", Ready: true, CreatedAt: createdAt,
		}, got)
		got, err = db.GetPuppet(ctx, alice.UserID)
		require.NoError(t, err)
		require.Equal(t, int64(1234), got.CreatedAt)

		n, err = db.CountPuppets(ctx)
		require.NoError(t, err)
		require.Equal(t, 2, n)
		ids, err = db.ListPuppetIDs(ctx)
		require.NoError(t, err)
		require.Equal(t, []id.UserID{"@heirloom_alice:hs", "@heirloom_bob:hs"}, ids)
	})
}

func TestRotation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		after, err := db.RotateAfter(ctx, "!room:hs")
		require.NoError(t, err)
		require.True(t, after.IsZero(), "a room never marked has no rotation time")

		at := time.UnixMilli(1_800_000_000_000)
		require.NoError(t, db.RequireRotation(ctx, "!room:hs", at))
		first, err := db.RotateAfter(ctx, "!room:hs")
		require.NoError(t, err)
		// A session created in the same millisecond as the change must rotate too.
		require.Equal(t, at.Add(time.Millisecond), first)

		other, err := db.RotateAfter(ctx, "!other:hs")
		require.NoError(t, err)
		require.True(t, other.IsZero(), "rooms are independent")

		require.NoError(t, db.RequireRotation(ctx, "!room:hs", at.Add(time.Second)))
		second, err := db.RotateAfter(ctx, "!room:hs")
		require.NoError(t, err)
		require.Equal(t, at.Add(time.Second+time.Millisecond), second, "a later change moves the time forward")

		// A late transaction of an earlier change never moves it back.
		require.NoError(t, db.RequireRotation(ctx, "!room:hs", at))
		third, err := db.RotateAfter(ctx, "!room:hs")
		require.NoError(t, err)
		require.Equal(t, second, third)
	})
}

// On SQLite a write waits a minute for the lock (a large bundle import holds it for seconds), not
// the five seconds of go.mau.fi/util's driver.
func TestSQLiteWritersWaitForTheLock(t *testing.T) {
	db := openDatabase(t, testdb.SQLite(t))
	conn, err := db.Raw.RawDB.Conn(context.Background())
	require.NoError(t, err)
	defer conn.Close()
	var timeout int
	require.NoError(t, conn.QueryRowContext(context.Background(), "PRAGMA busy_timeout").Scan(&timeout))
	require.Equal(t, 60_000, timeout)
}
