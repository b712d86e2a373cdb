package database_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

// Only delivered invite bundles, built within the window, with their invite and the invitee's
// identity recorded, are offered to the invitee's new devices.
func TestListRedeliverable(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		base := time.UnixMilli(1_700_000_000_000)
		now := base
		db.Now = func() time.Time { return now }
		put := func(bundleID string, mutate func(b *database.SentBundle)) {
			b := &database.SentBundle{BundleID: bundleID, Puppet: puppetA, RoomID: roomX, Invitee: invitee, State: database.SentDelivered,
				InviteEventID: id.EventID("$" + bundleID), InviteeMasterKey: "bWFzdGVy", FileInfo: "c2VhbGVk"}
			if mutate != nil {
				mutate(b)
			}
			putSent(t, db, b)
		}
		put("ok", nil)
		put("other-invitee", func(b *database.SentBundle) { b.Invitee = "@dave:hs" })
		put("uploaded", func(b *database.SentBundle) { b.State = database.SentUploaded })
		put("skipped", func(b *database.SentBundle) { b.State, b.FileInfo = database.SentSkipped, "" })
		put("reshare", func(b *database.SentBundle) { b.Kind = database.SentKindReshare })
		put("no-identity", func(b *database.SentBundle) { b.InviteeMasterKey = "" })
		put("no-invite", func(b *database.SentBundle) { b.InviteEventID = "" })
		put("invite-failed", func(b *database.SentBundle) { b.InviteEventID = "" })
		require.NoError(t, db.SetInviteFailed(ctx, "invite-failed"))
		now = base.Add(-48 * time.Hour)
		put("old", nil)
		now = base

		got, err := db.ListRedeliverable(ctx, invitee, base.Add(-24*time.Hour))
		require.NoError(t, err)
		var ids []string
		for _, b := range got {
			ids = append(ids, b.BundleID)
		}
		require.Equal(t, []string{"ok"}, ids)
	})
}

// A device added later stays marked as such whatever its later outcome, and the bundle's report
// lists it with the others.
func TestDeliveryAddedLaterSticks(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		putSent(t, db, &database.SentBundle{BundleID: "b", Puppet: puppetA, RoomID: roomX, Invitee: invitee, State: database.SentDelivered})
		require.NoError(t, db.PutDelivery(ctx, "b", database.Delivery{UserID: invitee, DeviceID: "FIRST", Delivered: true}))
		require.NoError(t, db.PutDelivery(ctx, "b", database.Delivery{UserID: invitee, DeviceID: "PHONE", Reason: "not signed", AddedLater: true}))
		require.NoError(t, db.PutDelivery(ctx, "b", database.Delivery{UserID: invitee, DeviceID: "PHONE", Delivered: true}))
		require.Equal(t, []database.Delivery{
			{UserID: invitee, DeviceID: "FIRST", Delivered: true},
			{UserID: invitee, DeviceID: "PHONE", Delivered: true, AddedLater: true},
		}, getSent(t, db, "b").Devices)
	})
}

// retry: failed and retrying bundles of one puppet in one room become due now, counted from zero;
// the others are left alone. The counts an admin watches follow.
func TestRetryNowAndCounts(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		put := func(puppet id.UserID, room id.RoomID, sender id.UserID, state string) {
			b := &database.ReceivedBundle{Puppet: puppet, RoomID: room, Sender: sender, SenderDevice: "DEV",
				SenderKey: "a2V5", FileInfo: "c2VhbGVk", State: database.ReceivedPending}
			require.NoError(t, db.PutReceivedBundle(ctx, b))
			b.State, b.Attempts, b.Error = state, 8, "why"
			require.NoError(t, db.UpdateReceivedBundle(ctx, b))
		}
		put(puppetA, roomX, "@alice:hs", database.ReceivedFailed)
		put(puppetA, roomX, "@bob:hs", database.ReceivedImported)
		put(puppetA, roomY, "@alice:hs", database.ReceivedFailed)
		put(puppetB, roomX, "@alice:hs", database.ReceivedRetry)
		putSent(t, db, &database.SentBundle{BundleID: "s1", Puppet: puppetA, RoomID: roomX, Invitee: invitee, State: database.SentUploaded})
		putSent(t, db, &database.SentBundle{BundleID: "s2", Puppet: puppetA, RoomID: roomX, Invitee: invitee, State: database.SentFailed})

		counts, err := db.CountBundles(ctx)
		require.NoError(t, err)
		require.Equal(t, &database.BundleCounts{Sending: 1, SendFailed: 1, Pending: 0, Retrying: 1, Failed: 2}, counts)

		retryable, err := db.ListRetryable(ctx, roomX)
		require.NoError(t, err)
		require.Len(t, retryable, 2)

		n, err := db.RetryNow(ctx, puppetA, roomX)
		require.NoError(t, err)
		require.Equal(t, int64(1), n)
		b, err := db.GetReceivedBundle(ctx, puppetA, roomX, "@alice:hs")
		require.NoError(t, err)
		require.Equal(t, database.ReceivedRetry, b.State)
		require.Zero(t, b.Attempts)
		due, err := db.ListDueRetries(ctx)
		require.NoError(t, err)
		require.Len(t, due, 2, "the reset bundle and puppet B's retry are due")
		for _, other := range []struct {
			puppet id.UserID
			room   id.RoomID
			sender id.UserID
			state  string
		}{{puppetA, roomX, "@bob:hs", database.ReceivedImported}, {puppetA, roomY, "@alice:hs", database.ReceivedFailed}} {
			b, err = db.GetReceivedBundle(ctx, other.puppet, other.room, other.sender)
			require.NoError(t, err)
			require.Equal(t, other.state, b.State)
		}
	})
}

// The bot's refusals: the first is reported as first, later ones are not, and they last.
func TestRefusals(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		refused, err := db.Refused(ctx, "@mallory:hs")
		require.NoError(t, err)
		require.False(t, refused)
		first, err := db.RecordRefusal(ctx, "@mallory:hs")
		require.NoError(t, err)
		require.True(t, first)
		first, err = db.RecordRefusal(ctx, "@mallory:hs")
		require.NoError(t, err)
		require.False(t, first)
		refused, err = db.Refused(ctx, "@mallory:hs")
		require.NoError(t, err)
		require.True(t, refused)
	})
}

// Activity is recorded per puppet, provisioning again keeps it, and the bot is left out of the count.
func TestPuppetActivity(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		now := time.UnixMilli(1_700_000_000_000)
		db.Now = func() time.Time { return now }
		bot := &database.Puppet{UserID: "@bot:hs", DeviceID: "BOTDEV", Ready: true}
		bob := &database.Puppet{UserID: "@heirloom_bob:hs", DeviceID: "BOBDEV", Ready: true}
		require.NoError(t, db.PutPuppet(ctx, bot))
		require.NoError(t, db.PutPuppet(ctx, bob))
		require.NoError(t, db.TouchPuppet(ctx, bob.UserID))
		require.NoError(t, db.PutPuppet(ctx, bob))
		got, err := db.GetPuppet(ctx, bob.UserID)
		require.NoError(t, err)
		require.Equal(t, now.UnixMilli(), got.LastActiveAt)
		n, err := db.CountPuppets(ctx, bot.UserID)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		all, err := db.ListPuppets(ctx)
		require.NoError(t, err)
		require.Len(t, all, 2)
	})
}
