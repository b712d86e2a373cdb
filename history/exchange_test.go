package history

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
)

// Both sides of MSC4268 at once: one puppet invites another (another bridge's, on the same
// homeserver), and the invitee reads the room's history after it joins. Every step goes through
// the homeserver: the bundle's Olm message waits in the invitee device's inbox, as Synapse leaves
// the messages it does not push to an appservice.

// inviteMember is the member event the homeserver holds for the user now, as the transaction
// stream brings it.
func inviteMember(t *testing.T, hs *deliveryHomeserver, user id.UserID) *event.Event {
	t.Helper()
	eventID, membership := hs.member(user)
	require.Equal(t, event.MembershipInvite, membership)
	var sender id.UserID
	hs.do(func(hs *deliveryHomeserver) { sender = hs.members[user]["sender"].(id.UserID) })
	return echoOf(eventID, sender, user)
}

func TestAPuppetReadsTheHistoryAnotherPuppetShared(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, dbCfg config.Database) {
		ctx := context.Background()
		r := newInviteRoomOn(t, dbCfg)
		dst := provisioned(t, r.env, "dst")
		res, err := r.env.svc.Invite(ctx, r.p, benchRoom, dst.UserID, true)
		require.NoError(t, err)
		require.Equal(t, database.SentDelivered, res.Bundle.State, res.Bundle.Reason)
		require.Equal(t, []DeliveryReport{{UserID: dst.UserID, DeviceID: dst.DeviceID, Delivered: true}}, res.Bundle.Devices)

		r.env.svc.TrackMembership(ctx, inviteMember(t, r.hs, dst.UserID))
		joined, err := r.env.svc.Join(ctx, dst, benchRoom)
		require.NoError(t, err)
		require.NotNil(t, joined.Bundle, joined.History)
		require.Equal(t, database.ReceivedImported, joined.Bundle.State, joined.Bundle.Error)
		require.Equal(t, r.p.UserID, joined.Bundle.Sender)
		require.Equal(t, 18, joined.Bundle.Imported)
		require.Equal(t, 2, joined.Bundle.Withheld)
		require.Contains(t, joined.History, "imported 18 keys shared by "+r.p.UserID.String())

		for sessionID, shared := range heldSessions(t, r.p) {
			held, err := dst.Store.GetGroupSession(ctx, benchRoom, sessionID)
			if !shared {
				require.Nil(t, held, "a session the inviter may not share is not passed on")
				continue
			}
			require.NoError(t, err)
			require.NotNil(t, held, "the invitee holds every shared session")
			require.Equal(t, id.KeySourceForward, held.KeySource)
			require.Equal(t, r.p.UserID, held.SourceUser, "on the inviter's word")
		}
		listed, err := r.env.svc.Bundles(ctx, dst.UserID)
		require.NoError(t, err)
		require.Len(t, listed.Received, 1)
		require.Equal(t, joined.Bundle, listed.Received[0])
	})
}

// pushInbox hands the puppet's device the to-device messages waiting for it, as Synapse pushes
// them to the appservice in a transaction.
func pushInbox(t *testing.T, r *inviteRoom, p *e2ee.Puppet) {
	t.Helper()
	var events []*event.Event
	r.hs.do(func(hs *deliveryHomeserver) {
		events = hs.inbox[p.UserID][p.DeviceID]
		delete(hs.inbox[p.UserID], p.DeviceID)
	})
	require.NotEmpty(t, events)
	for _, evt := range events {
		evt.ToUserID, evt.ToDeviceID = p.UserID, p.DeviceID
		require.NoError(t, evt.Content.ParseRaw(evt.Type))
		require.True(t, r.env.mgr.RouteToDevice(context.Background(), evt), "the puppet's device takes it")
	}
}

// receivedBy returns the state of the bundle the puppet received from the inviter in benchRoom.
func receivedBy(t *testing.T, r *inviteRoom, p *e2ee.Puppet) *database.ReceivedBundle {
	t.Helper()
	b, err := r.env.db.GetReceivedBundle(context.Background(), p.UserID, benchRoom, r.p.UserID)
	require.NoError(t, err)
	return b
}

// However the invitee comes to join (through the API before heirloom saw the invite, by
// history_sharing.auto_join, or by a join heirloom only sees in the transaction stream) and
// whenever the bundle arrives (waiting in the inbox, or pushed after the join), the history is
// imported once the join from the inviter's invite is known.
func TestInviteeImportsHoweverItJoins(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		join func(t *testing.T, r *inviteRoom, dst *e2ee.Puppet)
	}{
		{"joined through the API before the invite's transaction came", func(t *testing.T, r *inviteRoom, dst *e2ee.Puppet) {
			_, err := r.env.svc.Join(ctx, dst, benchRoom)
			require.NoError(t, err)
		}},
		{"joined by auto_join", func(t *testing.T, r *inviteRoom, dst *e2ee.Puppet) {
			r.env.svc.cfg.HistorySharing.AutoJoin = []string{"localhost"}
			invite := inviteMember(t, r.hs, dst.UserID)
			r.env.svc.TrackMembership(ctx, invite)
			r.env.svc.InviteReceived(ctx, invite)
			waitForBackground(t, r.env.svc)
			_, membership := r.hs.member(dst.UserID)
			require.Equal(t, event.MembershipJoin, membership, "the puppet joined by itself")
		}},
		{"joined outside the API, the bundle pushed afterwards", func(t *testing.T, r *inviteRoom, dst *e2ee.Puppet) {
			r.env.svc.TrackMembership(ctx, inviteMember(t, r.hs, dst.UserID))
			join := joinEvent(t, r.hs, dst.UserID)
			r.env.svc.TrackMembership(ctx, join)
			require.NoError(t, r.env.db.StateStore.SetMembership(ctx, benchRoom, dst.UserID, event.MembershipJoin))
			r.env.svc.ObserveJoin(ctx, join)
			pushInbox(t, r, dst)
			waitForBackground(t, r.env.svc)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newInviteRoom(t)
			dst := provisioned(t, r.env, "dst")
			_, err := r.env.svc.Invite(ctx, r.p, benchRoom, dst.UserID, true)
			require.NoError(t, err)
			tc.join(t, r, dst)
			b := receivedBy(t, r, dst)
			require.NotNil(t, b)
			require.Equal(t, database.ReceivedImported, b.State, b.Error)
			require.Equal(t, 18, b.Imported)
		})
	}
}

// With auto_join not allowing the inviter, the puppet stays invited: nothing is downloaded.
func TestInviteNotAutoJoinedImportsNothing(t *testing.T) {
	ctx := context.Background()
	r := newInviteRoom(t)
	dst := provisioned(t, r.env, "dst")
	_, err := r.env.svc.Invite(ctx, r.p, benchRoom, dst.UserID, true)
	require.NoError(t, err)
	r.env.svc.cfg.HistorySharing.AutoJoin = []string{"@someone-else:localhost", "other.example"}
	invite := inviteMember(t, r.hs, dst.UserID)
	r.env.svc.TrackMembership(ctx, invite)
	r.env.svc.InviteReceived(ctx, invite)
	pushInbox(t, r, dst)
	waitForBackground(t, r.env.svc)
	_, membership := r.hs.member(dst.UserID)
	require.Equal(t, event.MembershipInvite, membership)
	b := receivedBy(t, r, dst)
	require.NotNil(t, b)
	require.Equal(t, database.ReceivedPending, b.State, "the bundle waits for a join")
	r.hs.do(func(hs *deliveryHomeserver) {
		require.Zero(t, hs.downloads, "nothing is downloaded before a join (no DoS by bundle)")
	})
}
