package database_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

// The invite event the homeserver names after the send is recorded on the bundle, unless the
// invite's echo in a transaction claimed the bundle first: then the echo's event stays.
func TestSetInviteEventKeepsTheEchoThatCameFirst(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		stepClock(db)
		putSent(t, db, &database.SentBundle{BundleID: "sent", Puppet: puppetA, RoomID: roomX, Invitee: invitee, State: database.SentUploaded})
		require.NoError(t, db.SetInviteEvent(ctx, "sent", "$invite"))
		require.Equal(t, id.EventID("$invite"), getSent(t, db, "sent").InviteEventID)
		has, err := db.HasSentBundleForInvite(ctx, puppetA, roomX, "$invite")
		require.NoError(t, err)
		require.True(t, has)

		putSent(t, db, &database.SentBundle{BundleID: "echoed", Puppet: puppetA, RoomID: roomY, Invitee: invitee, State: database.SentUploaded})
		claimed, err := db.ClaimSentBundleForInvite(ctx, puppetA, roomY, invitee, "$echo")
		require.NoError(t, err)
		require.Equal(t, "echoed", claimed.BundleID)
		require.NoError(t, db.SetInviteEvent(ctx, "echoed", "$late"))
		require.Equal(t, id.EventID("$echo"), getSent(t, db, "echoed").InviteEventID, "the echo came first")

		require.NoError(t, db.SetInviteEvent(ctx, "sent", "$another"))
		require.Equal(t, id.EventID("$invite"), getSent(t, db, "sent").InviteEventID, "recorded once")
	})
}

// Bundles uploaded before the cutoff whose delivery never finished are failed with the reason an
// admin reads; newer ones and finished ones are left alone.
func TestFailStaleSentBundles(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		now := time.UnixMilli(1_700_000_000_000)
		db.Now = func() time.Time { return now }
		putSent(t, db, &database.SentBundle{BundleID: "old", Puppet: puppetA, RoomID: roomX, Invitee: invitee, State: database.SentUploaded})
		putSent(t, db, &database.SentBundle{BundleID: "old-done", Puppet: puppetA, RoomID: roomX, Invitee: invitee, State: database.SentDelivered})
		now = now.Add(time.Hour)
		putSent(t, db, &database.SentBundle{BundleID: "new", Puppet: puppetA, RoomID: roomY, Invitee: invitee, State: database.SentUploaded})

		n, err := db.FailStaleSentBundles(ctx, now.Add(-time.Minute), "delivery interrupted too long ago")
		require.NoError(t, err)
		require.EqualValues(t, 1, n)
		old := getSent(t, db, "old")
		require.Equal(t, database.SentFailed, old.State)
		require.Equal(t, "delivery interrupted too long ago", old.Reason)
		require.Equal(t, database.SentDelivered, getSent(t, db, "old-done").State)
		require.Equal(t, database.SentUploaded, getSent(t, db, "new").State)

		n, err = db.FailStaleSentBundles(ctx, now.Add(-time.Minute), "again")
		require.NoError(t, err)
		require.Zero(t, n, "a failed bundle is not failed again")
		unfinished, err := db.ListUnfinishedSentBundles(ctx)
		require.NoError(t, err)
		require.Len(t, unfinished, 1)
		require.Equal(t, "new", unfinished[0].BundleID)
	})
}

// What an admin asks of a room: every puppet's bundles for it, newest first with their
// deliveries, and the newest one built for a given user.
func TestSentBundlesOfARoom(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		stepClock(db)
		latest, err := db.LatestSentTo(ctx, roomX, invitee)
		require.NoError(t, err)
		require.Nil(t, latest)

		putSent(t, db, &database.SentBundle{BundleID: "a1", Puppet: puppetA, RoomID: roomX, Invitee: invitee, State: database.SentDelivered})
		require.NoError(t, db.PutDelivery(ctx, "a1", database.Delivery{UserID: invitee, DeviceID: "PHONE", Delivered: true}))
		putSent(t, db, &database.SentBundle{BundleID: "b1", Puppet: puppetB, RoomID: roomX, Invitee: invitee, State: database.SentNothing})
		putSent(t, db, &database.SentBundle{BundleID: "b2", Puppet: puppetB, RoomID: roomX, Invitee: alice, State: database.SentSkipped})
		putSent(t, db, &database.SentBundle{BundleID: "y1", Puppet: puppetA, RoomID: roomY, Invitee: invitee, State: database.SentDelivered})

		inRoom, err := db.ListSentBundlesInRoom(ctx, roomX)
		require.NoError(t, err)
		var ids []string
		for _, b := range inRoom {
			ids = append(ids, b.BundleID)
		}
		require.Equal(t, []string{"b2", "b1", "a1"}, ids, "the room's, newest first")
		require.Equal(t, []database.Delivery{{UserID: invitee, DeviceID: "PHONE", Delivered: true}}, inRoom[2].Devices)

		latest, err = db.LatestSentTo(ctx, roomX, invitee)
		require.NoError(t, err)
		require.Equal(t, "b1", latest.BundleID, "another puppet's newer bundle for the user")
		latest, err = db.LatestSentTo(ctx, roomY, alice)
		require.NoError(t, err)
		require.Nil(t, latest, "none for the user in that room")
	})
}

