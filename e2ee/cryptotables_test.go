package e2ee

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee/cryptostore"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// testManagerOn is testManager on the given database.
func testManagerOn(t testing.TB, dbCfg config.Database) *Manager {
	t.Helper()
	cfg := &config.Config{
		Homeserver: config.Homeserver{Address: "http://127.0.0.1:1", Domain: "localhost"},
		AppService: config.AppService{ASToken: "test-as-token-0123456789", PuppetPrefix: "heirloom_", BotUsername: "bot"},
		Database:   dbCfg,
		Encryption: config.Encryption{PickleKey: "test-pickle-key-0123456789"},
	}
	db, err := database.Open(cfg.Database, zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	require.NoError(t, db.Upgrade(context.Background()))
	mgr, err := NewManager(cfg, db, http.DefaultClient, zerolog.Nop())
	require.NoError(t, err)
	return mgr
}

// fullSession returns an inbound session of roomID with every field set to something not zero.
func fullSession(t *testing.T, roomID id.RoomID, i int) *crypto.InboundGroupSession {
	t.Helper()
	out, err := olm.NewOutboundGroupSession()
	require.NoError(t, err)
	internal, err := olm.NewInboundGroupSession([]byte(out.Key()))
	require.NoError(t, err)
	sender := newOlmSender(id.UserID(fmt.Sprintf("@sender%d:localhost", i)))
	shared := i%2 == 0
	return &crypto.InboundGroupSession{
		Internal:         internal,
		SigningKey:       sender.signing,
		SenderKey:        sender.curve,
		RoomID:           roomID,
		ForwardingChains: []string{string(newOlmSender("@a:localhost").curve), string(newOlmSender("@b:localhost").curve)},
		RatchetSafety:    crypto.RatchetSafety{NextIndex: uint(i + 3), MissedIndices: []uint{1, 2}, LostIndices: []uint{0}},
		ReceivedAt:       time.Now().UTC().Add(-time.Duration(i) * time.Minute).Truncate(time.Millisecond),
		MaxAge:           int64(i+1) * 3_600_000,
		MaxMessages:      100 + i,
		SharedHistory:    &shared,
		IsScheduled:      true,
		KeyBackupVersion: id.KeyBackupVersion(fmt.Sprintf("v%d", i+1)),
		KeySource:        id.KeySourceForward,
		SourceUser:       sender.user,
	}
}

// rowValues returns every column of the account's row for the session, but the account's own.
func rowValues(t *testing.T, p *Puppet, sessionID id.SessionID) map[string]any {
	t.Helper()
	rows, err := p.Store.DB.Query(context.Background(),
		`SELECT * FROM crypto_megolm_inbound_session WHERE account_id=$1 AND session_id=$2`, p.Store.AccountID, sessionID)
	require.NoError(t, err)
	defer rows.Close()
	cols, err := rows.Columns()
	require.NoError(t, err)
	require.True(t, rows.Next(), "no row for %s", sessionID)
	values := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range values {
		ptrs[i] = &values[i]
	}
	require.NoError(t, rows.Scan(ptrs...))
	out := make(map[string]any, len(cols))
	for i, col := range cols {
		if col == "account_id" {
			continue
		}
		if b, ok := values[i].([]byte); ok {
			values[i] = string(b)
		}
		if ts, ok := values[i].(time.Time); ok {
			values[i] = ts.UTC()
		}
		out[col] = values[i]
	}
	return out
}

// Sessions written by a SessionInserter read back through mautrix's GetGroupSession with every
// field as it went in, and their rows are column for column what mautrix's PutGroupSession writes
// for the same sessions: a column mautrix adds shows up here. In a transaction (as an import writes)
// and outside one, with statements of several sizes.
func TestSessionInserterRoundTripsThroughMautrix(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, dbCfg config.Database) {
		ctx := context.Background()
		mgr := testManagerOn(t, dbCfg)
		bulk := testPuppet(t, mgr, "bulk")
		single := testPuppet(t, mgr, "single")
		const roomID = id.RoomID("!roundtrip:localhost")
		like := fullSession(t, roomID, 3)
		requireNoZeroField(t, like)
		var sessions []*crypto.InboundGroupSession
		var rows []cryptostore.NewSessionRow
		for i := range 9 {
			own := fullSession(t, roomID, i)
			igs := *like // every column but the keys and the session are shared
			igs.Internal, igs.SenderKey, igs.SigningKey = own.Internal, own.SenderKey, own.SigningKey
			pickled, err := mgr.Pickles.Pickle(igs.Internal)
			require.NoError(t, err)
			sessions = append(sessions, &igs)
			rows = append(rows, cryptostore.NewSessionRow{SessionID: igs.ID(), SenderKey: igs.SenderKey, SigningKey: igs.SigningKey, Pickle: pickled})
		}
		require.NoError(t, mgr.db.DoBulkTxn(ctx, 0, func(ctx context.Context) error {
			si, err := bulk.NewSessionInserter(ctx, like)
			require.NoError(t, err)
			defer si.Close()
			for _, batch := range [][]cryptostore.NewSessionRow{rows[:3], rows[3:6], rows[6:7]} {
				held, err := si.Insert(ctx, batch)
				require.NoError(t, err)
				require.Empty(t, held)
			}
			return nil
		}))
		_, err := bulk.NewSessionInserter(ctx, like)
		require.Error(t, err, "outside a transaction a failed batch could not take the others with it")
		require.NoError(t, mgr.db.DoBulkTxn(ctx, 0, func(ctx context.Context) error { // a second import
			si, err := bulk.NewSessionInserter(ctx, like)
			require.NoError(t, err)
			defer si.Close()
			held, err := si.Insert(ctx, rows[7:])
			require.NoError(t, err)
			require.Empty(t, held)
			return nil
		}))
		for _, want := range sessions {
			require.NoError(t, single.Store.PutGroupSession(ctx, want))
			got, err := bulk.Store.GetGroupSession(ctx, roomID, want.ID())
			require.NoError(t, err)
			require.NotNil(t, got)
			requireSameSession(t, want, got)
			require.Equal(t, rowValues(t, single, want.ID()), rowValues(t, bulk, want.ID()),
				"the bulk row differs from mautrix's own for %s", want.ID())
		}
	})
}

