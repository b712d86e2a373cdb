package migrations_test

import (
	"context"
	"database/sql"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/e2ee/cryptostore"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
	"github.com/heirloom-matrix/heirloom/keybundle"
	"github.com/heirloom-matrix/heirloom/migrations"
)

const fixturePickleKey = "fixture-pickle-key-0123456789"

// oldRow is an inbound session row as heirloom at ee803a6 stored it: one per account and session
// ID, whatever the room.
type oldRow struct {
	account id.UserID
	room    id.RoomID
	out     olm.OutboundGroupSession
	shared  bool
	source  id.KeySource
	user    id.UserID
	// withheld: a bundle's withheld entry, with no session.
	withheld bool
}

// loadFixture creates the database at ee803a6's schema (testdata/ee803a6-*.sql, dumped from a
// database that heirloom created then) on a connection of its own, and writes the rows into it.
func loadFixture(t *testing.T, cfg config.Database, rows []oldRow) {
	t.Helper()
	ctx := context.Background()
	driver, file := "sqlite3", "testdata/ee803a6-sqlite.sql"
	if cfg.Type == "postgres" {
		driver, file = "postgres", "testdata/ee803a6-postgres.sql"
	}
	schema, err := os.ReadFile(file)
	require.NoError(t, err)
	conn, err := sql.Open(driver, cfg.URI)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.ExecContext(ctx, string(schema))
	require.NoError(t, err)
	pickles, err := cryptostore.NewPickleCipher([]byte(fixturePickleKey))
	require.NoError(t, err)
	for _, r := range rows {
		if r.withheld {
			_, err = conn.ExecContext(ctx, `INSERT INTO crypto_megolm_inbound_session
				(account_id, session_id, sender_key, room_id, withheld_code, withheld_reason, received_at, key_source, source_user)
				VALUES ($1, $2, $3, $4, $5, 'not shared', $6, 'forward', $7)`,
				r.account, r.out.ID(), senderKey, r.room, keybundle.CodeHistoryNotShared, time.Now().UTC(), r.user)
			require.NoError(t, err)
			continue
		}
		in, err := olm.NewInboundGroupSession([]byte(r.out.Key()))
		require.NoError(t, err)
		pickled, err := pickles.Pickle(in)
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, `INSERT INTO crypto_megolm_inbound_session
			(account_id, session_id, sender_key, signing_key, room_id, session, forwarding_chains, shared_history, ratchet_safety,
			 received_at, max_age, max_messages, is_scheduled, key_backup_version, key_source, source_user)
			VALUES ($1, $2, $3, $4, $5, $6, '', $7, '{}', $8, 3600000, 100, false, '', $9, $10)`,
			r.account, r.out.ID(), senderKey, signingKey, r.room, pickled, r.shared, time.Now().UTC(), r.source, r.user)
		require.NoError(t, err)
	}
}

const (
	senderKey  = id.SenderKey("Cw2NGqvfQZrIABBEv7U7xfABpr83fQhGti2MT1fkhSQ")
	signingKey = id.Ed25519("q0mzeutl73NyVTCd74RDTrVbQ9M9f0C00f8B387qR2Y")
)

