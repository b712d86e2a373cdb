package e2ee

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// A puppet's sends into an encrypted room, read by the other members' devices: each gets the room
// key over Olm through the homeserver (the members here are another heirloom's puppets, so a
// real Olm machine decrypts on the other side), and the key changes when the room does.

const sendRoom id.RoomID = "!send:localhost"

// sendRoomOn makes sendRoom on the homeserver: created by the first user, encrypted, with the
// history visibility, the users joined.
func sendRoomOn(hs *homeserver, visibility event.HistoryVisibility, joined ...id.UserID) {
	creator := joined[0]
	hs.setState(sendRoom, creator, event.StateCreate, "", map[string]any{"room_version": "11"})
	hs.setState(sendRoom, creator, event.StateEncryption, "", map[string]any{"algorithm": id.AlgorithmMegolmV1})
	hs.setState(sendRoom, creator, event.StateHistoryVisibility, "", map[string]any{"history_visibility": visibility})
	for _, u := range joined {
		hs.setMember(sendRoom, u, event.MembershipJoin)
	}
}

// twoHeirlooms is a homeserver with a puppet of one heirloom (alice) and puppets of another
// (bob, dave), all provisioned: for alice, the others are remote users like any other.
type twoHeirlooms struct {
	hs        *homeserver
	mine      *Manager
	theirs    *Manager
	alice     *Puppet
	bob, dave *Puppet
}

func newTwoHeirlooms(t *testing.T) *twoHeirlooms {
	t.Helper()
	hs := newHomeserver(t)
	h := &twoHeirlooms{hs: hs, mine: testManagerAt(t, hs.URL), theirs: testManagerAt(t, hs.URL)}
	h.alice = provisioned(t, h.mine, "@heirloom_alice:localhost")
	h.bob = provisioned(t, h.theirs, "@heirloom_bob:localhost")
	h.dave = provisioned(t, h.theirs, "@heirloom_dave:localhost")
	return h
}

func text(body string) *event.MessageEventContent {
	return &event.MessageEventContent{MsgType: event.MsgText, Body: body}
}

// read has the puppet sweep its device's inbox (the room keys sent to it) and returns what it can
// read of the room: each event's body, or its decryption error.
func read(t *testing.T, p *Puppet) []string {
	t.Helper()
	ctx := context.Background()
	_, err := p.SweepToDevice(ctx, true)
	require.NoError(t, err)
	events, err := p.Timeline(ctx, sendRoom, 50)
	require.NoError(t, err)
	var out []string
	for _, evt := range events {
		if evt.Type != event.EventMessage.Type && evt.Type != event.EventEncrypted.Type {
			continue
		}
		if !evt.Decrypted && evt.Type == event.EventEncrypted.Type {
			out = append(out, "error: "+evt.Error)
			continue
		}
		var content event.MessageEventContent
		require.NoError(t, json.Unmarshal(evt.Content, &content))
		out = append(out, content.Body)
	}
	return out
}

// roomKeysTo counts the Olm messages the homeserver carried to the puppet's device.
func (h *twoHeirlooms) roomKeysTo(p *Puppet) int {
	return len(h.hs.sentTo(event.ToDeviceEncrypted, p.UserID, p.DeviceID))
}