// A SessionInserter never touches a row the puppet holds for a session ID in the room, a key or a
// withheld entry, and says which rows it did not write. A row of another room, or of another
// puppet, is no row of this one in this room: those sessions are written, and those rows stay.
func TestSessionInserterReportsHeldSessions(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, dbCfg config.Database) {
		ctx := context.Background()
		mgr := testManagerOn(t, dbCfg)
		p := testPuppet(t, mgr, "held")
		other := testPuppet(t, mgr, "other")
		const roomID, otherRoom = id.RoomID("!import:localhost"), id.RoomID("!other:localhost")
		like := fullSession(t, roomID, 1)
		var rows []cryptostore.NewSessionRow
		for i := range 7 {
			igs := fullSession(t, roomID, i)
			pickled, err := mgr.Pickles.Pickle(igs.Internal)
			require.NoError(t, err)
			rows = append(rows, cryptostore.NewSessionRow{SessionID: igs.ID(), SenderKey: igs.SenderKey, SigningKey: igs.SigningKey, Pickle: pickled})
		}
		// Row 1's ID is held as a key of the room, row 3's as a withheld entry of the room; row 5's
		// as another room's key and row 6's as another room's withheld entry; row 4's by another
		// puppet only.
		withheld := func(roomID id.RoomID, row cryptostore.NewSessionRow) {
			require.NoError(t, p.InsertBundleWithheld(ctx, []keybundle.Withheld{{Algorithm: id.AlgorithmMegolmV1,
				Code: keybundle.CodeHistoryNotShared, RoomID: roomID, SenderKey: row.SenderKey, SessionID: row.SessionID}},
				"@inviter:localhost", time.Now()))
		}
		require.NoError(t, p.Store.PutGroupSession(ctx, fullSessionFrom(t, mgr, rows[1], roomID)))
		withheld(roomID, rows[3])
		require.NoError(t, p.Store.PutGroupSession(ctx, fullSessionFrom(t, mgr, rows[5], otherRoom)))
		withheld(otherRoom, rows[6])
		require.NoError(t, other.Store.PutGroupSession(ctx, fullSessionFrom(t, mgr, rows[4], roomID)))
		before := map[int]map[string]any{
			1: roomRow(t, p, roomID, rows[1].SessionID), 3: roomRow(t, p, roomID, rows[3].SessionID),
			5: roomRow(t, p, otherRoom, rows[5].SessionID), 6: roomRow(t, p, otherRoom, rows[6].SessionID),
		}
		var held []int
		require.NoError(t, mgr.db.DoBulkTxn(ctx, 0, func(ctx context.Context) error {
			si, err := p.NewSessionInserter(ctx, like)
			require.NoError(t, err)
			defer si.Close()
			held, err = si.Insert(ctx, rows)
			return err
		}))
		require.Equal(t, []int{1, 3}, held)
		require.Equal(t, before[1], roomRow(t, p, roomID, rows[1].SessionID), "the room's key is untouched")
		require.Equal(t, before[3], roomRow(t, p, roomID, rows[3].SessionID), "the room's withheld entry is untouched")
		require.Equal(t, before[5], roomRow(t, p, otherRoom, rows[5].SessionID), "another room's key is untouched")
		require.Equal(t, before[6], roomRow(t, p, otherRoom, rows[6].SessionID), "another room's withheld entry is untouched")
		for _, i := range []int{0, 2, 4, 5, 6} {
			got, err := p.Store.GetGroupSession(ctx, roomID, rows[i].SessionID)
			require.NoError(t, err)
			require.NotNil(t, got, "row %d is written", i)
		}
	})
}

