package database_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

const (
	alice id.UserID = "@alice:hs"
	bob   id.UserID = "@bob:hs"
)

func getReceived(t *testing.T, db *database.Database, puppet id.UserID, roomID id.RoomID, sender id.UserID) *database.ReceivedBundle {
	t.Helper()
	b, err := db.GetReceivedBundle(context.Background(), puppet, roomID, sender)
	require.NoError(t, err)
	return b
}

func TestReceivedBundles(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		stepClock(db)
		require.Nil(t, getReceived(t, db, puppetA, roomX, alice), "nothing received yet")

		first := &database.ReceivedBundle{Puppet: puppetA, RoomID: roomX, Sender: alice, SenderDevice: "PHONE",
			SenderKey: "a2V5MQ", FileInfo: "aW5mbzE", State: database.ReceivedPending}
		require.NoError(t, db.PutReceivedBundle(ctx, first))
		require.NotZero(t, first.ReceivedAt)
		got := getReceived(t, db, puppetA, roomX, alice)
		require.Equal(t, first, got)

		// The import went partly: counts, error and retry bookkeeping are saved.
		got.State, got.Imported, got.Withheld, got.Skipped = database.ReceivedRetry, 5, 2, 1
		got.Error, got.Attempts, got.NextAttempt = "homeserver timeout", 3, 1234
		require.NoError(t, db.UpdateReceivedBundle(ctx, got))
		updated := getReceived(t, db, puppetA, roomX, alice)
		require.Equal(t, got, updated)
		require.Equal(t, first.ReceivedAt, updated.ReceivedAt, "an update is not a new bundle")

		// A newer bundle from the same sender replaces the older and starts afresh.
		newer := &database.ReceivedBundle{Puppet: puppetA, RoomID: roomX, Sender: alice, SenderDevice: "LAPTOP",
			SenderKey: "a2V5Mg", FileInfo: "aW5mbzI", State: database.ReceivedPending}
		require.NoError(t, db.PutReceivedBundle(ctx, newer))
		replaced := getReceived(t, db, puppetA, roomX, alice)
		require.Equal(t, &database.ReceivedBundle{Puppet: puppetA, RoomID: roomX, Sender: alice, SenderDevice: "LAPTOP",
			SenderKey: "a2V5Mg", FileInfo: "aW5mbzI", State: database.ReceivedPending,
			ReceivedAt: newer.ReceivedAt, UpdatedAt: newer.UpdatedAt, Version: 2}, replaced)
		require.Greater(t, replaced.ReceivedAt, first.ReceivedAt)

		// A save of the replaced bundle changes nothing, and says so when it must.
		got.State = database.ReceivedImported
		require.NoError(t, db.UpdateReceivedBundle(ctx, got))
		require.ErrorIs(t, db.SaveImportedBundle(ctx, got), database.ErrBundleSuperseded)
		require.Equal(t, database.ReceivedPending, getReceived(t, db, puppetA, roomX, alice).State)

		// Other senders, rooms and puppets keep bundles of their own.
		for _, b := range []*database.ReceivedBundle{
			{Puppet: puppetA, RoomID: roomX, Sender: bob, State: database.ReceivedImported},
			{Puppet: puppetA, RoomID: roomY, Sender: alice, State: database.ReceivedImported},
			{Puppet: puppetB, RoomID: roomX, Sender: alice, State: database.ReceivedImported},
		} {
			require.NoError(t, db.PutReceivedBundle(ctx, b))
		}
		require.Equal(t, "aW5mbzI", getReceived(t, db, puppetA, roomX, alice).FileInfo)
		list, err := db.ListReceivedBundles(ctx, puppetA)
		require.NoError(t, err)
		require.Len(t, list, 3)
		require.Equal(t, []id.RoomID{roomY, roomX, roomX}, []id.RoomID{list[0].RoomID, list[1].RoomID, list[2].RoomID}, "newest first")
		require.Equal(t, []id.UserID{alice, bob, alice}, []id.UserID{list[0].Sender, list[1].Sender, list[2].Sender})
		list, err = db.ListReceivedBundles(ctx, "@heirloom_nobody:hs")
		require.NoError(t, err)
		require.Empty(t, list)
	})
}

