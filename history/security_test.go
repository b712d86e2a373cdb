package history

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

const (
	validCurve = "Cw2NGqvfQZrIABBEv7U7xfABpr83fQhGti2MT1fkhSQ"
	validEd    = "q0mzeutl73NyVTCd74RDTrVbQ9M9f0C00f8B387qR2Y"
)

// megolmKey is a fresh session: its signed key as its creator shares it, and exports of it.
type megolmKey struct {
	out  olm.OutboundGroupSession
	key0 string // the session key at index 0
}

func newMegolmKey(t *testing.T) *megolmKey {
	t.Helper()
	out, err := olm.NewOutboundGroupSession()
	require.NoError(t, err)
	return &megolmKey{out: out, key0: out.Key()}
}

func (m *megolmKey) export(t *testing.T, index uint32) string {
	t.Helper()
	in, err := olm.NewInboundGroupSession([]byte(m.key0))
	require.NoError(t, err)
	exported, err := in.Export(index)
	require.NoError(t, err)
	return string(exported)
}

// entry is the bundle's room_keys entry for the session, as exported at index.
func (m *megolmKey) entry(t *testing.T, roomID id.RoomID, index uint32) keybundle.RoomKey {
	t.Helper()
	return keybundle.RoomKey{Algorithm: id.AlgorithmMegolmV1, RoomID: roomID, SenderKey: validCurve, SessionID: m.out.ID(),
		SessionKey: m.export(t, index), SenderClaimedKeys: keybundle.SenderClaimedKeys{Ed25519: validEd}}
}

// holdDirect stores the session for the puppet as an m.room_key from its creator would.
func holdDirect(t *testing.T, p *e2ee.Puppet, m *megolmKey, roomID id.RoomID, shared bool) {
	t.Helper()
	igs, err := crypto.NewInboundGroupSession(validCurve, validEd, roomID, m.out.Key(), time.Hour, 100, &shared, false)
	require.NoError(t, err)
	require.NoError(t, p.Mach.StoreGroupSession(context.Background(), igs))
}

func bundleOf(t *testing.T, keys []keybundle.RoomKey, withheld []keybundle.Withheld) []byte {
	t.Helper()
	if keys == nil {
		keys = []keybundle.RoomKey{}
	}
	if withheld == nil {
		withheld = []keybundle.Withheld{}
	}
	data, err := json.Marshal(map[string]any{"room_keys": keys, "withheld": withheld})
	require.NoError(t, err)
	return data
}

func importPlain(t *testing.T, env *benchEnv, p *e2ee.Puppet, plaintext []byte) (importResult, error) {
	t.Helper()
	rb := storedBundle(t, env, p.UserID, "@inviter:localhost")
	return env.svc.importBundle(context.Background(), p, rb, io.NopCloser(bytes.NewReader(plaintext)), int64(len(plaintext)))
}

// rowOf is a stored row of a session.
type rowOf struct {
	Room       id.RoomID
	Pickle     []byte
	Shared     *bool
	KeySource  string
	SourceUser string
}

// sessionRow is the puppet's row for a session ID in benchRoom (nil if none).
func sessionRow(t *testing.T, env *benchEnv, p *e2ee.Puppet, sessionID id.SessionID) *rowOf {
	t.Helper()
	return roomRowOf(t, env, p, benchRoom, sessionID)
}

// A bundle for one room naming a session the puppet holds for another (its ID is public): the
// other room's row is untouched, forged ratchet or genuine. The bundle's copy is its own room's row.
func TestBundleCannotOverwriteAnotherRoomsSession(t *testing.T) {
	for _, tc := range []struct {
		name  string
		build func(t *testing.T, m *megolmKey) keybundle.RoomKey
	}{
		{"forged ratchet", func(t *testing.T, m *megolmKey) keybundle.RoomKey {
			return forgedEntry(t, m, benchRoom)
		}},
		{"genuine key claimed for another room", func(t *testing.T, m *megolmKey) keybundle.RoomKey {
			return m.entry(t, benchRoom, 0)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newBenchEnv(t)
			p := env.puppet(t, "victim")
			m := newMegolmKey(t)
			holdDirect(t, p, m, otherBenchRoom, false)
			before := roomRowOf(t, env, p, otherBenchRoom, m.out.ID())
			require.NotNil(t, before)

			genuine := newMegolmKey(t)
			res, err := importPlain(t, env, p, bundleOf(t, []keybundle.RoomKey{tc.build(t, m), genuine.entry(t, benchRoom, 0)}, nil))
			require.NoError(t, err)
			require.Equal(t, importResult{imported: 2}, res, "both are keys of the bundle's room")
			require.Equal(t, before, roomRowOf(t, env, p, otherBenchRoom, m.out.ID()), "the other room's row is unchanged")
			held, err := p.Store.GetGroupSession(context.Background(), otherBenchRoom, m.out.ID())
			require.NoError(t, err)
			require.NotNil(t, held, "the other room's session still decrypts")
			exported, err := held.Internal.Export(0)
			require.NoError(t, err)
			require.Equal(t, m.export(t, 0), string(exported), "with its own ratchet")
		})
	}
}