// Every member's device reads what the puppet sends: the room key goes to each once, over Olm,
// and a second message in the same session costs no second key.
func TestMembersReadWhatAPuppetSends(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	sendRoomOn(h.hs, event.HistoryVisibilityShared, h.alice.UserID, h.bob.UserID, h.dave.UserID)
	first, err := h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("hello"))
	require.NoError(t, err)
	second, err := h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("again"))
	require.NoError(t, err)
	require.NotEqual(t, first, second)
	for _, evt := range h.hs.timeline(sendRoom, event.EventMessage) {
		t.Fatalf("a message went out in the clear: %s", evt.Content.VeryRaw)
	}
	require.Equal(t, 1, h.roomKeysTo(h.bob), "one room key per device")
	require.Equal(t, []string{"hello", "again"}, read(t, h.bob))
	require.Equal(t, []string{"hello", "again"}, read(t, h.dave))

	events, err := h.bob.Timeline(ctx, sendRoom, 50)
	require.NoError(t, err)
	last := events[len(events)-1]
	require.Equal(t, h.alice.UserID, last.Sender)
	require.Equal(t, trustCrossSigned, last.Trust, "alice's device is signed by her identity")
	require.Empty(t, last.KeysSharedBy, "the key came from its sender, not from a bundle")
	held, err := h.bob.Store.GetGroupSession(ctx, sendRoom, last.SessionID)
	require.NoError(t, err)
	require.True(t, *held.SharedHistory, "sent while history was shared: it may go into bob's bundles")
}

// A member who left gets no key for what is sent after: the session is replaced, and the new
// key goes only to those still in the room.
func TestRoomKeyRotatesWhenAMemberLeaves(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	sendRoomOn(h.hs, event.HistoryVisibilityShared, h.alice.UserID, h.bob.UserID, h.dave.UserID)
	_, err := h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("before"))
	require.NoError(t, err)
	require.Equal(t, []string{"before"}, read(t, h.dave))
	h.hs.setMember(sendRoom, h.dave.UserID, event.MembershipLeave)
	_, err = h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("after"))
	require.NoError(t, err)

	require.Equal(t, []string{"before", "after"}, read(t, h.bob))
	require.Equal(t, 2, h.roomKeysTo(h.bob), "a new session, a new key")
	require.Equal(t, 1, h.roomKeysTo(h.dave), "the one who left got only the first")
	daveReads := read(t, h.dave)
	require.Equal(t, "before", daveReads[0])
	require.Equal(t, "error: "+errNoKey, daveReads[1])
}

// Invited members read what is sent while they are invited, unless the room's history is for
// joined members only; and a key sent while history is not shared is never marked shareable.
func TestInvitedMembersGetTheKeyUnlessHistoryIsForJoinedOnly(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		visibility event.HistoryVisibility
		invitedGet bool
		shared     bool
	}{
		{event.HistoryVisibilityShared, true, true},
		{event.HistoryVisibilityInvited, true, false},
		{event.HistoryVisibilityJoined, false, false},
	} {
		t.Run(string(tc.visibility), func(t *testing.T) {
			h := newTwoHeirlooms(t)
			sendRoomOn(h.hs, tc.visibility, h.alice.UserID, h.bob.UserID)
			h.hs.setMember(sendRoom, h.dave.UserID, event.MembershipInvite)
			_, err := h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("hi"))
			require.NoError(t, err)
			require.Equal(t, tc.invitedGet, h.roomKeysTo(h.dave) == 1)
			require.Equal(t, []string{"hi"}, read(t, h.bob))
			events, err := h.bob.Timeline(ctx, sendRoom, 50)
			require.NoError(t, err)
			held, err := h.bob.Store.GetGroupSession(ctx, sendRoom, events[len(events)-1].SessionID)
			require.NoError(t, err)
			require.Equal(t, tc.shared, *held.SharedHistory)
		})
	}
}

