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
	bot.asked.add(roomID, ownID, admin.user, admin.curve, nil)
	admin.forward(ctx, bot, own)
	row := heldRow(t, bot, roomID, ownID)
	require.NotNil(t, row, "the bot takes the admin device's forward of its own session, asked for")
	require.Equal(t, admin.curve, row.senderKey)
	igs, err := bot.Store.GetGroupSession(ctx, roomID, ownID)
	require.NoError(t, err)
	require.Equal(t, id.KeySourceForward, igs.KeySource, "a forward is held as imported, never as received directly")
	require.Empty(t, igs.ForwardingChains)

	someoneElses, elseID := forwardOf(other, nil)
	bot.asked.add(roomID, elseID, admin.user, admin.curve, nil)
	admin.forward(ctx, bot, someoneElses)
	require.Nil(t, heldRow(t, bot, roomID, elseID), "a forward of another device's session is refused")

	asked := newOlmSender("@asked:localhost")
	joined(t, db, roomID, asked.user)
	fromAnother, anotherID := forwardOf(other, nil)
	bot.asked.add(roomID, anotherID, asked.user, asked.curve, nil)
	other.forward(ctx, bot, fromAnother)
	require.Nil(t, heldRow(t, bot, roomID, anotherID), "a forward from another device than the one asked is refused")

	// A device of another user with the asked device's Curve25519 key (device keys are the
	// uploader's word: nothing stops one from naming another's key).
	clone := newOlmSender("@clone:localhost")
	clone.curve = asked.curve
	joined(t, db, roomID, clone.user)
	fromClone, cloneID := forwardOf(clone, nil)
	bot.asked.add(roomID, cloneID, asked.user, asked.curve, nil)
	clone.forward(ctx, bot, fromClone)
	require.Nil(t, heldRow(t, bot, roomID, cloneID), "a forward from another user than the one asked is refused")

	chained, chainedID := forwardOf(admin, []string{string(other.curve)})
	bot.asked.add(roomID, chainedID, admin.user, admin.curve, nil)
	admin.forward(ctx, bot, chained)
	require.Nil(t, heldRow(t, bot, roomID, chainedID), "a forward with a forwarding chain is refused")

	elsewhere, elsewhereID := forwardOf(admin, nil)
	elsewhere.RoomID = "!not-in:localhost"
	bot.asked.add(elsewhere.RoomID, elsewhereID, admin.user, admin.curve, nil)
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
	bot.asked.add(roomID, out.ID(), mallory.user, mallory.curve, nil)
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

// forgedExport is an export of out's session with a junk ratchet: same public key, so the same
// session ID, but a ratchet that decrypts none of the owner's messages.
func forgedExport(t *testing.T, out olm.OutboundGroupSession) (genuine, forged string) {
	t.Helper()
	in, err := olm.NewInboundGroupSession([]byte(out.Key()))
	require.NoError(t, err)
	exported, err := in.Export(0)
	require.NoError(t, err)
	raw := []byte(string(exported))
	if raw[20] == 'A' {
		raw[20] = 'B'
	} else {
		raw[20] = 'A'
	}
	return string(exported), string(raw)
}

// forwardRace is the realistic path in gateway mode: the appservice's sender (the bridge's bot,
// which cannot /sync) asks the device an encrypted event names for a key that did not come
// (gateway/keyrecovery.go); the admin bot asks admins' devices. The admin's m.room_key for session
// S was lost; the bot asks the admin's device for S, for the admin's message. Mallory, who saw S in
// the room, re-posts that message as his own under his own sender_key: the bot cannot decrypt it
// and asks Mallory's device for S too. Mallory answers with a junk ratchet under S's public key.
type forwardRace struct {
	bot             *Puppet
	room            id.RoomID
	admin, mallory  olmSender
	out             olm.OutboundGroupSession
	genuine, forged string
	message         []byte // the admin's message of S, which Mallory re-posted
}

func newForwardRace(t *testing.T) *forwardRace {
	mgr, db := testManager(t)
	bot, err := mgr.LocalPuppet(context.Background(), mgr.cfg.BotUserID(), "DEVBOT")
	require.NoError(t, err)
	bot.Client.DefaultHTTPRetries = 0
	r := &forwardRace{bot: bot, room: "!group:localhost", admin: newOlmSender("@admin:localhost"),
		mallory: newOlmSender("@mallory:localhost")}
	joined(t, db, r.room, bot.UserID, r.admin.user, r.mallory.user)
	r.out, err = olm.NewOutboundGroupSession()
	require.NoError(t, err)
	r.genuine, r.forged = forgedExport(t, r.out)
	r.message, err = r.out.Encrypt([]byte(`{"room_id":"!group:localhost","type":"m.room.message","content":{"body":"!help"}}`))
	require.NoError(t, err)
	return r
}

// ask records the bot's request to from's device, for the message (nil: not known).
func (r *forwardRace) ask(from olmSender, message []byte) {
	r.bot.asked.add(r.room, r.out.ID(), from.user, from.curve, message)
}

// forward is from's device's forward of S with the session key.
func (r *forwardRace) forward(from olmSender, key string) {
	from.forward(context.Background(), r.bot, &forwardedRoomKeyContent{ForwardedRoomKeyEventContent: event.ForwardedRoomKeyEventContent{
		RoomKeyEventContent: event.RoomKeyEventContent{Algorithm: id.AlgorithmMegolmV1, RoomID: r.room, SessionID: r.out.ID(), SessionKey: key},
		SenderKey:           from.curve, SenderClaimedKey: from.signing}})
}

// A key request is one per device asked: Mallory's request about the same session ID never replaces
// the one sent to the admin's device, and an answer is taken only if it decrypts the message it was
// asked for. Mallory's junk ratchet decrypts nothing (a megolm message is signed by the session's
// own key, which he lacks), so it is not stored, and the admin's genuine forward is.
func TestAForwardIsTakenOnlyForItsOwnDevicesRequestAndIfItDecryptsTheMessage(t *testing.T) {
	r := newForwardRace(t)
	r.ask(r.admin, r.message)
	r.ask(r.mallory, r.message)
	r.forward(r.mallory, r.forged)
	require.Nil(t, heldRow(t, r.bot, r.room, r.out.ID()), "a forward that does not decrypt the message it was asked for is not stored")
	r.forward(r.admin, r.genuine)
	row := heldRow(t, r.bot, r.room, r.out.ID())
	require.NotNil(t, row)
	require.Equal(t, r.admin.curve, row.senderKey,
		"the session's owner's forward, asked for, must not be refused because a member asked about the same session ID answered first")
}

// A junk forward taken before (in answer to a request that knew no message) does not block the
// owner's genuine forward that decrypts the message it was asked for: that one replaces it.
func TestAForwardThatDecryptsTheMessageReplacesAJunkForward(t *testing.T) {
	r := newForwardRace(t)
	r.ask(r.mallory, nil)
	r.forward(r.mallory, r.forged)
	require.NotNil(t, heldRow(t, r.bot, r.room, r.out.ID()), "an unchecked request's answer is taken")
	r.ask(r.admin, r.message)
	r.forward(r.admin, r.genuine)
	row := heldRow(t, r.bot, r.room, r.out.ID())
	require.NotNil(t, row)
	require.Equal(t, r.admin.curve, row.senderKey,
		"the owner's genuine forward must replace a junk forward of the same session ID from another member's device")
	igs, err := r.bot.Store.GetGroupSession(context.Background(), r.room, r.out.ID())
	require.NoError(t, err)
	require.True(t, decrypts(igs.Internal, r.message), "the copy held now reads the admin's message")
}