// When a puppet joins from one sender's invite, the bundles other users left for the room while
// it waited are rejected with the reason; the inviter's, finished ones, and other puppets' and
// rooms' are kept.
func TestRejectBundlesNotFromTheInviter(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		stepClock(db)
		put := func(puppet id.UserID, room id.RoomID, sender id.UserID, state string) {
			require.NoError(t, db.PutReceivedBundle(ctx, &database.ReceivedBundle{Puppet: puppet, RoomID: room, Sender: sender, State: state}))
		}
		const mallory id.UserID = "@mallory:hs"
		put(puppetA, roomX, alice, database.ReceivedPending)
		put(puppetA, roomX, bob, database.ReceivedPending)
		put(puppetA, roomX, mallory, database.ReceivedRetry)
		put(puppetA, roomX, "@done:hs", database.ReceivedImported)
		put(puppetB, roomX, bob, database.ReceivedPending)
		put(puppetA, roomY, bob, database.ReceivedPending)

		n, err := db.RejectBundlesNotFrom(ctx, puppetA, roomX, alice, "not from the inviter")
		require.NoError(t, err)
		require.EqualValues(t, 2, n)
		for sender, want := range map[id.UserID]string{
			alice: database.ReceivedPending, bob: database.ReceivedRejected, mallory: database.ReceivedRejected, "@done:hs": database.ReceivedImported,
		} {
			require.Equal(t, want, getReceived(t, db, puppetA, roomX, sender).State, "%s's bundle", sender)
		}
		require.Equal(t, "not from the inviter", getReceived(t, db, puppetA, roomX, bob).Error)
		require.Equal(t, database.ReceivedPending, getReceived(t, db, puppetB, roomX, bob).State, "another puppet's")
		require.Equal(t, database.ReceivedPending, getReceived(t, db, puppetA, roomY, bob).State, "another room's")

		inRoom, err := db.ListReceivedBundlesInRoom(ctx, roomX)
		require.NoError(t, err)
		var got []id.UserID
		for _, b := range inRoom {
			got = append(got, b.Puppet+" "+b.Sender)
		}
		require.Equal(t, []id.UserID{puppetB + " " + bob, puppetA + " @done:hs", puppetA + " " + mallory, puppetA + " " + bob, puppetA + " " + alice},
			got, "every puppet's, newest first")
	})
}

// A puppet that left or rejected a room has no invite to it any more; its other invites stay.
func TestDeleteInvite(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		for _, room := range []id.RoomID{roomX, roomY} {
			require.NoError(t, db.PutInvite(ctx, &database.Invite{Puppet: puppetA, RoomID: room, Inviter: alice, InviteEventID: id.EventID("$" + room), InvitedAt: 1}))
		}
		require.NoError(t, db.DeleteInvite(ctx, puppetA, roomX))
		inv, err := db.GetInvite(ctx, puppetA, roomX)
		require.NoError(t, err)
		require.Nil(t, inv)
		inv, err = db.GetInvite(ctx, puppetA, roomY)
		require.NoError(t, err)
		require.NotNil(t, inv)
		require.NoError(t, db.DeleteInvite(ctx, puppetA, roomX), "forgetting it twice is no error")
	})
}