func TestListDueRetries(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		now := time.Now()
		for _, b := range []struct {
			sender id.UserID
			state  string
			next   time.Time
		}{
			{"@due:hs", database.ReceivedRetry, now.Add(-time.Minute)},
			{"@never-scheduled:hs", database.ReceivedRetry, time.UnixMilli(0)},
			{"@later:hs", database.ReceivedRetry, now.Add(time.Hour)},
			{"@pending:hs", database.ReceivedPending, now.Add(-time.Minute)},
			{"@failed:hs", database.ReceivedFailed, now.Add(-time.Minute)},
		} {
			rb := &database.ReceivedBundle{Puppet: puppetA, RoomID: roomX, Sender: b.sender, State: database.ReceivedPending}
			require.NoError(t, db.PutReceivedBundle(ctx, rb))
			rb.State, rb.NextAttempt, rb.Attempts = b.state, b.next.UnixMilli(), 1
			require.NoError(t, db.UpdateReceivedBundle(ctx, rb))
		}
		due, err := db.ListDueRetries(ctx)
		require.NoError(t, err)
		var senders []id.UserID
		for _, b := range due {
			senders = append(senders, b.Sender)
		}
		require.ElementsMatch(t, []id.UserID{"@due:hs", "@never-scheduled:hs"}, senders)
	})
}

func TestInvites(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		inv, err := db.GetInvite(ctx, puppetA, roomX)
		require.NoError(t, err)
		require.Nil(t, inv)
		require.False(t, inv.Confirmed())
		require.NoError(t, db.MarkInviteAccepted(ctx, puppetA, roomX, "$one"))
		require.NoError(t, db.ConfirmJoin(ctx, puppetA, roomX, "$one", "$join"))
		inv, err = db.GetInvite(ctx, puppetA, roomX)
		require.NoError(t, err)
		require.Nil(t, inv, "joining without an invite records nothing")

		require.NoError(t, db.PutInvite(ctx, &database.Invite{Puppet: puppetA, RoomID: roomX, Inviter: alice, InviteEventID: "$one", InvitedAt: 1000}))
		inv, err = db.GetInvite(ctx, puppetA, roomX)
		require.NoError(t, err)
		require.Equal(t, &database.Invite{Puppet: puppetA, RoomID: roomX, Inviter: alice, InviteEventID: "$one", InvitedAt: 1000}, inv)

		// Accepting another invite than the stored one changes nothing.
		require.NoError(t, db.MarkInviteAccepted(ctx, puppetA, roomX, "$other"))
		inv, err = db.GetInvite(ctx, puppetA, roomX)
		require.NoError(t, err)
		require.Zero(t, inv.AcceptedAt)

		before := time.Now().UnixMilli()
		require.NoError(t, db.MarkInviteAccepted(ctx, puppetA, roomX, "$one"))
		inv, err = db.GetInvite(ctx, puppetA, roomX)
		require.NoError(t, err)
		require.GreaterOrEqual(t, inv.AcceptedAt, before)
		require.LessOrEqual(t, inv.AcceptedAt, time.Now().UnixMilli())
		require.False(t, inv.Confirmed(), "accepted, but the join that replaced the invite is not known yet")
		acceptedAt := inv.AcceptedAt

		// A join confirms only the invite it replaced.
		require.NoError(t, db.ConfirmJoin(ctx, puppetA, roomX, "$other", "$join"))
		inv, err = db.GetInvite(ctx, puppetA, roomX)
		require.NoError(t, err)
		require.False(t, inv.Confirmed())
		require.NoError(t, db.ConfirmJoin(ctx, puppetA, roomX, "$one", "$join"))
		inv, err = db.GetInvite(ctx, puppetA, roomX)
		require.NoError(t, err)
		require.True(t, inv.Confirmed())
		require.Equal(t, id.EventID("$join"), inv.JoinEventID)
		require.Equal(t, acceptedAt, inv.AcceptedAt, "the first acceptance counts")

		// The same invite seen again (a replayed transaction, a resync) keeps the acceptance.
		require.NoError(t, db.PutInvite(ctx, &database.Invite{Puppet: puppetA, RoomID: roomX, Inviter: alice, InviteEventID: "$one", InvitedAt: 1000}))
		inv, err = db.GetInvite(ctx, puppetA, roomX)
		require.NoError(t, err)
		require.True(t, inv.Confirmed())
		require.Equal(t, acceptedAt, inv.AcceptedAt)

		// A new invite (after leaving) from someone else starts over: only its inviter counts now.
		require.NoError(t, db.PutInvite(ctx, &database.Invite{Puppet: puppetA, RoomID: roomX, Inviter: bob, InviteEventID: "$two", InvitedAt: 2000}))
		inv, err = db.GetInvite(ctx, puppetA, roomX)
		require.NoError(t, err)
		require.Equal(t, &database.Invite{Puppet: puppetA, RoomID: roomX, Inviter: bob, InviteEventID: "$two", InvitedAt: 2000}, inv)

		// A join made outside the API (seen in the transaction stream) accepts and confirms at once.
		require.NoError(t, db.ConfirmJoin(ctx, puppetA, roomX, "$two", "$join2"))
		inv, err = db.GetInvite(ctx, puppetA, roomX)
		require.NoError(t, err)
		require.True(t, inv.Confirmed())
		require.NotZero(t, inv.AcceptedAt)
	})
}

