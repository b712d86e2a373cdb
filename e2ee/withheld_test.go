package e2ee

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
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
	p.handleToDevice(ctx, &event.Event{Sender: mallory.user, Type: event.ToDeviceRoomKeyWithheld, ToUserID: p.UserID,
		ToDeviceID: p.DeviceID, Content: event.Content{Parsed: &event.RoomKeyWithheldEventContent{RoomID: roomA,
			Algorithm: id.AlgorithmMegolmV1, SessionID: ogs.ID(), SenderKey: alice.curve, Code: event.RoomKeyWithheldUnverified,
			Reason: "mallory speaking for alice"}}})
	ciphertext := megolmMessage(t, ogs, roomA, "alice's message")
	_, err = p.Decrypt(ctx, encryptedEvent(roomA, "$alice", alice, ogs.ID(), ciphertext, 1000))
	require.Error(t, err)
	require.True(t, IsMissingKey(err), "a withheld message from someone other than the session's sender must not turn "+
		"a key not yet arrived into a final failure: got %v", err)

	// Alice's own word about her session counts.
	alice.known(t, p)
	p.handleToDevice(ctx, &event.Event{Sender: alice.user, Type: event.ToDeviceRoomKeyWithheld, ToUserID: p.UserID,
		ToDeviceID: p.DeviceID, Content: event.Content{Parsed: &event.RoomKeyWithheldEventContent{RoomID: roomA,
			Algorithm: id.AlgorithmMegolmV1, SessionID: ogs.ID(), SenderKey: alice.curve, Code: event.RoomKeyWithheldUnverified,
			Reason: "alice's own"}}})
	_, err = p.Decrypt(ctx, encryptedEvent(roomA, "$alice", alice, ogs.ID(), ciphertext, 1000))
	require.Error(t, err)
	require.False(t, IsMissingKey(err), "the session's own sender withholding it is a final answer: got %v", err)
}
