package e2ee

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// forward hands p what arrives when s's device sends an m.forwarded_room_key over Olm.
func (s olmSender) forward(ctx context.Context, p *Puppet, content *forwardedRoomKeyContent) {
	p.receiveOwnForward(ctx, s.decrypted(), content)
}

// heirloom's bot takes a forwarded room key only from the device whose session it is, in answer to
// the key request it sent that device when a push was lost, and holds it as imported; puppets take
// none.
func TestOnlyTheBotTakesADevicesForwardOfItsOwnSession(t *testing.T) {
	mgr, db := testManager(t)
	ctx := context.Background()
	bot, err := mgr.LocalPuppet(ctx, mgr.cfg.BotUserID(), "DEVBOT")
	require.NoError(t, err)
	bot.Client.DefaultHTTPRetries = 0 // nobody answers at the test homeserver
	puppet := testPuppet(t, mgr, "plain")
	const roomID id.RoomID = "!dm:localhost"
	admin, other := newOlmSender("@admin:localhost"), newOlmSender("@other:localhost")
	joined(t, db, roomID, bot.UserID, puppet.UserID, admin.user, other.user)

	forwardOf := func(owner olmSender, chain []string) (*forwardedRoomKeyContent, id.SessionID) {
		out, err := olm.NewOutboundGroupSession()
		require.NoError(t, err)
		in, err := olm.NewInboundGroupSession([]byte(out.Key()))
		require.NoError(t, err)
		exported, err := in.Export(0)
		require.NoError(t, err)
		return &forwardedRoomKeyContent{ForwardedRoomKeyEventContent: event.ForwardedRoomKeyEventContent{
			RoomKeyEventContent: event.RoomKeyEventContent{Algorithm: id.AlgorithmMegolmV1, RoomID: roomID, SessionID: out.ID(), SessionKey: string(exported)},
			SenderKey:           owner.curve, SenderClaimedKey: owner.signing, ForwardingKeyChain: chain,
		}}, out.ID()
	}

	require.False(t, puppet.takesOwnForwards(), "a puppet takes no forwarded key")
	require.True(t, bot.takesOwnForwards())
	own, ownID := forwardOf(admin, nil)
	admin.forward(ctx, bot, own)
	require.Nil(t, heldRow(t, bot, roomID, ownID), "a forward the bot did not ask for is refused")
	bot.asked.add(roomID, ownID, admin.user, admin.curve)
	admin.forward(ctx, bot, own)
	row := heldRow(t, bot, roomID, ownID)
	require.NotNil(t, row, "the bot takes the admin device's forward of its own session, asked for")
	require.Equal(t, admin.curve, row.senderKey)
	igs, err := bot.Store.GetGroupSession(ctx, roomID, ownID)
	require.NoError(t, err)
	require.Equal(t, id.KeySourceForward, igs.KeySource, "a forward is held as imported, never as received directly")
	require.Empty(t, igs.ForwardingChains)

	someoneElses, elseID := forwardOf(other, nil)
	bot.asked.add(roomID, elseID, admin.user, admin.curve)
	admin.forward(ctx, bot, someoneElses)
	require.Nil(t, heldRow(t, bot, roomID, elseID), "a forward of another device's session is refused")

	asked := newOlmSender("@asked:localhost")
	joined(t, db, roomID, asked.user)
	fromAnother, anotherID := forwardOf(other, nil)
	bot.asked.add(roomID, anotherID, asked.user, asked.curve)
	other.forward(ctx, bot, fromAnother)
	require.Nil(t, heldRow(t, bot, roomID, anotherID), "a forward from another device than the one asked is refused")

	chained, chainedID := forwardOf(admin, []string{string(other.curve)})
	bot.asked.add(roomID, chainedID, admin.user, admin.curve)
	admin.forward(ctx, bot, chained)
	require.Nil(t, heldRow(t, bot, roomID, chainedID), "a forward with a forwarding chain is refused")

	elsewhere, elsewhereID := forwardOf(admin, nil)
	elsewhere.RoomID = "!not-in:localhost"
	bot.asked.add(elsewhere.RoomID, elsewhereID, admin.user, admin.curve)
	admin.forward(ctx, bot, elsewhere)
	require.Nil(t, heldRow(t, bot, "!not-in:localhost", elsewhereID), "a forward for a room the bot is not in is refused")
}