// A bundle carries only keys of its own room: an entry naming another room is skipped and stored
// under no room at all (the importer labels what it stores with the bundle's room, so a key let
// through would be held as the bundle's room's), and it is counted as skipped.
func TestBundleKeyOfAnotherRoomIsSkipped(t *testing.T) {
	env := newBenchEnv(t)
	p := env.puppet(t, "dst")
	const otherRoom id.RoomID = "!other:localhost"
	genuine, smuggled := newMegolmKey(t), newMegolmKey(t)
	otherWithheld := keybundle.Withheld{Algorithm: id.AlgorithmMegolmV1, Code: keybundle.CodeHistoryNotShared, RoomID: otherRoom,
		SenderKey: validCurve, SessionID: newMegolmKey(t).out.ID()}
	res, err := importPlain(t, env, p, bundleOf(t, []keybundle.RoomKey{genuine.entry(t, benchRoom, 0), smuggled.entry(t, otherRoom, 0)},
		[]keybundle.Withheld{otherWithheld}))
	require.NoError(t, err)
	require.Equal(t, importResult{imported: 1, withheld: 0, skipped: 2}, res)
	require.NotNil(t, sessionRow(t, env, p, genuine.out.ID()), "the bundle's own room key is imported")
	require.Nil(t, sessionRow(t, env, p, smuggled.out.ID()), "the other room's key is held in no room")
	require.Nil(t, sessionRow(t, env, p, otherWithheld.SessionID), "nor is the other room's withheld entry")
}

// A bogus entry (a key that is not the named session) must not make heirloom drop a genuine entry
// for the same session ID as a "duplicate": only entries that passed validation count.
func TestBogusEntryDoesNotShadowTheGenuineOne(t *testing.T) {
	env := newBenchEnv(t)
	p := env.puppet(t, "dst")
	m, other := newMegolmKey(t), newMegolmKey(t)
	bogus := m.entry(t, benchRoom, 0)
	bogus.SessionKey = other.export(t, 0) // another session's key under m's ID
	res, err := importPlain(t, env, p, bundleOf(t, []keybundle.RoomKey{bogus, m.entry(t, benchRoom, 0), m.entry(t, benchRoom, 0)}, nil))
	require.NoError(t, err)
	require.Equal(t, 1, res.imported)
	require.Equal(t, 2, res.skipped, "the bogus entry and the true duplicate")
	held, err := p.Store.GetGroupSession(context.Background(), benchRoom, m.out.ID())
	require.NoError(t, err)
	require.NotNil(t, held, "the genuine key is held")
}

// Keys whose sender key or claimed signing key are not 32-byte keys are skipped, and the rest of
// the bundle imports, on every database: PostgreSQL's CHAR(43) columns would otherwise fail the
// whole statement where SQLite stores anything.
func TestMalformedKeysAreSkippedOnEveryBackend(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, cfg config.Database) {
		env := newBenchEnvOn(t, cfg)
		p := env.puppet(t, "dst")
		good := newMegolmKey(t)
		longSender := newMegolmKey(t).entry(t, benchRoom, 0)
		longSender.SenderKey = id.SenderKey(strings.Repeat("A", 100))
		badEd := newMegolmKey(t).entry(t, benchRoom, 0)
		badEd.SenderClaimedKeys.Ed25519 = "not base64!"
		longWithheld := keybundle.Withheld{Algorithm: id.AlgorithmMegolmV1, Code: keybundle.CodeHistoryNotShared, RoomID: benchRoom,
			SenderKey: validCurve, SessionID: id.SessionID(strings.Repeat("B", 80))}
		okWithheld := keybundle.Withheld{Algorithm: id.AlgorithmMegolmV1, Code: keybundle.CodeHistoryNotShared, RoomID: benchRoom,
			SenderKey: validCurve, SessionID: newMegolmKey(t).out.ID()}
		res, err := importPlain(t, env, p, bundleOf(t, []keybundle.RoomKey{longSender, good.entry(t, benchRoom, 0), badEd},
			[]keybundle.Withheld{longWithheld, okWithheld}))
		require.NoError(t, err)
		require.Equal(t, importResult{imported: 1, withheld: 1, skipped: 3}, res)
		require.NotNil(t, sessionRow(t, env, p, good.out.ID()))
	})
}