// A bridge's send repeated with the same transaction ID is answered with the event the first
// one became, per user, until the record is pruned.
func TestGatewaySendsAreRememberedPerUser(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		now := time.UnixMilli(1_700_000_000_000)
		db.Now = func() time.Time { return now }
		got, err := db.GatewaySend(ctx, puppetA, "txn1")
		require.NoError(t, err)
		require.Empty(t, got)

		require.NoError(t, db.PutGatewaySend(ctx, puppetA, "txn1", "$first"))
		require.NoError(t, db.PutGatewaySend(ctx, puppetA, "txn1", "$second"), "a repeat records nothing new")
		got, err = db.GatewaySend(ctx, puppetA, "txn1")
		require.NoError(t, err)
		require.Equal(t, id.EventID("$first"), got)
		got, err = db.GatewaySend(ctx, puppetB, "txn1")
		require.NoError(t, err)
		require.Empty(t, got, "another user's transaction IDs are their own")

		now = now.Add(time.Hour)
		require.NoError(t, db.PutGatewaySend(ctx, puppetB, "txn1", "$bs"))
		require.NoError(t, db.PruneGatewaySends(ctx, now.Add(-time.Minute).UnixMilli()))
		got, err = db.GatewaySend(ctx, puppetA, "txn1")
		require.NoError(t, err)
		require.Empty(t, got, "pruned")
		got, err = db.GatewaySend(ctx, puppetB, "txn1")
		require.NoError(t, err)
		require.Equal(t, id.EventID("$bs"), got, "recent: kept")
	})
}

// An event the bridge got encrypted is forgotten once its decrypted copy is on its way, and only
// that one.
func TestDeleteGatewayLate(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		stepClock(db)
		for _, evt := range []id.EventID{"$a", "$b"} {
			require.NoError(t, db.PutGatewayLate(ctx, &database.GatewayLate{EventID: evt, RoomID: roomX, SessionID: "s", Body: "{}"}))
		}
		require.NoError(t, db.DeleteGatewayLate(ctx, "$a"))
		lates, err := db.LateGatewayEvents(ctx, "s")
		require.NoError(t, err)
		require.Len(t, lates, 1)
		require.Equal(t, id.EventID("$b"), lates[0].EventID)
	})
}

// The outbox depth an admin sees counts the events not yet acknowledged by the bridge.
func TestCountGatewayEvents(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		n, err := db.CountGatewayEvents(ctx)
		require.NoError(t, err)
		require.Zero(t, n)
		batch := []*database.GatewayEvent{roomEvent(1, roomX), roomEvent(2, roomX), roomEvent(3, roomY)}
		require.NoError(t, db.PutGatewayEvents(ctx, batch))
		n, err = db.CountGatewayEvents(ctx)
		require.NoError(t, err)
		require.Equal(t, 3, n)
		txn, err := db.CreateGatewayTxn(ctx, seqsOf(batch[0]), 1000, nil)
		require.NoError(t, err)
		require.NoError(t, db.FinishGatewayTxn(ctx, txn.ID))
		n, err = db.CountGatewayEvents(ctx)
		require.NoError(t, err)
		require.Equal(t, 2, n, "the delivered event left the outbox")
	})
}

// The puppets the maintenance loop looks after are the ready ones active since the given time,
// in user ID order.
func TestListPuppetsActiveSince(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		now := time.UnixMilli(1_700_000_000_000)
		db.Now = func() time.Time { return now }
		for _, p := range []*database.Puppet{
			{UserID: "@heirloom_c:hs", DeviceID: "C", Ready: true},
			{UserID: "@heirloom_a:hs", DeviceID: "A", Ready: true},
			{UserID: "@heirloom_idle:hs", DeviceID: "I", Ready: true},
			{UserID: "@heirloom_half:hs", DeviceID: "H"},
		} {
			require.NoError(t, db.PutPuppet(ctx, p))
		}
		require.NoError(t, db.TouchPuppet(ctx, "@heirloom_idle:hs"))
		now = now.Add(time.Hour)
		for _, user := range []id.UserID{"@heirloom_c:hs", "@heirloom_a:hs", "@heirloom_half:hs"} {
			require.NoError(t, db.TouchPuppet(ctx, user))
		}
		active, err := db.ListPuppetsActiveSince(ctx, now.Add(-time.Minute).UnixMilli())
		require.NoError(t, err)
		var users []id.UserID
		for _, p := range active {
			users = append(users, p.UserID)
		}
		require.Equal(t, []id.UserID{"@heirloom_a:hs", "@heirloom_c:hs"}, users, "ready, active, ordered; not the idle or unfinished")
	})
}
