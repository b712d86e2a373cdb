package e2ee

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// The tests of this file hold the rule of a puppet's inbound sessions: a copy of a session that
// claims room X (a room key, a bundle's key or withheld entry, a forward, a withheld message) never
// changes, moves, shadows or blocks what the puppet holds for room Y, whoever sends it and in
// whatever order. A megolm session ID is public, the session key does not sign the room, and Olm
// authenticates the relayer, not the session's creator: the room a copy claims proves nothing.

const (
	roomA id.RoomID = "!a:localhost"
	roomB id.RoomID = "!b:localhost"
)

// roomRow returns every column of the puppet's row for the session in the room (nil if none).
func roomRow(t *testing.T, p *Puppet, roomID id.RoomID, sessionID id.SessionID) map[string]any {
	t.Helper()
	rows, err := p.Store.DB.Query(context.Background(), `SELECT * FROM crypto_megolm_inbound_session
		WHERE account_id=$1 AND room_id=$2 AND session_id=$3`, p.Store.AccountID, roomID, sessionID)
	require.NoError(t, err)
	defer rows.Close()
	cols, err := rows.Columns()
	require.NoError(t, err)
	if !rows.Next() {
		require.NoError(t, rows.Err())
		return nil
	}
	values := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range values {
		ptrs[i] = &values[i]
	}
	require.NoError(t, rows.Scan(ptrs...))
	out := make(map[string]any, len(cols))
	for i, col := range cols {
		if b, ok := values[i].([]byte); ok {
			values[i] = string(b)
		}
		out[col] = values[i]
	}
	return out
}

// importedCopy is the copy of the session a bundle from inviter gave the puppet for the room, as
// the import stores it, with creator's claims.
func importedCopy(t *testing.T, out olm.OutboundGroupSession, roomID id.RoomID, creator olmSender, inviter id.UserID) *crypto.InboundGroupSession {
	t.Helper()
	exported, err := mustSession(t, out.Key()).Export(0)
	require.NoError(t, err)
	internal, err := olm.InboundGroupSessionImport(exported)
	require.NoError(t, err)
	shared := true
	return &crypto.InboundGroupSession{Internal: internal, SenderKey: creator.curve, SigningKey: creator.signing, RoomID: roomID,
		ForwardingChains: []string{"inviterCurve"}, SharedHistory: &shared, KeySource: id.KeySourceForward, SourceUser: inviter,
		ReceivedAt: time.Now().UTC(), MaxAge: time.Hour.Milliseconds(), MaxMessages: 100}
}

// F1a: a past member of room A, holding the creator-signed keys of A's sessions, replays one as an
// m.room_key naming room B. The puppet's imported copy for A must stay where it is, whether or
// not he is a member of B (a member of B gets his copy held for B, beside A's).
func TestDirectKeyFromAPastMemberCannotMoveImportedHistory(t *testing.T) {
	for _, memberOfB := range []bool{false, true} {
		name := "not a member of the room he names"
		if memberOfB {
			name = "a member of the room he names"
		}
		t.Run(name, func(t *testing.T) {
			mgr, db := testManager(t)
			p := testPuppet(t, mgr, "victim")
			ctx := context.Background()
			alice, mallory := newOlmSender("@alice:localhost"), newOlmSender("@mallory:localhost")
			joined(t, db, roomA, p.UserID, alice.user)
			joined(t, db, roomB, p.UserID)
			require.NoError(t, db.StateStore.SetMembership(ctx, roomA, mallory.user, event.MembershipLeave))
			if memberOfB {
				joined(t, db, roomB, mallory.user)
			}
			out, err := olm.NewOutboundGroupSession()
			require.NoError(t, err)
			stored, _, err := p.StoreSession(ctx, importedCopy(t, out, roomA, alice, "@inviter:localhost"))
			require.NoError(t, err)
			require.True(t, stored)
			before := roomRow(t, p, roomA, out.ID())

			mallory.sendRoomKey(ctx, p, roomB, out.ID(), out.Key(), true)

			require.Equal(t, before, roomRow(t, p, roomA, out.ID()), "a key naming room B must not take room A's imported history away")
			held, err := p.Store.GetGroupSession(ctx, roomA, out.ID())
			require.NoError(t, err)
			require.NotNil(t, held, "room A's session still decrypts")
			require.Equal(t, id.UserID("@inviter:localhost"), held.SourceUser)
			if memberOfB {
				row := heldRow(t, p, roomB, out.ID())
				require.NotNil(t, row, "his copy is held for room B, apart")
				require.Equal(t, mallory.curve, row.senderKey)
			} else {
				require.Nil(t, heldRow(t, p, roomB, out.ID()), "a non-member of room B gets nothing stored for it")
			}
		})
	}
}

