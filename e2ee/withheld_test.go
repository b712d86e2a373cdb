package e2ee

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// A plaintext m.room_key.withheld is anyone's word (no Olm), and its sender_key is the message's own
// claim. Until the key arrives, Decrypt fails with a stored withheld entry instead of "no session":
// callers that wait and sweep the inbox for a missing key (gateway.decryptInto, which otherwise
// holds the event and recovers the key; Timeline's sweep) give up on the event at once. So a member
// must not be able to say it about another member's session (one the puppet has not got yet: a new
// puppet in the room, a key whose push Synapse skipped): withheld counts only from the user whose
// device the session's sender key is.
func TestAMembersWithheldAboutAnotherMembersSessionIsNoFinalAnswer(t *testing.T) {
	mgr, db := testManager(t)
	p := testPuppet(t, mgr, "victim")
	ctx := context.Background()
	alice, mallory := newOlmSender("@alice:localhost"), newOlmSender("@mallory:localhost")
	joined(t, db, roomA, p.UserID, alice.user, mallory.user)
	ogs, err := crypto.NewOutboundGroupSession(roomA, nil, nil)
	require.NoError(t, err)
	sendWithheld(ctx, p, mallory.user, ogs.ID(), alice.curve, "mallory speaking for alice")
	ciphertext := megolmMessage(t, ogs, roomA, "alice's message")
	_, err = p.Decrypt(ctx, encryptedEvent(roomA, "$alice", alice, ogs.ID(), ciphertext, 1000))
	require.Error(t, err)
	require.True(t, IsMissingKey(err), "a withheld message from someone other than the session's sender must not turn "+
		"a key not yet arrived into a final failure: got %v", err)

	// Alice's own word about her session counts.
	alice.known(t, p)
	sendWithheld(ctx, p, alice.user, ogs.ID(), alice.curve, "alice's own")
	_, err = p.Decrypt(ctx, encryptedEvent(roomA, "$alice", alice, ogs.ID(), ciphertext, 1000))
	require.Error(t, err)
	require.False(t, IsMissingKey(err), "the session's own sender withholding it is a final answer: got %v", err)
}

// Mallory's withheld names his OWN device's sender key (so it passes as a word about his own
// device's session) but Alice's session ID, seen in the room. The entry is held under the room and
// session ID alone; it must answer only for events of that sender key's sessions: Alice's message
// of that session is "no key yet", whether it names its sender key (as clients SHOULD) or not.
func TestAWithheldAnswersOnlyForItsOwnSenderKeysSession(t *testing.T) {
	mgr, db := testManager(t)
	p := testPuppet(t, mgr, "victim")
	ctx := context.Background()
	alice, mallory := newOlmSender("@alice:localhost"), newOlmSender("@mallory:localhost")
	joined(t, db, roomA, p.UserID, alice.user, mallory.user)
	mallory.known(t, p)
	alice.known(t, p)
	ogs, err := crypto.NewOutboundGroupSession(roomA, nil, nil)
	require.NoError(t, err)
	sendWithheld(ctx, p, mallory.user, ogs.ID(), mallory.curve, "mallory, about alice's session ID, under his own key")
	ciphertext := megolmMessage(t, ogs, roomA, "alice's message")
	named := encryptedEvent(roomA, "$alice", alice, ogs.ID(), ciphertext, 1000)
	unnamed := encryptedEvent(roomA, "$alice2", alice, ogs.ID(), ciphertext, 1000)
	unnamed.Content.Parsed.(*event.EncryptedEventContent).SenderKey = ""
	for _, evt := range []*event.Event{named, unnamed} {
		_, err = p.Decrypt(ctx, evt)
		require.Error(t, err)
		require.True(t, IsMissingKey(err), "a withheld entry of another sender's key must not make Alice's message of that "+
			"session a final failure (event %s): got %v", evt.ID, err)
	}
}

// A key bundle's withheld entry is its sender's word about history: m.history_not_shared for a
// session whose key he held but may not share. It answers only for messages sent before the bundle
// arrived, of the session under the sender key it names. Bob's bundle saying alice's session was
// withheld as m.unverified (a code only alice's device could give), or naming another sender key
// for it, answers for none of alice's messages; and his history_not_shared does not make alice's
// messages sent after the bundle (their key comes from her directly) a final failure.
func TestABundlesWithheldEntryAnswersOnlyForHistoryNotSharedBeforeTheBundle(t *testing.T) {
	for _, backend := range testdb.Backends() {
		t.Run(backend.Name, func(t *testing.T) {
			mgr := testManagerOn(t, backend.Open(t))
			bundleWithheldAnswers(t, mgr, mgr.db)
		})
	}
}