// A forward carries the session in export format: a ratchet nobody signed. A member of a room the
// bot is in can forward, unasked, a junk ratchet under the public ID of another member's session
// (an admin's, seen in the room) that the bot has not got yet (the very case the bot asks for keys:
// a push Synapse skipped). Were it stored, and as received directly, the admin's genuine m.room_key
// that comes next would be refused as a contradiction and the bot would never decrypt that session.
// A forward nobody asked for is not stored, and one that was asked for is an imported copy, which
// a directly received key replaces. (In gateway mode, the appservice's sender takes forwards the
// same way, for every bridged room.)
func TestAnUnsolicitedForwardCannotBlockTheOwnersKey(t *testing.T) {
	mgr, db := testManager(t)
	ctx := context.Background()
	bot, err := mgr.LocalPuppet(ctx, mgr.cfg.BotUserID(), "DEVBOT")
	require.NoError(t, err)
	bot.Client.DefaultHTTPRetries = 0
	const roomID id.RoomID = "!group:localhost"
	admin, mallory := newOlmSender("@admin:localhost"), newOlmSender("@mallory:localhost")
	joined(t, db, roomID, bot.UserID, admin.user, mallory.user)

	out, err := olm.NewOutboundGroupSession()
	require.NoError(t, err)
	in, err := olm.NewInboundGroupSession([]byte(out.Key()))
	require.NoError(t, err)
	exported, err := in.Export(0)
	require.NoError(t, err)
	forged := []byte(exported)
	// A different ratchet under the same public key (the export carries no signature).
	raw := make([]byte, 0, len(forged))
	raw = append(raw, forged...)
	if raw[20] == 'A' {
		raw[20] = 'B'
	} else {
		raw[20] = 'A'
	}
	mallory.forward(ctx, bot, &forwardedRoomKeyContent{ForwardedRoomKeyEventContent: event.ForwardedRoomKeyEventContent{
		RoomKeyEventContent: event.RoomKeyEventContent{Algorithm: id.AlgorithmMegolmV1, RoomID: roomID, SessionID: out.ID(),
			SessionKey: string(raw)},
		SenderKey: mallory.curve, SenderClaimedKey: mallory.signing}})
	require.Nil(t, heldRow(t, bot, roomID, out.ID()), "mallory's unsolicited forward of a session ID he only saw must not be stored")

	// Mallory posts a message under that session ID with his own sender key: the bot asks his device,
	// and his answer is stored, as an imported copy.
	bot.asked.add(roomID, out.ID(), mallory.user, mallory.curve)
	mallory.forward(ctx, bot, &forwardedRoomKeyContent{ForwardedRoomKeyEventContent: event.ForwardedRoomKeyEventContent{
		RoomKeyEventContent: event.RoomKeyEventContent{Algorithm: id.AlgorithmMegolmV1, RoomID: roomID, SessionID: out.ID(),
			SessionKey: string(raw)},
		SenderKey: mallory.curve, SenderClaimedKey: mallory.signing}})
	igs, err := bot.Store.GetGroupSession(ctx, roomID, out.ID())
	require.NoError(t, err)
	require.NotNil(t, igs, "a forward the bot asked for is stored")
	require.Equal(t, id.KeySourceForward, igs.KeySource, "a forward is an imported copy, never one received directly")

	admin.sendRoomKey(ctx, bot, roomID, out.ID(), out.Key(), true)
	row := heldRow(t, bot, roomID, out.ID())
	require.Equal(t, admin.curve, row.senderKey, "the admin's signed m.room_key must win over an unsigned forward of the same session ID")
}
