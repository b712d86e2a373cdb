package e2ee

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
)

// testManager is a manager over a real SQLite database, with a homeserver nobody answers at.
func testManager(t testing.TB) (*Manager, *database.Database) {
	t.Helper()
	mgr := testManagerOn(t, testdb.SQLite(t))
	return mgr, mgr.db
}

func testPuppet(t testing.TB, mgr *Manager, name string) *Puppet {
	t.Helper()
	p, err := mgr.LocalPuppet(context.Background(), id.UserID("@heirloom_"+name+":localhost"), id.DeviceID("DEV"+name))
	require.NoError(t, err)
	p.Client.DefaultHTTPRetries = 0 // nobody answers at the test homeserver
	return p
}

// joined records in the state store that the users are joined to the room.
func joined(t testing.TB, db *database.Database, roomID id.RoomID, users ...id.UserID) {
	t.Helper()
	for _, u := range users {
		require.NoError(t, db.StateStore.SetMembership(context.Background(), roomID, u, event.MembershipJoin))
	}
}

// olmSender is a device that sends m.room_key over Olm: its keys are what Olm authenticates.
type olmSender struct {
	user    id.UserID
	curve   id.SenderKey
	signing id.Ed25519
	// unknown is true for a device heirloom does not know and whose Olm payload carries no
	// sender_device_keys: mautrix then names no device for it.
	unknown bool
}

// withClaim is the sender claiming signing as its Ed25519 key in the Olm payload, from a device
// heirloom knows (mautrix checked the claim against it) or not.
func (s olmSender) withClaim(signing id.Ed25519, known bool) olmSender {
	s.signing, s.unknown = signing, !known
	return s
}

// decrypted is the Olm envelope mautrix hands over for a message from the sender's device.
func (s olmSender) decrypted() *crypto.DecryptedOlmEvent {
	evt := &crypto.DecryptedOlmEvent{Sender: s.user, SenderKey: s.curve, Keys: crypto.OlmEventKeys{Ed25519: s.signing}}
	if !s.unknown {
		evt.SenderDevice = &id.Device{UserID: s.user, DeviceID: "SENDERDEV", IdentityKey: id.IdentityKey(s.curve), SigningKey: s.signing}
	}
	return evt
}

// known puts the sender's device into p's device store, as a device list fetch would.
func (s olmSender) known(t *testing.T, p *Puppet) {
	t.Helper()
	require.NoError(t, p.Store.PutDevice(context.Background(), s.user, &id.Device{UserID: s.user, DeviceID: "SENDERDEV",
		IdentityKey: id.IdentityKey(s.curve), SigningKey: s.signing}))
}

func newOlmSender(user id.UserID) olmSender {
	curve := make([]byte, 32)
	_, _ = rand.Read(curve)
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	return olmSender{user: user, curve: id.SenderKey(base64.RawStdEncoding.EncodeToString(curve)),
		signing: id.Ed25519(base64.RawStdEncoding.EncodeToString(pub))}
}

// sendRoomKey hands p what arrives when s's device sends an m.room_key for the session over Olm.
func (s olmSender) sendRoomKey(ctx context.Context, p *Puppet, roomID id.RoomID, sessionID id.SessionID, sessionKey string, shared bool) {
	evt := s.decrypted()
	content := &RoomKeyContent{RoomKeyEventContent: event.RoomKeyEventContent{
		Algorithm: id.AlgorithmMegolmV1, RoomID: roomID, SessionID: sessionID, SessionKey: sessionKey,
	}, HistoryShared: shared}
	p.receiveRoomKey(ctx, evt, content)
}

// sessionRow is what the store holds for a session ID, whatever room.
type sessionRow struct {
	room      id.RoomID
	senderKey id.SenderKey
	shared    bool
	index     uint32
}

func heldRow(t *testing.T, p *Puppet, roomID id.RoomID, sessionID id.SessionID) *sessionRow {
	t.Helper()
	igs, err := p.Store.GetGroupSession(context.Background(), roomID, sessionID)
	require.NoError(t, err)
	if igs == nil {
		return nil
	}
	return &sessionRow{room: igs.RoomID, senderKey: igs.SenderKey, shared: igs.SharedHistory != nil && *igs.SharedHistory,
		index: igs.Internal.FirstKnownIndex()}
}

