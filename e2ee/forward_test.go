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
func (s olmSender) forward(ctx context.Context, p *Puppet, content *ForwardedRoomKeyContent) {
	p.receiveOwnForward(ctx, s.decrypted(), content)
}

// heirloom's bot takes a forwarded room key only from the device whose session it is (the answer
// to the key request it sent when a push was lost); puppets take none.
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

	forwardOf := func(owner olmSender, chain []string) (*ForwardedRoomKeyContent, id.SessionID) {
		out, err := olm.NewOutboundGroupSession()
		require.NoError(t, err)
		in, err := olm.NewInboundGroupSession([]byte(out.Key()))
		require.NoError(t, err)
		exported, err := in.Export(0)
		require.NoError(t, err)
		return &ForwardedRoomKeyContent{ForwardedRoomKeyEventContent: event.ForwardedRoomKeyEventContent{
			RoomKeyEventContent: event.RoomKeyEventContent{Algorithm: id.AlgorithmMegolmV1, RoomID: roomID, SessionID: out.ID(), SessionKey: string(exported)},
			SenderKey:           owner.curve, SenderClaimedKey: owner.signing, ForwardingKeyChain: chain,
		}}, out.ID()
	}

	require.False(t, puppet.takesOwnForwards(), "a puppet takes no forwarded key")
	require.True(t, bot.takesOwnForwards())
	own, ownID := forwardOf(admin, nil)
	admin.forward(ctx, bot, own)
	row := heldRow(t, bot, roomID, ownID)
	require.NotNil(t, row, "the bot takes the admin device's forward of its own session")
	require.Equal(t, admin.curve, row.senderKey)
	igs, err := bot.Store.GetGroupSession(ctx, roomID, ownID)
	require.NoError(t, err)
	require.Equal(t, id.KeySourceDirect, igs.KeySource)
	require.Empty(t, igs.ForwardingChains)

	someoneElses, elseID := forwardOf(other, nil)
	admin.forward(ctx, bot, someoneElses)
	require.Nil(t, heldRow(t, bot, roomID, elseID), "a forward of another device's session is refused")

	chained, chainedID := forwardOf(admin, []string{string(other.curve)})
	admin.forward(ctx, bot, chained)
	require.Nil(t, heldRow(t, bot, roomID, chainedID), "a forward with a forwarding chain is refused")

	elsewhere, elsewhereID := forwardOf(admin, nil)
	elsewhere.RoomID = "!not-in:localhost"
	admin.forward(ctx, bot, elsewhere)
	require.Nil(t, heldRow(t, bot, "!not-in:localhost", elsewhereID), "a forward for a room the bot is not in is refused")
}