// sessionOfRow returns the goolm session a row was pickled from.
func sessionOfRow(t *testing.T, mgr *Manager, row cryptostore.NewSessionRow) olm.InboundGroupSession {
	t.Helper()
	s, err := mgr.Pickles.Unpickle(row.Pickle)
	require.NoError(t, err)
	return s
}

// fullSessionFrom is a full session of roomID around a row's goolm session.
func fullSessionFrom(t *testing.T, mgr *Manager, row cryptostore.NewSessionRow, roomID id.RoomID) *crypto.InboundGroupSession {
	t.Helper()
	igs := fullSession(t, roomID, 2)
	igs.Internal = sessionOfRow(t, mgr, row)
	return igs
}

// requireNoZeroField fails if a field of the session is zero: a field a later mautrix adds must be
// set here, written by InsertNewSessions and compared by requireSameSession.
func requireNoZeroField(t *testing.T, igs *crypto.InboundGroupSession) {
	t.Helper()
	v := reflect.ValueOf(igs).Elem()
	for i := range v.NumField() {
		if f := v.Type().Field(i); f.IsExported() {
			require.False(t, v.Field(i).IsZero(), "field %s is zero: set it, write it in InsertNewSessions and compare it", f.Name)
		}
	}
}

// requireSameSession compares every exported field of two inbound sessions: the ratchet by its
// ID, first known index and export, the rest by value.
func requireSameSession(t *testing.T, want, got *crypto.InboundGroupSession) {
	t.Helper()
	wv, gv := reflect.ValueOf(want).Elem(), reflect.ValueOf(got).Elem()
	for i := range wv.NumField() {
		f := wv.Type().Field(i)
		switch {
		case !f.IsExported():
		case f.Name == "Internal":
			require.Equal(t, want.Internal.ID(), got.Internal.ID())
			require.Equal(t, want.Internal.FirstKnownIndex(), got.Internal.FirstKnownIndex())
			we, err := want.Internal.Export(want.Internal.FirstKnownIndex())
			require.NoError(t, err)
			ge, err := got.Internal.Export(got.Internal.FirstKnownIndex())
			require.NoError(t, err)
			require.Equal(t, string(we), string(ge))
		case f.Name == "ReceivedAt":
			require.True(t, want.ReceivedAt.Equal(got.ReceivedAt), "received_at: want %s, got %s", want.ReceivedAt, got.ReceivedAt)
		default:
			require.Equal(t, wv.Field(i).Interface(), gv.Field(i).Interface(), "field %s", f.Name)
		}
	}
}