// A member's device with no one-time key left on the homeserver, and no fallback key (a client
// that uploads none), gets no key now (no Olm session can be started) and the send goes on; once
// the device uploads keys again, the next send brings it the key.
func TestDeviceWithoutOneTimeKeysGetsTheKeyLater(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	sendRoomOn(h.hs, event.HistoryVisibilityShared, h.alice.UserID, h.bob.UserID)
	h.hs.do(func(hs *homeserver) {
		clear(hs.OTKs[h.bob.UserID][h.bob.DeviceID])
		clear(hs.Fallback[h.bob.UserID][h.bob.DeviceID])
	})
	_, err := h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("lost"))
	require.NoError(t, err)
	require.Zero(t, h.roomKeysTo(h.bob))

	var count int
	h.hs.do(func(hs *homeserver) { count = len(hs.OTKs[h.bob.UserID][h.bob.DeviceID]) })
	h.theirs.RouteOTKCounts(ctx, h.bob.UserID, h.bob.DeviceID, mautrix.OTKCount{SignedCurve25519: count})
	h.hs.do(func(hs *homeserver) {
		require.NotEmpty(t, hs.OTKs[h.bob.UserID][h.bob.DeviceID], "bob's device uploaded keys again")
	})
	_, err = h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("found"))
	require.NoError(t, err)
	require.Equal(t, 1, h.roomKeysTo(h.bob))
	require.Equal(t, []string{"found"}, read(t, h.bob)[1:], "from the message the key came with")
}

// A send with the caller's transaction ID, repeated, is answered with the first event: the
// homeserver has one event.
func TestRepeatedTransactionSendsOneEvent(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	sendRoomOn(h.hs, event.HistoryVisibilityShared, h.alice.UserID, h.bob.UserID)
	first, err := h.alice.SendMessageTxn(ctx, sendRoom, event.EventMessage, text("once"), "txn1")
	require.NoError(t, err)
	again, err := h.alice.SendMessageTxn(ctx, sendRoom, event.EventMessage, text("once"), "txn1")
	require.NoError(t, err)
	require.Equal(t, first, again)
	require.Len(t, h.hs.timeline(sendRoom, event.EventEncrypted), 1)
}

// Into a room the homeserver says has no m.room.encryption, a send goes in the clear; into one
// encrypted with settings heirloom cannot use, nothing goes; into one the puppet cannot see,
// nothing goes either.
func TestSendFollowsTheRoomsEncryption(t *testing.T) {
	ctx := context.Background()
	t.Run("unencrypted", func(t *testing.T) {
		h := newTwoHeirlooms(t)
		h.hs.setState(sendRoom, h.alice.UserID, event.StateCreate, "", map[string]any{"room_version": "11"})
		h.hs.setMember(sendRoom, h.alice.UserID, event.MembershipJoin)
		h.hs.setMember(sendRoom, h.bob.UserID, event.MembershipJoin)
		_, err := h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("plain"))
		require.NoError(t, err)
		require.Len(t, h.hs.timeline(sendRoom, event.EventMessage), 1)
		require.Zero(t, h.roomKeysTo(h.bob))
	})
	t.Run("encrypted with an algorithm heirloom cannot use", func(t *testing.T) {
		h := newTwoHeirlooms(t)
		h.hs.setState(sendRoom, h.alice.UserID, event.StateCreate, "", map[string]any{"room_version": "11"})
		h.hs.setState(sendRoom, h.alice.UserID, event.StateEncryption, "", map[string]any{"algorithm": "m.unknown.v9"})
		h.hs.setMember(sendRoom, h.alice.UserID, event.MembershipJoin)
		_, err := h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("secret"))
		require.ErrorIs(t, err, ErrUnusableEncryption)
		require.Empty(t, h.hs.timeline(sendRoom, event.EventMessage))
		require.Empty(t, h.hs.timeline(sendRoom, event.EventEncrypted))
	})
	t.Run("a room the puppet cannot see", func(t *testing.T) {
		h := newTwoHeirlooms(t)
		_, err := h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("secret"))
		require.ErrorIs(t, err, ErrUnknownRoom)
	})
	t.Run("the homeserver fails", func(t *testing.T) {
		h := newTwoHeirlooms(t)
		sendRoomOn(h.hs, event.HistoryVisibilityShared, h.alice.UserID, h.bob.UserID)
		h.hs.do(func(hs *homeserver) { hs.fail["members"] = http.StatusBadGateway })
		_, err := h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("secret"))
		require.Error(t, err)
		require.Empty(t, h.hs.timeline(sendRoom, event.EventEncrypted), "no message without its key shared")
	})
}
