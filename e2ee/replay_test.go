package e2ee

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto"
)

// The replay check keys on what makes a message genuine: a member who re-posts an old ciphertext
// of the room as a new event (he needs no key, only the ciphertext, which history visibility shows
// him) must not make the genuine event fail as a replay for a puppet that reads the newer one
// first, as Timeline does with a small limit after a bundle import. A replay by the same sender is
// still refused.
func TestRepostedCiphertextDoesNotMakeTheGenuineEventAReplay(t *testing.T) {
	mgr, db := testManager(t)
	p := testPuppet(t, mgr, "victim")
	ctx := context.Background()
	alice, mallory := newOlmSender("@alice:localhost"), newOlmSender("@mallory:localhost")
	joined(t, db, roomA, p.UserID, alice.user, mallory.user)
	ogs, err := crypto.NewOutboundGroupSession(roomA, nil, nil)
	require.NoError(t, err)
	alice.sendRoomKey(ctx, p, roomA, ogs.ID(), ogs.Internal.Key(), true)
	ciphertext := megolmMessage(t, ogs, roomA, "alice's old message")

	copied, err := p.Decrypt(ctx, encryptedEvent(roomA, "$repost", mallory, ogs.ID(), ciphertext, 5000))
	require.NoError(t, err)
	t.Logf("the re-post decrypts, from mallory, with trust %q", copied.Trust)
	_, err = p.Decrypt(ctx, encryptedEvent(roomA, "$genuine", alice, ogs.ID(), ciphertext, 1000))
	require.NoError(t, err, "alice's genuine (earlier) event must still decrypt")

	_, err = p.Decrypt(ctx, encryptedEvent(roomA, "$genuine", alice, ogs.ID(), ciphertext, 1000))
	require.NoError(t, err, "the same event again is no replay")
	_, err = p.Decrypt(ctx, encryptedEvent(roomA, "$again", alice, ogs.ID(), ciphertext, 9000))
	require.ErrorIs(t, err, crypto.ErrDuplicateMessageIndex, "the same sender's ciphertext as another event is a replay")
	_, err = p.Decrypt(ctx, encryptedEvent(roomA, "$repost2", mallory, ogs.ID(), ciphertext, 9500))
	require.ErrorIs(t, err, crypto.ErrDuplicateMessageIndex, "the re-poster's own second copy is a replay")
}

// The replay check is each puppet's own: what one puppet decrypted first (here an event the
// homeserver replayed under a new ID) does not decide what another puppet of the same room may
// decrypt. The bot decrypts any member's message on demand, so a shared record would let one
// puppet's reading poison the others'.
func TestOnePuppetsReadingDoesNotMakeAnothersEventAReplay(t *testing.T) {
	mgr, db := testManager(t)
	first, second := testPuppet(t, mgr, "first"), testPuppet(t, mgr, "second")
	ctx := context.Background()
	alice := newOlmSender("@alice:localhost")
	joined(t, db, roomA, first.UserID, second.UserID, alice.user)
	ogs, err := crypto.NewOutboundGroupSession(roomA, nil, nil)
	require.NoError(t, err)
	alice.sendRoomKey(ctx, first, roomA, ogs.ID(), ogs.Internal.Key(), true)
	alice.sendRoomKey(ctx, second, roomA, ogs.ID(), ogs.Internal.Key(), true)
	ciphertext := megolmMessage(t, ogs, roomA, "alice's message")

	_, err = first.Decrypt(ctx, encryptedEvent(roomA, "$replayed", alice, ogs.ID(), ciphertext, 5000))
	require.NoError(t, err)
	_, err = second.Decrypt(ctx, encryptedEvent(roomA, "$genuine", alice, ogs.ID(), ciphertext, 1000))
	require.NoError(t, err, "another puppet's first reading decides nothing for this one")
	_, err = first.Decrypt(ctx, encryptedEvent(roomA, "$genuine", alice, ogs.ID(), ciphertext, 1000))
	require.ErrorIs(t, err, crypto.ErrDuplicateMessageIndex, "for the first puppet, the later one is the replay")
}