// A bundle that turns out malformed after some keys were written stores nothing, and its report
// says nothing was stored.
func TestFailedBundleReportsNothingStored(t *testing.T) {
	env := newBenchEnv(t)
	p := pointPuppetAt(t, env, "http://127.0.0.1:1")
	keys := make([]keybundle.RoomKey, 0, 2)
	for range 2 {
		keys = append(keys, newMegolmKey(t).entry(t, benchRoom, 0))
	}
	good := bundleOf(t, keys, nil)
	broken := append(bytes.TrimSuffix(good, []byte("}")), []byte(`,"withheld":"not a list"}`)...)
	broken = bytes.Replace(broken, []byte(`,"withheld":[]`), nil, 1)
	rb, body := sealedFixture(t, env, broken)
	srv, _ := mediaServer(t, body, 200, 0)
	p.Client.HomeserverURL = mustURL(t, srv.URL)
	env.svc.downloadAndImport(context.Background(), p, rb)
	require.Equal(t, database.ReceivedFailed, rb.State, rb.Error)
	require.Zero(t, rb.Imported, "nothing was imported: the report must say so")
	require.Zero(t, rb.Withheld)
	for _, k := range keys {
		require.Nil(t, sessionRow(t, env, p, k.SessionID), "the transaction was rolled back")
	}
}

// The bundle's final state is written in the import's transaction: if it cannot be written, no key
// of the bundle stays either, so a restart never finds keys stored and the bundle still pending.
func TestImportAndItsStateCommitTogether(t *testing.T) {
	env := newBenchEnv(t)
	p := env.puppet(t, "dst")
	m := newMegolmKey(t)
	_, err := env.db.Raw.Exec(context.Background(), `CREATE TRIGGER fail_bundle_state BEFORE UPDATE ON bundle_received
		BEGIN SELECT RAISE(ABORT, 'disk full'); END`)
	require.NoError(t, err)
	_, err = importPlain(t, env, p, bundleOf(t, []keybundle.RoomKey{m.entry(t, benchRoom, 0)}, nil))
	require.ErrorContains(t, err, "disk full")
	require.Nil(t, sessionRow(t, env, p, m.out.ID()), "no key without its bundle's state")
}

// Withheld entries are passed on in the puppet's own bundles only if they came from an accepted
// bundle: a plaintext m.room_key.withheld from anyone never is, whatever its code.
func TestOnlyBundleWithheldEntriesArePassedOn(t *testing.T) {
	env := newBenchEnv(t)
	p := env.puppet(t, "relay")
	ctx := context.Background()
	fromToDevice := newMegolmKey(t).out.ID()
	require.NoError(t, p.Store.PutWithheldGroupSession(ctx, event.RoomKeyWithheldEventContent{RoomID: benchRoom,
		Algorithm: id.AlgorithmMegolmV1, SessionID: fromToDevice, SenderKey: validCurve, Code: keybundle.CodeHistoryNotShared}))
	fromBundle := keybundle.Withheld{Algorithm: id.AlgorithmMegolmV1, Code: keybundle.CodeHistoryNotShared, RoomID: benchRoom,
		SenderKey: validCurve, SessionID: newMegolmKey(t).out.ID(), Reason: "not shared"}
	_, err := importPlain(t, env, p, bundleOf(t, nil, []keybundle.Withheld{fromBundle}))
	require.NoError(t, err)

	var out bytes.Buffer
	counts, err := env.svc.writeBundle(ctx, p, benchRoom, &out)
	require.NoError(t, err)
	var wire struct {
		Withheld []keybundle.Withheld `json:"withheld"`
	}
	require.NoError(t, json.Unmarshal(out.Bytes(), &wire))
	require.Equal(t, 1, counts.Withheld)
	require.Len(t, wire.Withheld, 1)
	require.Equal(t, fromBundle.SessionID, wire.Withheld[0].SessionID)
}