// A genuinely signed m.room_key, replayed by a member of another room under that room's ID, must
// not move or overwrite the puppet's session of the room it belongs to: it is held apart.
func TestRoomKeyReplayedUnderAnotherRoomChangesNothing(t *testing.T) {
	mgr, db := testManager(t)
	p := testPuppet(t, mgr, "victim")
	ctx := context.Background()
	const realRoom, otherRoom id.RoomID = "!real:localhost", "!other:localhost"
	out, err := olm.NewOutboundGroupSession()
	require.NoError(t, err)
	aliceDev, malloryDev := newOlmSender("@alice:localhost"), newOlmSender("@mallory:localhost")
	joined(t, db, realRoom, p.UserID, aliceDev.user, malloryDev.user)
	joined(t, db, otherRoom, p.UserID, aliceDev.user, malloryDev.user)

	aliceDev.sendRoomKey(ctx, p, realRoom, out.ID(), out.Key(), true)
	before := heldRow(t, p, realRoom, out.ID())
	require.NotNil(t, before, "alice's key is stored")

	for _, replay := range []struct {
		name   string
		sender olmSender
		room   id.RoomID
		shared bool
		// wantShared is the real room's flag afterwards: a "not shared" is heard from anyone.
		wantShared bool
	}{
		{"by another member, under another room", malloryDev, otherRoom, true, true},
		{"by the creator itself, under another room", aliceDev, otherRoom, true, true},
		{"by another member, in the same room, claiming shared", malloryDev, realRoom, true, true},
		{"by another member, in the same room, claiming not shared", malloryDev, realRoom, false, false},
	} {
		t.Run(replay.name, func(t *testing.T) {
			replay.sender.sendRoomKey(ctx, p, replay.room, out.ID(), out.Key(), replay.shared)
			want := *before
			want.shared = replay.wantShared
			require.Equal(t, &want, heldRow(t, p, realRoom, out.ID()), "the real room's row keeps its sender and room")
			if replay.room != realRoom {
				require.NotNil(t, heldRow(t, p, replay.room, out.ID()), "the replay is held under the room it names: another row")
			}
		})
	}
}

// A bundle key (StoreSession, as the bundle import uses it) claiming another room is held under
// that room, whether its ratchet is genuine or forged: the real room's row is untouched.
func TestStoreSessionNeverTouchesAnotherRoomsSession(t *testing.T) {
	mgr, db := testManager(t)
	p := testPuppet(t, mgr, "victim")
	ctx := context.Background()
	out, err := olm.NewOutboundGroupSession()
	require.NoError(t, err)
	alice := newOlmSender("@alice:localhost")
	joined(t, db, "!real:localhost", p.UserID, alice.user)
	alice.sendRoomKey(ctx, p, "!real:localhost", out.ID(), out.Key(), false)
	before := roomRow(t, p, "!real:localhost", out.ID())

	for _, ratchet := range []olm.InboundGroupSession{mustSession(t, out.Key()), forgedRatchet(t, out)} {
		exported, err := ratchet.Export(0)
		require.NoError(t, err)
		internal, err := olm.InboundGroupSessionImport(exported)
		require.NoError(t, err)
		shared := true
		claim := &crypto.InboundGroupSession{Internal: internal, SenderKey: alice.curve, SigningKey: alice.signing,
			RoomID: "!bundle:localhost", SharedHistory: &shared, KeySource: id.KeySourceForward, SourceUser: "@inviter:localhost"}
		_, _, err = p.StoreSession(ctx, claim)
		require.NoError(t, err)
		require.Equal(t, before, roomRow(t, p, "!real:localhost", out.ID()))
		require.NotNil(t, heldRow(t, p, "!bundle:localhost", out.ID()), "the bundle's room holds its own copy")
	}
}

func mustSession(t *testing.T, key string) olm.InboundGroupSession {
	t.Helper()
	igs, err := olm.NewInboundGroupSession([]byte(key))
	require.NoError(t, err)
	return igs
}

// A withheld entry (no key) gives way to a key of its room, and one of another room is no row of
// the key's room at all: otherwise whoever names a session ID first could keep its key out.
func TestWithheldEntryNeverBlocksAKey(t *testing.T) {
	for _, withheldRoom := range []id.RoomID{"!real:localhost", "!elsewhere:localhost"} {
		t.Run(string(withheldRoom), func(t *testing.T) {
			mgr, db := testManager(t)
			p := testPuppet(t, mgr, "victim")
			ctx := context.Background()
			joined(t, db, "!real:localhost", p.UserID, "@alice:localhost")
			out, err := olm.NewOutboundGroupSession()
			require.NoError(t, err)
			require.NoError(t, p.Store.PutWithheldGroupSession(ctx, event.RoomKeyWithheldEventContent{
				RoomID: withheldRoom, Algorithm: id.AlgorithmMegolmV1, SessionID: out.ID(), SenderKey: "x", Code: "m.unavailable",
			}))
			alice := newOlmSender("@alice:localhost")
			alice.sendRoomKey(ctx, p, "!real:localhost", out.ID(), out.Key(), true)
			row := heldRow(t, p, "!real:localhost", out.ID())
			require.NotNil(t, row)
			require.Equal(t, alice.curve, row.senderKey)
		})
	}
}