// F1b: someone names the creator's session ID under another room first; the creator's own key for
// its room must still be stored, and a non-member's key for a room gets nothing stored at all.
func TestASessionIDNamedFirstUnderAnotherRoomBlocksNothing(t *testing.T) {
	for _, memberOfB := range []bool{false, true} {
		name := "by a non-member of the room he names"
		if memberOfB {
			name = "by a member of the room he names"
		}
		t.Run(name, func(t *testing.T) {
			mgr, db := testManager(t)
			p := testPuppet(t, mgr, "victim")
			ctx := context.Background()
			alice, mallory := newOlmSender("@alice:localhost"), newOlmSender("@mallory:localhost")
			joined(t, db, roomA, p.UserID, alice.user)
			joined(t, db, roomB, p.UserID)
			if memberOfB {
				joined(t, db, roomB, mallory.user)
			}
			out, err := olm.NewOutboundGroupSession()
			require.NoError(t, err)
			mallory.sendRoomKey(ctx, p, roomB, out.ID(), out.Key(), true)
			if !memberOfB {
				require.Nil(t, heldRow(t, p, roomB, out.ID()), "a room key from a non-member of its room is not stored")
			}

			alice.sendRoomKey(ctx, p, roomA, out.ID(), out.Key(), true)
			row := heldRow(t, p, roomA, out.ID())
			require.NotNil(t, row, "the creator's own key for its room must be stored")
			require.Equal(t, alice.curve, row.senderKey)
		})
	}
}

// copyKind is one way a copy of a session reaches a puppet's store.
type copyKind struct {
	name string
	// send delivers the copy of out for the room from sender (a member of the room).
	send func(t *testing.T, p *Puppet, out olm.OutboundGroupSession, roomID id.RoomID, sender olmSender)
}

func copyKinds() []copyKind {
	return []copyKind{
		{"room key", func(t *testing.T, p *Puppet, out olm.OutboundGroupSession, roomID id.RoomID, sender olmSender) {
			sender.sendRoomKey(context.Background(), p, roomID, out.ID(), out.Key(), true)
		}},
		{"bundle key", func(t *testing.T, p *Puppet, out olm.OutboundGroupSession, roomID id.RoomID, sender olmSender) {
			_, _, err := p.StoreSession(context.Background(), importedCopy(t, out, roomID, sender, "@inviter:localhost"))
			require.NoError(t, err)
		}},
		{"forged bundle key", func(t *testing.T, p *Puppet, out olm.OutboundGroupSession, roomID id.RoomID, sender olmSender) {
			igs := importedCopy(t, out, roomID, sender, "@inviter:localhost")
			igs.Internal = forgedRatchet(t, out)
			_, _, err := p.StoreSession(context.Background(), igs)
			require.NoError(t, err)
		}},
		{"withheld message", func(t *testing.T, p *Puppet, out olm.OutboundGroupSession, roomID id.RoomID, sender olmSender) {
			sender.known(t, p)
			p.handleToDevice(context.Background(), &event.Event{Sender: sender.user, Type: event.ToDeviceRoomKeyWithheld,
				ToUserID: p.UserID, ToDeviceID: p.DeviceID, Content: event.Content{Parsed: &event.RoomKeyWithheldEventContent{
					RoomID: roomID, Algorithm: id.AlgorithmMegolmV1, SessionID: out.ID(), SenderKey: sender.curve,
					Code: event.RoomKeyWithheldUnverified, Reason: "not for you"}}})
		}},
	}
}

// forgedRatchet is a session with out's public key (so its session ID) and another ratchet.
func forgedRatchet(t *testing.T, out olm.OutboundGroupSession) olm.InboundGroupSession {
	t.Helper()
	exported, err := mustSession(t, out.Key()).Export(0)
	require.NoError(t, err)
	raw := []byte(exported)
	// The export is base64; flip characters inside the ratchet (after version and index, before the key).
	for i := 8; i < 160; i++ {
		if raw[i] == 'A' {
			raw[i] = 'B'
		} else {
			raw[i] = 'A'
		}
	}
	internal, err := olm.InboundGroupSessionImport(raw)
	require.NoError(t, err)
	return internal
}