func bundleWithheldAnswers(t *testing.T, mgr *Manager, db *database.Database) {
	p := testPuppet(t, mgr, "invitee")
	ctx := context.Background()
	alice, bob := newOlmSender("@alice:localhost"), newOlmSender("@bob:localhost")
	joined(t, db, roomA, p.UserID, alice.user, bob.user)
	bundleAt := time.UnixMilli(5_000_000)
	withheld := func(code event.RoomKeyWithheldCode, senderKey id.SenderKey) (*crypto.OutboundGroupSession, []byte) {
		ogs, err := crypto.NewOutboundGroupSession(roomA, nil, nil)
		require.NoError(t, err)
		require.NoError(t, p.InsertBundleWithheld(ctx, []keybundle.Withheld{{Algorithm: id.AlgorithmMegolmV1, RoomID: roomA,
			SessionID: ogs.ID(), SenderKey: senderKey, Code: string(code), Reason: "bob's word"}}, bob.user, bundleAt))
		return ogs, megolmMessage(t, ogs, roomA, "alice's message")
	}
	decrypt := func(ogs *crypto.OutboundGroupSession, ciphertext []byte, ts int64) error {
		_, err := p.Decrypt(ctx, encryptedEvent(roomA, id.EventID(fmt.Sprintf("$%s-%d", ogs.ID(), ts)), alice, ogs.ID(), ciphertext, ts))
		require.Error(t, err)
		return err
	}

	ogs, ciphertext := withheld(event.RoomKeyWithheldUnverified, alice.curve)
	err := decrypt(ogs, ciphertext, 1000)
	require.True(t, IsMissingKey(err), "a bundle's entry with a code other than history_not_shared answers for nothing: got %v", err)

	ogs, ciphertext = withheld(keybundle.CodeHistoryNotShared, bob.curve)
	err = decrypt(ogs, ciphertext, 1000)
	require.True(t, IsMissingKey(err), "a bundle's entry under another sender key answers for nothing of alice's: got %v", err)

	ogs, ciphertext = withheld(keybundle.CodeHistoryNotShared, alice.curve)
	err = decrypt(ogs, ciphertext, bundleAt.UnixMilli()+1)
	require.True(t, IsMissingKey(err), "a message sent after the bundle arrived waits for its key: got %v", err)
	err = decrypt(ogs, ciphertext, bundleAt.UnixMilli()-1)
	require.False(t, IsMissingKey(err), "history before the bundle, withheld by its sender as not shared, is a final answer: got %v", err)
	require.Contains(t, describeDecryptError(err), keybundle.CodeHistoryNotShared)
}

// A device's Curve25519 key is its uploader's word: Mallory can upload a device naming Alice's
// key, and then "own" it. His withheld about Alice's session under Alice's key answers only for his
// own events: Alice's message of that session is "no key yet".
func TestAWithheldAnswersOnlyForItsSendersEvents(t *testing.T) {
	mgr, db := testManager(t)
	p := testPuppet(t, mgr, "victim")
	ctx := context.Background()
	alice, mallory := newOlmSender("@alice:localhost"), newOlmSender("@mallory:localhost")
	joined(t, db, roomA, p.UserID, alice.user, mallory.user)
	alice.known(t, p)
	clone := mallory
	clone.curve = alice.curve
	clone.known(t, p)
	ogs, err := crypto.NewOutboundGroupSession(roomA, nil, nil)
	require.NoError(t, err)
	sendWithheld(ctx, p, mallory.user, ogs.ID(), alice.curve, "mallory, under alice's key, through a device of his naming it")
	ciphertext := megolmMessage(t, ogs, roomA, "alice's message")
	_, err = p.Decrypt(ctx, encryptedEvent(roomA, "$alice", alice, ogs.ID(), ciphertext, 1000))
	require.Error(t, err)
	require.True(t, IsMissingKey(err), "a withheld sent by another user must not make Alice's message a final failure: got %v", err)

	// An entry stored before heirloom recorded who sent it answers for the events of a user whose
	// known device has its sender key: not Alice's under Mallory's real key, when her event names none.
	legacy, err := crypto.NewOutboundGroupSession(roomA, nil, nil)
	require.NoError(t, err)
	mallory.known(t, p)
	require.NoError(t, p.Store.PutWithheldGroupSession(ctx, event.RoomKeyWithheldEventContent{RoomID: roomA,
		Algorithm: id.AlgorithmMegolmV1, SessionID: legacy.ID(), SenderKey: mallory.curve, Code: event.RoomKeyWithheldUnverified}))
	evt := encryptedEvent(roomA, "$legacy", alice, legacy.ID(), megolmMessage(t, legacy, roomA, "alice's"), 1000)
	evt.Content.Parsed.(*event.EncryptedEventContent).SenderKey = ""
	_, err = p.Decrypt(ctx, evt)
	require.Error(t, err)
	require.True(t, IsMissingKey(err), "an entry of unknown sender under another's device key is no answer for Alice: got %v", err)
}

// sendWithheld hands the puppet a plaintext m.room_key.withheld ("unverified") from sender for the
// session of roomA, naming senderKey as the session's sender key.
func sendWithheld(ctx context.Context, p *Puppet, sender id.UserID, sessionID id.SessionID, senderKey id.SenderKey, reason string) {
	p.handleToDevice(ctx, &event.Event{Sender: sender, Type: event.ToDeviceRoomKeyWithheld, ToUserID: p.UserID,
		ToDeviceID: p.DeviceID, Content: event.Content{Parsed: &event.RoomKeyWithheldEventContent{RoomID: roomA,
			Algorithm: id.AlgorithmMegolmV1, SessionID: sessionID, SenderKey: senderKey, Code: event.RoomKeyWithheldUnverified,
			Reason: reason}}})
}