// Plaintext m.room_key.withheld messages are unauthenticated: only a member of a room the puppet is
// in is heard, and never with the history-not-shared code, which belongs to bundles.
func TestWithheldMessagesFromStrangersAreIgnored(t *testing.T) {
	mgr, db := testManager(t)
	p := testPuppet(t, mgr, "victim")
	ctx := context.Background()
	const room id.RoomID = "!shared:localhost"
	require.NoError(t, db.StateStore.SetMembership(ctx, room, p.UserID, event.MembershipJoin))
	require.NoError(t, db.StateStore.SetMembership(ctx, room, "@member:localhost", event.MembershipJoin))
	sessionID := func() id.SessionID {
		out, err := olm.NewOutboundGroupSession()
		require.NoError(t, err)
		return out.ID()
	}
	withheld := func(sender id.UserID, roomID id.RoomID, code event.RoomKeyWithheldCode) id.SessionID {
		sid := sessionID()
		from := newOlmSender(sender)
		from.known(t, p)
		evt := &event.Event{Sender: sender, Type: event.ToDeviceRoomKeyWithheld, ToUserID: p.UserID, ToDeviceID: p.DeviceID,
			Content: event.Content{Parsed: &event.RoomKeyWithheldEventContent{RoomID: roomID, Algorithm: id.AlgorithmMegolmV1,
				SessionID: sid, SenderKey: from.curve, Code: code, Reason: "test"}}}
		p.handleToDevice(ctx, evt)
		return sid
	}
	stored := func(roomID id.RoomID, sid id.SessionID) bool {
		w, err := p.Store.GetWithheldGroupSession(ctx, roomID, sid)
		require.NoError(t, err)
		return w != nil
	}
	require.True(t, stored(room, withheld("@member:localhost", room, event.RoomKeyWithheldUnverified)), "a member is heard")
	require.False(t, stored(room, withheld("@stranger:localhost", room, event.RoomKeyWithheldUnverified)), "a stranger is not")
	require.False(t, stored("!other:localhost", withheld("@member:localhost", "!other:localhost", event.RoomKeyWithheldUnverified)),
		"nor a room the puppet is not in")
	require.False(t, stored(room, withheld("@member:localhost", room, "m.history_not_shared")), "nor the bundle-only code")
}

// Another user's room key request is refused, however the session was shared with them: a member
// must not get messages from before they were let in.
func TestKeyRequestsFromOtherUsersAreRefused(t *testing.T) {
	mgr, _ := testManager(t)
	p := testPuppet(t, mgr, "sender")
	ctx := context.Background()
	ogs, err := crypto.NewOutboundGroupSession("!room:localhost", nil, nil)
	require.NoError(t, err)
	require.NoError(t, p.Store.AddOutboundGroupSession(ctx, ogs))
	member := &id.Device{UserID: "@member:localhost", DeviceID: "MEMBERDEV", IdentityKey: newOlmSender("@member:localhost").curve,
		Trust: id.TrustStateVerified}
	require.NoError(t, p.Store.MarkOutboundGroupSessionShared(ctx, member.UserID, member.IdentityKey, ogs.ID()))
	rejection := p.Mach.AllowKeyShare(ctx, member, event.RequestedKeyInfo{
		Algorithm: id.AlgorithmMegolmV1, RoomID: "!room:localhost", SessionID: ogs.ID(),
	})
	require.NotNil(t, rejection, "a member the session was shared with still gets no forwarded key")
	require.True(t, p.isForeignKeyRequest(&event.Event{Type: event.ToDeviceRoomKeyRequest, Sender: member.UserID}))
	require.False(t, p.isForeignKeyRequest(&event.Event{Type: event.ToDeviceRoomKeyRequest, Sender: p.UserID}))
}