// Withheld entries written by InsertBundleWithheld read back through mautrix as the withheld
// content they were, and eachWithheldEntry finds exactly those (as from a bundle), and exactly the
// sessions without shared history.
func TestInsertBundleWithheldRoundTripsThroughMautrix(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, dbCfg config.Database) {
		ctx := context.Background()
		mgr := testManagerOn(t, dbCfg)
		p := testPuppet(t, mgr, "withheld")
		const roomID = id.RoomID("!withheld:localhost")
		var entries []keybundle.Withheld
		for i := range 5 {
			s := newOlmSender("@x:localhost")
			entries = append(entries, keybundle.Withheld{
				Algorithm: id.AlgorithmMegolmV1, Code: keybundle.CodeHistoryNotShared, Reason: fmt.Sprintf("reason %d", i),
				RoomID: roomID, SenderKey: s.curve, SessionID: id.SessionID(s.signing),
			})
		}
		require.NoError(t, p.InsertBundleWithheld(ctx, entries, "@inviter:localhost", time.Now()))
		// One that arrived over to-device, through mautrix: never passed on.
		stranger := newOlmSender("@y:localhost")
		require.NoError(t, p.Store.PutWithheldGroupSession(ctx, event.RoomKeyWithheldEventContent{
			RoomID: roomID, Algorithm: id.AlgorithmMegolmV1, SessionID: id.SessionID(stranger.signing),
			SenderKey: stranger.curve, Code: keybundle.CodeHistoryNotShared, Reason: "to-device",
		}))
		for _, w := range entries {
			igs, err := p.Store.GetGroupSession(ctx, roomID, w.SessionID)
			require.Nil(t, igs)
			var withheld *event.RoomKeyWithheldEventContent
			require.ErrorAs(t, err, &withheld)
			require.Equal(t, event.RoomKeyWithheldEventContent{
				RoomID: w.RoomID, Algorithm: w.Algorithm, SessionID: w.SessionID, SenderKey: w.SenderKey,
				Code: event.RoomKeyWithheldCode(w.Code), Reason: w.Reason,
			}, *withheld)
		}
		// Sessions of the room with and without shared history, through mautrix.
		var unsharedIDs []id.SessionID
		for i := range 4 {
			igs := fullSession(t, roomID, i) // shared for even i
			if i == 3 {
				igs.SharedHistory = nil // not recorded: not shared
			}
			require.NoError(t, p.Store.PutGroupSession(ctx, igs))
			if i%2 != 0 {
				unsharedIDs = append(unsharedIDs, igs.ID())
			}
		}
		var found []keybundle.Withheld
		var unshared []id.SessionID
		require.NoError(t, p.eachWithheldEntry(ctx, roomID, func(h keybundle.Held) error {
			if h.HasKey {
				require.False(t, h.SharedHistory)
				unshared = append(unshared, h.SessionID)
				return nil
			}
			require.True(t, h.FromBundle, "a withheld message that came over to-device is never read for a bundle")
			found = append(found, keybundle.Withheld{Algorithm: id.AlgorithmMegolmV1, Code: h.Code, Reason: h.Reason,
				RoomID: h.RoomID, SenderKey: h.SenderKey, SessionID: h.SessionID})
			return nil
		}))
		require.ElementsMatch(t, entries, found)
		require.ElementsMatch(t, unsharedIDs, unshared)
	})
}