func TestListAcceptedInvites(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		for _, room := range []id.RoomID{"!accepted:hs", "!old:hs", "!waiting:hs"} {
			require.NoError(t, db.PutInvite(ctx, &database.Invite{Puppet: puppetA, RoomID: room, Inviter: alice, InviteEventID: "$" + id.EventID(room), InvitedAt: 1}))
		}
		for _, room := range []id.RoomID{"!accepted:hs", "!old:hs"} {
			require.NoError(t, db.MarkInviteAccepted(ctx, puppetA, room, "$"+id.EventID(room)))
		}
		_, err := db.Raw.Exec(ctx, `UPDATE puppet_invite SET accepted_at=$1 WHERE room_id='!old:hs'`, time.Now().Add(-48*time.Hour).UnixMilli())
		require.NoError(t, err)

		list, err := db.ListAcceptedInvites(ctx, time.Now().Add(-24*time.Hour))
		require.NoError(t, err)
		require.Len(t, list, 1)
		require.Equal(t, id.RoomID("!accepted:hs"), list[0].RoomID)
		require.Equal(t, alice, list[0].Inviter)
		require.NotZero(t, list[0].AcceptedAt)

		list, err = db.ListAcceptedInvites(ctx, time.UnixMilli(0))
		require.NoError(t, err)
		require.Len(t, list, 2, "never the ones not accepted")
	})
}

func TestExpireAcceptWindow(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		const (
			oldRoom   id.RoomID = "!old:hs"
			freshRoom id.RoomID = "!fresh:hs"
			openRoom  id.RoomID = "!not-accepted:hs"
		)
		for _, room := range []id.RoomID{oldRoom, freshRoom, openRoom} {
			require.NoError(t, db.PutInvite(ctx, &database.Invite{Puppet: puppetA, RoomID: room, Inviter: alice, InviteEventID: "$" + id.EventID(room), InvitedAt: 1}))
		}
		for _, room := range []id.RoomID{oldRoom, freshRoom} {
			require.NoError(t, db.MarkInviteAccepted(ctx, puppetA, room, "$"+id.EventID(room)))
		}
		_, err := db.Raw.Exec(ctx, `UPDATE puppet_invite SET accepted_at=$1 WHERE room_id=$2`, time.Now().Add(-25*time.Hour).UnixMilli(), oldRoom)
		require.NoError(t, err)

		bundles := []struct {
			room    id.RoomID
			sender  id.UserID
			puppet  id.UserID
			state   string
			wantNew string
		}{
			{oldRoom, alice, puppetA, database.ReceivedPending, database.ReceivedExpired},
			{oldRoom, bob, puppetA, database.ReceivedRetry, database.ReceivedExpired},
			{oldRoom, "@carol:hs", puppetA, database.ReceivedImported, database.ReceivedImported},
			{oldRoom, "@dave:hs", puppetA, database.ReceivedRejected, database.ReceivedRejected},
			{oldRoom, alice, puppetB, database.ReceivedPending, database.ReceivedPending}, // another puppet's
			{freshRoom, alice, puppetA, database.ReceivedPending, database.ReceivedPending},
			{openRoom, alice, puppetA, database.ReceivedPending, database.ReceivedPending},
		}
		for _, b := range bundles {
			rb := &database.ReceivedBundle{Puppet: b.puppet, RoomID: b.room, Sender: b.sender, State: b.state}
			require.NoError(t, db.PutReceivedBundle(ctx, rb))
		}

		dropped, err := db.ExpireAcceptWindow(ctx, 24*time.Hour)
		require.NoError(t, err)
		require.Equal(t, int64(1), dropped)

		for _, b := range bundles {
			got := getReceived(t, db, b.puppet, b.room, b.sender)
			require.Equal(t, b.wantNew, got.State, "bundle of %s from %s in %s", b.puppet, b.sender, b.room)
			if b.wantNew == database.ReceivedExpired {
				require.Contains(t, got.Error, "accept window")
			} else {
				require.Empty(t, got.Error)
			}
		}
		for room, want := range map[id.RoomID]bool{oldRoom: false, freshRoom: true, openRoom: true} {
			inv, err := db.GetInvite(ctx, puppetA, room)
			require.NoError(t, err)
			require.Equal(t, want, inv != nil, "invite to %s kept", room)
		}

		dropped, err = db.ExpireAcceptWindow(ctx, 24*time.Hour)
		require.NoError(t, err)
		require.Zero(t, dropped, "nothing left to expire")
	})
}