// Another user's room key request is dropped as it arrives: the puppet does not even look up the
// requesting device at the homeserver, so nobody can make puppets query keys on demand. (A request
// from the puppet's own user goes on to mautrix's rules, which look its device up: the test waits
// for that one, sent after the other user's.)
func TestKeyRequestsFromOtherUsersCostNoHomeserverCall(t *testing.T) {
	mgr, _ := testManager(t)
	p := testPuppet(t, mgr, "sender")
	ks, hsURL := newKeyServer(t)
	p.Client.HomeserverURL = hsURL
	ctx := context.Background()
	request := func(sender id.UserID, device id.DeviceID) *event.Event {
		return &event.Event{Type: event.ToDeviceRoomKeyRequest, Sender: sender, ToUserID: p.UserID, ToDeviceID: p.DeviceID,
			Content: event.Content{Parsed: &event.RoomKeyRequestEventContent{Action: event.KeyRequestActionRequest,
				RequestingDeviceID: device, RequestID: "req-" + device.String(),
				Body: event.RequestedKeyInfo{Algorithm: id.AlgorithmMegolmV1, RoomID: "!room:localhost", SessionID: "session"}}}}
	}
	p.handleToDevice(ctx, request("@stranger:localhost", "STRANGERDEV"))
	p.handleToDevice(ctx, request(p.UserID, "OTHERDEV"))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		ks.mu.Lock()
		defer ks.mu.Unlock()
		require.Contains(c, ks.queries, []id.UserID{p.UserID}, "the puppet's own request is looked up")
	}, 10*time.Second, 10*time.Millisecond)
	ks.mu.Lock()
	defer ks.mu.Unlock()
	require.NotContains(t, ks.queries, []id.UserID{"@stranger:localhost"}, "another user's request is not")
}

// A room key is heard only for a room the puppet is in (the homeserver is asked when heirloom has
// never heard of it), and never from a sender known to have left: otherwise anyone could park a
// session ID under a room of their making, and a past member could replay every key he received.
func TestRoomKeyOnlyForRoomsThePuppetIsIn(t *testing.T) {
	mgr, db := testManager(t)
	p := testPuppet(t, mgr, "victim")
	ctx := context.Background()
	const room, bogus id.RoomID = "!real:localhost", "!bogus:localhost"
	alice, gone := newOlmSender("@alice:localhost"), newOlmSender("@gone:localhost")
	joined(t, db, room, p.UserID, alice.user)
	require.NoError(t, db.StateStore.SetMembership(ctx, room, gone.user, event.MembershipLeave))
	for _, tc := range []struct {
		name   string
		sender olmSender
		room   id.RoomID
		stored bool
	}{
		{"a member, in the puppet's room", alice, room, true},
		{"a member, naming a room the puppet is not in", alice, bogus, false},
		{"a past member", gone, room, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := olm.NewOutboundGroupSession()
			require.NoError(t, err)
			tc.sender.sendRoomKey(ctx, p, tc.room, out.ID(), out.Key(), true)
			require.Equal(t, tc.stored, heldRow(t, p, tc.room, out.ID()) != nil)
		})
	}
}

// A key received directly and a copy an inviter imported under another room are two rows: the
// direct key is stored for its room, and the imported copy stays where it was.
func TestDirectKeyAndAnImportedCopyOfAnotherRoomAreHeldApart(t *testing.T) {
	mgr, db := testManager(t)
	p := testPuppet(t, mgr, "victim")
	ctx := context.Background()
	alice := newOlmSender("@alice:localhost")
	joined(t, db, "!real:localhost", p.UserID, alice.user)
	out, err := olm.NewOutboundGroupSession()
	require.NoError(t, err)
	exported, err := mustSession(t, out.Key()).Export(0)
	require.NoError(t, err)
	internal, err := olm.InboundGroupSessionImport(exported)
	require.NoError(t, err)
	shared := true
	require.NoError(t, p.Store.PutGroupSession(ctx, &crypto.InboundGroupSession{Internal: internal, SenderKey: alice.curve,
		SigningKey: alice.signing, RoomID: "!inviters:localhost", SharedHistory: &shared, KeySource: id.KeySourceForward,
		SourceUser: "@inviter:localhost"}))
	before := roomRow(t, p, "!inviters:localhost", out.ID())
	alice.sendRoomKey(ctx, p, "!real:localhost", out.ID(), out.Key(), true)
	row := heldRow(t, p, "!real:localhost", out.ID())
	require.NotNil(t, row, "the direct key is held for its own room")
	require.Equal(t, before, roomRow(t, p, "!inviters:localhost", out.ID()), "the imported copy stays where it was")
}
