package e2ee

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// encryptedEvent is the room event that carries the megolm ciphertext, as the homeserver serves it.
func encryptedEvent(roomID id.RoomID, eventID id.EventID, sender olmSender, sessionID id.SessionID, ciphertext []byte, ts int64) *event.Event {
	return &event.Event{Type: event.EventEncrypted, RoomID: roomID, ID: eventID, Sender: sender.user, Timestamp: ts,
		Content: event.Content{Parsed: &event.EncryptedEventContent{Algorithm: id.AlgorithmMegolmV1, SenderKey: sender.curve,
			SessionID: sessionID, MegolmCiphertext: ciphertext}}}
}

// megolmMessage encrypts a message of the room in the outbound session, as its creator sends it.
func megolmMessage(t *testing.T, ogs *crypto.OutboundGroupSession, roomID id.RoomID, body string) []byte {
	t.Helper()
	plaintext, err := json.Marshal(map[string]any{"room_id": roomID, "type": "m.room.message",
		"content": map[string]any{"msgtype": "m.text", "body": body}})
	require.NoError(t, err)
	ogs.Shared = true
	ciphertext, err := ogs.Encrypt(plaintext)
	require.NoError(t, err)
	return ciphertext
}

// The decrypt path is per room too: a member of room B who holds the key of room A's session (a
// past member of A) gets his copy held for B, and posts in B a copy of an A event's ciphertext. Its
// decryption in B fails (the plaintext names room A) and must leave nothing behind: mautrix records
// a message index against replays, by session and index alone, before it compares the rooms, so the
// genuine event in A would then be refused as a replay.
func TestCiphertextCopiedIntoAnotherRoomBlocksNothing(t *testing.T) {
	mgr, db := testManager(t)
	p := testPuppet(t, mgr, "victim")
	ctx := context.Background()
	alice, mallory := newOlmSender("@alice:localhost"), newOlmSender("@mallory:localhost")
	joined(t, db, roomA, p.UserID, alice.user)
	joined(t, db, roomB, p.UserID, mallory.user)
	ogs, err := crypto.NewOutboundGroupSession(roomA, nil, nil)
	require.NoError(t, err)
	alice.sendRoomKey(ctx, p, roomA, ogs.ID(), ogs.Internal.Key(), true)
	mallory.sendRoomKey(ctx, p, roomB, ogs.ID(), ogs.Internal.Key(), true)
	require.NotNil(t, heldRow(t, p, roomB, ogs.ID()), "his copy is held for B")

	ciphertext := megolmMessage(t, ogs, roomA, "for room A")
	_, err = p.Decrypt(ctx, encryptedEvent(roomB, "$copy", mallory, ogs.ID(), ciphertext, 2000))
	require.ErrorIs(t, err, crypto.ErrWrongRoom, "the copy names room A")

	d, err := p.Decrypt(ctx, encryptedEvent(roomA, "$genuine", alice, ogs.ID(), ciphertext, 1000))
	require.NoError(t, err, "the genuine event still decrypts")
	require.Equal(t, "for room A", d.Event.Content.AsMessage().Body)

	// A replay within the room is still refused: another event with the same message index.
	_, err = p.Decrypt(ctx, encryptedEvent(roomA, "$replay", alice, ogs.ID(), ciphertext, 3000))
	require.ErrorIs(t, err, crypto.ErrDuplicateMessageIndex)
}