// A bundle withholds a session only as history not shared (m.history_not_shared, either name):
// an entry with any other code (m.unverified, m.blacklisted: what only the session's own device
// could say of its own sending) is skipped and counted, never stored nor passed on.
func TestBundleWithholdsOnlyAsHistoryNotShared(t *testing.T) {
	env := newBenchEnv(t)
	p := env.puppet(t, "invitee")
	entry := func(code string) keybundle.Withheld {
		return keybundle.Withheld{Algorithm: id.AlgorithmMegolmV1, Code: code, RoomID: benchRoom, SenderKey: validCurve,
			SessionID: newMegolmKey(t).out.ID(), Reason: "the inviter's word"}
	}
	entries := []keybundle.Withheld{entry(keybundle.CodeHistoryNotShared), entry(keybundle.CodeHistoryNotSharedUnstable),
		entry(string(event.RoomKeyWithheldUnverified)), entry(string(event.RoomKeyWithheldBlacklisted))}
	res, err := importPlain(t, env, p, bundleOf(t, nil, entries))
	require.NoError(t, err)
	require.Equal(t, importResult{withheld: 2, skipped: 2}, res)
	for i, e := range entries {
		held, err := p.HeldSessions(context.Background(), benchRoom, []id.SessionID{e.SessionID})
		require.NoError(t, err)
		_, stored := held[e.SessionID]
		require.Equal(t, i < 2, stored, "entry with code %s", e.Code)
	}
}

// An honest earlier-index copy from a bundle merges into a key received directly: the puppet can
// read further back, and those messages name the inviter (provenance of the copy whose index the
// session serves). A worse copy replaces nothing, either way round.
func TestHonestMergeKeepsTheBetterSessionBothWays(t *testing.T) {
	env := newBenchEnv(t)
	p := env.puppet(t, "dst")
	ctx := context.Background()
	m := newMegolmKey(t)
	for range 5 {
		_, err := m.out.Encrypt([]byte("x"))
		require.NoError(t, err)
	}
	holdDirect(t, p, m, benchRoom, true) // from index 5

	res, err := importPlain(t, env, p, bundleOf(t, []keybundle.RoomKey{m.entry(t, benchRoom, 0)}, nil))
	require.NoError(t, err)
	require.Equal(t, 1, res.imported)
	held, err := p.Store.GetGroupSession(ctx, benchRoom, m.out.ID())
	require.NoError(t, err)
	require.EqualValues(t, 0, held.Internal.FirstKnownIndex(), "the earlier copy is merged")
	require.Equal(t, id.KeySourceForward, held.KeySource, "messages 0-4 rest on the inviter's word")
	require.Equal(t, id.UserID("@inviter:localhost"), held.SourceUser)

	// A later-index copy (from another bundle) does not replace the better one.
	_, err = importPlain(t, env, p, bundleOf(t, []keybundle.RoomKey{m.entry(t, benchRoom, 3)}, nil))
	require.NoError(t, err)
	held, err = p.Store.GetGroupSession(ctx, benchRoom, m.out.ID())
	require.NoError(t, err)
	require.EqualValues(t, 0, held.Internal.FirstKnownIndex())

	// Nor does a direct copy (an m.room_key) at a later index: the imported copy keeps its index
	// and its provenance.
	stored, reason, err := p.StoreSession(ctx, directCopy(t, m, benchRoom, m.out.Key()))
	require.NoError(t, err)
	require.False(t, stored, "a worse direct copy replaces nothing")
	require.Equal(t, e2ee.ReasonHeldNoBetter, reason)
	held, err = p.Store.GetGroupSession(ctx, benchRoom, m.out.ID())
	require.NoError(t, err)
	require.EqualValues(t, 0, held.Internal.FirstKnownIndex())
	require.Equal(t, id.UserID("@inviter:localhost"), held.SourceUser, "messages 0-4 still rest on the inviter's word")

	// The other way round: a direct copy at an earlier index than an imported one wins its index
	// and its provenance (e2ee.MergeSessions' table).
	later := newMegolmKey(t)
	_, err = importPlain(t, env, p, bundleOf(t, []keybundle.RoomKey{later.entry(t, benchRoom, 3)}, nil))
	require.NoError(t, err)
	held, err = p.Store.GetGroupSession(ctx, benchRoom, later.out.ID())
	require.NoError(t, err)
	require.EqualValues(t, 3, held.Internal.FirstKnownIndex())
	stored, _, err = p.StoreSession(ctx, directCopy(t, later, benchRoom, later.key0))
	require.NoError(t, err)
	require.True(t, stored, "the earlier direct copy is merged")
	held, err = p.Store.GetGroupSession(ctx, benchRoom, later.out.ID())
	require.NoError(t, err)
	require.EqualValues(t, 0, held.Internal.FirstKnownIndex(), "the direct copy's earlier index wins")
	require.Equal(t, id.KeySourceDirect, held.KeySource, "and so does its provenance")
	require.Empty(t, held.SourceUser, "messages from index 0 rest on no inviter's word")
}