// A database of heirloom at ee803a6 upgrades on SQLite and PostgreSQL: mautrix's crypto store to
// schema 23, whose inbound sessions are keyed by (account, room, session); heirloom's to its latest,
// whose v9 makes its room index again where mautrix's rebuilt table lost it. Every row is still held
// for the account and room it was, and reads back through mautrix as it was written. A session that
// an attack parked under another room before the upgrade no longer blocks its real room's key.
func TestUpgradeFromEE803A6HoldsEverySessionUnderItsRoom(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, dbCfg config.Database) {
		ctx := context.Background()
		const p, q id.UserID = "@heirloom_p:localhost", "@heirloom_q:localhost"
		const roomA, roomB id.RoomID = "!a:localhost", "!b:localhost"
		session := func() olm.OutboundGroupSession {
			out, err := olm.NewOutboundGroupSession()
			require.NoError(t, err)
			return out
		}
		own, imported, withheld, parked := session(), session(), session(), session()
		rows := []oldRow{
			{account: p, room: roomA, out: own, shared: true, source: id.KeySourceDirect, user: "@alice:localhost"},
			{account: p, room: roomB, out: imported, shared: true, source: id.KeySourceForward, user: "@inviter:localhost"},
			{account: p, room: roomA, out: withheld, withheld: true, user: "@inviter:localhost"},
			// roomA's session, parked under roomB by a key naming it (a past member's replay).
			{account: p, room: roomB, out: parked, shared: true, source: id.KeySourceDirect, user: "@mallory:localhost"},
			// Another puppet's copy of the same session ID.
			{account: q, room: roomA, out: own, shared: false, source: id.KeySourceDirect, user: "@alice:localhost"},
		}
		loadFixture(t, dbCfg, rows)

		db, err := database.Open(dbCfg, zerolog.Nop())
		require.NoError(t, err)
		t.Cleanup(func() { _ = db.Close() })
		require.NoError(t, db.Upgrade(ctx))
		for table, want := range map[string]int{"crypto_version": cryptostore.CryptoStoreSchema, "heirloom_version": len(migrations.Table)} {
			var version int
			require.NoError(t, db.Raw.QueryRow(ctx, `SELECT version FROM `+table).Scan(&version))
			require.Equal(t, want, version, table)
		}
		require.True(t, indexExists(t, db, "heirloom_megolm_inbound_room_idx"), "the room index is there (SQLite's rebuilt table lost it)")

		cfg := &config.Config{
			Homeserver: config.Homeserver{Address: "http://127.0.0.1:1", Domain: "localhost"},
			AppService: config.AppService{ASToken: "fixture-as-token-0123456789", PuppetPrefix: "heirloom_", BotUsername: "bot"},
			Database:   dbCfg,
			Encryption: config.Encryption{PickleKey: fixturePickleKey},
		}
		e2ee.RegisterContentTypes()
		mgr, err := e2ee.NewManager(cfg, db, http.DefaultClient, zerolog.Nop())
		require.NoError(t, err)
		puppets := map[id.UserID]*e2ee.Puppet{}
		for _, u := range []id.UserID{p, q} {
			puppets[u], err = mgr.LocalPuppet(ctx, u, "DEV")
			require.NoError(t, err)
		}
		var n int
		require.NoError(t, db.Raw.QueryRow(ctx, `SELECT COUNT(*) FROM crypto_megolm_inbound_session`).Scan(&n))
		require.Equal(t, len(rows), n, "no row lost or added")
		for _, r := range rows {
			igs, err := puppets[r.account].Store.GetGroupSession(ctx, r.room, r.out.ID())
			if r.withheld {
				var w *event.RoomKeyWithheldEventContent
				require.ErrorAs(t, err, &w, "the withheld entry is still held for its room")
				require.Equal(t, event.RoomKeyWithheldCode(keybundle.CodeHistoryNotShared), w.Code)
				continue
			}
			require.NoError(t, err)
			require.NotNil(t, igs, "%s's session %s is still held for %s", r.account, r.out.ID(), r.room)
			require.Equal(t, r.shared, *igs.SharedHistory)
			require.Equal(t, r.source, igs.KeySource)
			require.Equal(t, r.user, igs.SourceUser)
			exported, err := igs.Internal.Export(0)
			require.NoError(t, err)
			in, err := olm.NewInboundGroupSession([]byte(r.out.Key()))
			require.NoError(t, err)
			want, err := in.Export(0)
			require.NoError(t, err)
			require.Equal(t, string(want), string(exported))
		}

		// The parked session's real room takes its key now, beside the parked row.
		in, err := olm.NewInboundGroupSession([]byte(parked.Key()))
		require.NoError(t, err)
		shared := true
		stored, reason, err := puppets[p].StoreSession(ctx, &crypto.InboundGroupSession{Internal: in, SenderKey: senderKey,
			SigningKey: signingKey, RoomID: roomA, SharedHistory: &shared, KeySource: id.KeySourceDirect, SourceUser: "@alice:localhost"})
		require.NoError(t, err)
		require.True(t, stored, "the real room's key is stored (%s)", reason)
		for _, room := range []id.RoomID{roomA, roomB} {
			igs, err := puppets[p].Store.GetGroupSession(ctx, room, parked.ID())
			require.NoError(t, err)
			require.NotNil(t, igs, "held for %s", room)
		}
	})
}

func indexExists(t *testing.T, db *database.Database, name string) bool {
	t.Helper()
	query := `SELECT COUNT(*) FROM sqlite_master WHERE type='index' AND name=$1`
	if db.Raw.Dialect == dbutil.Postgres {
		query = `SELECT COUNT(*) FROM pg_indexes WHERE indexname=$1`
	}
	var n int
	require.NoError(t, db.Raw.QueryRow(context.Background(), query, name).Scan(&n))
	return n > 0
}
