package cryptostore

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto/sql_store_upgrade"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
)

// testDB is a SQLite database with heirloom's schema and mautrix's crypto store tables. (The
// round-trip tests of these statements, through the puppets that run them, are package e2ee's.)
func testDB(t testing.TB) *dbutil.Database {
	t.Helper()
	db, err := database.Open(testdb.SQLite(t), zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	require.NoError(t, db.Upgrade(context.Background()))
	return db.Raw
}

// The statements of this package are written for one schema of mautrix's crypto store. A mautrix
// upgrade that changes it must be looked at before these statements run on it.
func TestCryptoStoreSchemaIsTheOneTheStatementsWereWrittenFor(t *testing.T) {
	require.Len(t, sql_store_upgrade.Table, CryptoStoreSchema,
		"mautrix's crypto store schema is no longer v%d: check every statement in e2ee/cryptostore against the new schema, then update CryptoStoreSchema", CryptoStoreSchema)
	goMod, err := os.ReadFile("../../go.mod")
	require.NoError(t, err)
	for _, line := range strings.Split(string(goMod), "\n") {
		if fields := strings.Fields(line); len(fields) >= 2 && fields[0] == "maunium.net/go/mautrix" {
			require.Equal(t, mautrixVersion, fields[1], "mautrix-go was upgraded: check e2ee/cryptostore, then update mautrixVersion")
			return
		}
	}
	t.Fatal("go.mod does not require maunium.net/go/mautrix")
}

// SQLite answers SharedWith from the primary key, never by scanning the table (which grows with
// every session shared).
func TestSharedWithUsesThePrimaryKey(t *testing.T) {
	db := testDB(t)
	args := []any{"SESSION"}
	for i := range 3 {
		args = append(args, fmt.Sprintf("@user%d:localhost", i), fmt.Sprintf("key%d", i))
	}
	rows, err := db.Query(context.Background(), "EXPLAIN QUERY PLAN "+sharedWithQuery(3), args...)
	require.NoError(t, err)
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		require.NoError(t, rows.Scan(&id, &parent, &unused, &detail))
		plan = append(plan, detail)
		require.NotContains(t, detail, "SCAN crypto_megolm_outbound_session_shared", "plan: %v", plan)
	}
	require.NoError(t, rows.Err())
	require.Contains(t, strings.Join(plan, "\n"), "USING COVERING INDEX", "plan: %v", plan)
}