// directCopy is the session as an m.room_key from its creator brings it: the session key given
// (its creator's signed key at some index), received directly.
func directCopy(t *testing.T, m *megolmKey, roomID id.RoomID, sessionKey string) *crypto.InboundGroupSession {
	t.Helper()
	shared := true
	igs, err := crypto.NewInboundGroupSession(validCurve, validEd, roomID, sessionKey, time.Hour, 100, &shared, false)
	require.NoError(t, err)
	require.Equal(t, m.out.ID(), igs.ID())
	return igs
}

// A copy whose shared_history is false keeps it false: a bundle copy cannot make it shareable.
func TestBundleCannotMakeASessionShareable(t *testing.T) {
	env := newBenchEnv(t)
	p := env.puppet(t, "dst")
	m := newMegolmKey(t)
	for range 2 {
		_, err := m.out.Encrypt([]byte("x"))
		require.NoError(t, err)
	}
	holdDirect(t, p, m, benchRoom, false)
	_, err := importPlain(t, env, p, bundleOf(t, []keybundle.RoomKey{m.entry(t, benchRoom, 0)}, nil))
	require.NoError(t, err)
	row := sessionRow(t, env, p, m.out.ID())
	require.NotNil(t, row.Shared)
	require.False(t, *row.Shared, "not shareable, as its sender said")
	var out bytes.Buffer
	counts, err := env.svc.writeBundle(context.Background(), p, benchRoom, &out)
	require.NoError(t, err)
	require.Equal(t, keybundle.Counts{Withheld: 1}, counts, "the puppet passes it on as withheld, not as a key")
}

// sealedFixture encrypts any plaintext as a bundle and records it as received from alice.
func sealedFixture(t *testing.T, env *benchEnv, plaintext []byte) (*database.ReceivedBundle, []byte) {
	t.Helper()
	sealed, err := keybundle.Seal(env.dir, 1<<20, func(w io.Writer) (keybundle.Counts, error) {
		_, err := w.Write(plaintext)
		return keybundle.Counts{Sessions: 1}, err
	})
	require.NoError(t, err)
	defer sealed.Close()
	body, err := io.ReadAll(sealed.File)
	require.NoError(t, err)
	sealed.Info.URL = "mxc://localhost/bundle"
	rb := &database.ReceivedBundle{Puppet: "@heirloom_dst:localhost", RoomID: benchRoom, Sender: "@alice:localhost",
		SenderDevice: "ALICEDEV", SenderKey: "alicekey", State: database.ReceivedPending}
	rb.FileInfo, err = env.mgr.Sealer.SealJSON(receivedOwner(rb), sealed.Info)
	require.NoError(t, err)
	require.NoError(t, env.db.PutReceivedBundle(context.Background(), rb))
	return rb, body
}

func mustURL(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := mautrix.ParseAndNormalizeBaseURL(raw)
	require.NoError(t, err)
	return u
}

// A puppet whose own device lacks its self-signing signature shares nothing: rust-sdk would refuse
// its bundle, and the check must look at the stored signature (the machine's own device always
// resolves as verified).
func TestUnsignedPuppetDeviceSharesNothing(t *testing.T) {
	env := newBenchEnv(t)
	p := env.puppet(t, "inviter")
	ctx := context.Background()
	for _, evt := range []*event.Event{
		{Type: event.StateEncryption, Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}},
		{Type: event.StateHistoryVisibility, Content: event.Content{Parsed: &event.HistoryVisibilityEventContent{HistoryVisibility: event.HistoryVisibilityShared}}},
	} {
		empty := ""
		evt.RoomID, evt.StateKey = benchRoom, &empty
		mautrix.UpdateStateStore(ctx, env.db.StateStore, evt)
	}
	keys, err := p.Mach.GenerateCrossSigningKeys()
	require.NoError(t, err)
	p.Mach.CrossSigningKeys = keys
	own := p.Mach.OwnIdentity()
	require.NoError(t, p.Store.PutSignature(ctx, p.UserID, own.SigningKey, p.UserID, keys.SelfSigningKey.PublicKey(), "signature"))
	signed, err := p.OwnDeviceSigned(ctx)
	require.NoError(t, err)
	require.True(t, signed)

	_, err = env.db.Raw.Exec(ctx, `DELETE FROM crypto_cross_signing_signatures WHERE signed_user_id=$1`, p.UserID)
	require.NoError(t, err)
	b := &database.SentBundle{BundleID: "b1", Puppet: p.UserID, RoomID: benchRoom, Invitee: "@bob:localhost", State: database.SentBuilding}
	require.NoError(t, env.svc.buildAndUpload(ctx, p, b))
	require.Equal(t, database.SentSkipped, b.State)
	require.Equal(t, ReasonPuppetUnsigned, b.Reason)
}