// Whatever the puppet holds for room A (a key or a withheld entry), no copy of any kind claiming
// room B changes its row, before or after: every pair of kinds, in both orders.
func TestNoCopyClaimingAnotherRoomChangesAHeldRow(t *testing.T) {
	for _, first := range copyKinds() {
		for _, second := range copyKinds() {
			t.Run(first.name+" for A, then "+second.name+" for B", func(t *testing.T) {
				mgr, db := testManager(t)
				p := testPuppet(t, mgr, "victim")
				alice, mallory := newOlmSender("@alice:localhost"), newOlmSender("@mallory:localhost")
				joined(t, db, roomA, p.UserID, alice.user)
				joined(t, db, roomB, p.UserID, mallory.user)
				out, err := olm.NewOutboundGroupSession()
				require.NoError(t, err)
				first.send(t, p, out, roomA, alice)
				before := roomRow(t, p, roomA, out.ID())
				require.NotNil(t, before, "room A's copy is held")
				second.send(t, p, out, roomB, mallory)
				require.Equal(t, before, roomRow(t, p, roomA, out.ID()), "room A's row is untouched")
			})
		}
	}
}

// A key for room A arriving after someone named its session ID in room B (a withheld message, a
// bundle's forged key) is stored for A, and leaves B's row as it was.
func TestAKeyArrivingLaterLeavesTheOtherRoomsRowAlone(t *testing.T) {
	for _, first := range copyKinds() {
		t.Run(first.name+" for B, then the creator's key for A", func(t *testing.T) {
			mgr, db := testManager(t)
			p := testPuppet(t, mgr, "victim")
			alice, mallory := newOlmSender("@alice:localhost"), newOlmSender("@mallory:localhost")
			joined(t, db, roomA, p.UserID, alice.user)
			joined(t, db, roomB, p.UserID, mallory.user)
			out, err := olm.NewOutboundGroupSession()
			require.NoError(t, err)
			first.send(t, p, out, roomB, mallory)
			before := roomRow(t, p, roomB, out.ID())
			require.NotNil(t, before, "room B's row is held")
			alice.sendRoomKey(context.Background(), p, roomA, out.ID(), out.Key(), true)
			row := heldRow(t, p, roomA, out.ID())
			require.NotNil(t, row, "the creator's key for A is stored")
			require.Equal(t, alice.curve, row.senderKey)
			require.Equal(t, before, roomRow(t, p, roomB, out.ID()), "room B's row is untouched")
		})
	}
}

// The bot's forwards: a device that forwards "its own" session naming room B does not move the
// copy the bot imported for room A.
func TestBotForwardNamingAnotherRoomLeavesTheHeldRoomAlone(t *testing.T) {
	mgr, db := testManager(t)
	ctx := context.Background()
	bot, err := mgr.LocalPuppet(ctx, mgr.cfg.BotUserID(), "DEVBOT")
	require.NoError(t, err)
	bot.Client.DefaultHTTPRetries = 0
	alice, mallory := newOlmSender("@alice:localhost"), newOlmSender("@mallory:localhost")
	joined(t, db, roomA, bot.UserID, alice.user)
	joined(t, db, roomB, bot.UserID, mallory.user)
	out, err := olm.NewOutboundGroupSession()
	require.NoError(t, err)
	stored, _, err := bot.StoreSession(ctx, importedCopy(t, out, roomA, alice, "@inviter:localhost"))
	require.NoError(t, err)
	require.True(t, stored)
	before := roomRow(t, bot, roomA, out.ID())

	exported, err := mustSession(t, out.Key()).Export(0)
	require.NoError(t, err)
	mallory.forward(ctx, bot, &forwardedRoomKeyContent{ForwardedRoomKeyEventContent: event.ForwardedRoomKeyEventContent{
		RoomKeyEventContent: event.RoomKeyEventContent{Algorithm: id.AlgorithmMegolmV1, RoomID: roomB, SessionID: out.ID(),
			SessionKey: string(exported)},
		SenderKey: mallory.curve, SenderClaimedKey: mallory.signing,
	}})
	require.Equal(t, before, roomRow(t, bot, roomA, out.ID()), "room A's imported copy is untouched")
}
