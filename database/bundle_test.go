package database_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

const (
	puppetA id.UserID = "@heirloom_a:hs"
	puppetB id.UserID = "@heirloom_b:hs"
	invitee id.UserID = "@carol:hs"
	roomX   id.RoomID = "!x:hs"
	roomY   id.RoomID = "!y:hs"
)

func putSent(t *testing.T, db *database.Database, b *database.SentBundle) *database.SentBundle {
	t.Helper()
	require.NoError(t, db.PutSentBundle(context.Background(), b))
	return b
}

func getSent(t *testing.T, db *database.Database, bundleID string) *database.SentBundle {
	t.Helper()
	b, err := db.GetSentBundle(context.Background(), bundleID)
	require.NoError(t, err)
	require.NotNil(t, b, "bundle %s", bundleID)
	return b
}

func TestSentBundles(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		missing, err := db.GetSentBundle(ctx, "nope")
		require.NoError(t, err)
		require.Nil(t, missing)

		b := putSent(t, db, &database.SentBundle{BundleID: "b1", Puppet: puppetA, RoomID: roomX, Invitee: invitee, State: database.SentBuilding})
		require.NotZero(t, b.CreatedAt)
		got := getSent(t, db, "b1")
		require.Equal(t, database.SentBuilding, got.State)
		require.Empty(t, got.InviteEventID)
		require.NotNil(t, got.Devices, "no deliveries is an empty list, not null")
		require.Empty(t, got.Devices)

		createdAt := b.CreatedAt
		b.State, b.Sessions, b.Withheld, b.Size = database.SentUploaded, 12, 3, 4567
		b.MXC, b.FileInfo, b.Reason, b.InviteEventID = "mxc://hs/abc", "c2VhbGVk", "why", "$invite"
		b.InviteeMasterKey = "bWFzdGVy"
		putSent(t, db, b)
		got = getSent(t, db, "b1")
		require.Equal(t, &database.SentBundle{
			BundleID: "b1", Puppet: puppetA, RoomID: roomX, Invitee: invitee, InviteEventID: "$invite",
			State: database.SentUploaded, Sessions: 12, Withheld: 3, Size: 4567, MXC: "mxc://hs/abc",
			FileInfo: "c2VhbGVk", Reason: "why", CreatedAt: createdAt, UpdatedAt: b.UpdatedAt, Devices: []database.Delivery{},
			InviteeMasterKey: "bWFzdGVy", Kind: database.SentKindInvite,
		}, got)

		// Deliveries: one row per device, upserted, listed in order.
		for _, d := range []database.Delivery{
			{UserID: invitee, DeviceID: "PHONE", Delivered: false, Reason: "no Olm session"},
			{UserID: invitee, DeviceID: "LAPTOP", Delivered: true},
			{UserID: invitee, DeviceID: "PHONE", Delivered: true},
		} {
			require.NoError(t, db.PutDelivery(ctx, "b1", d))
		}
		require.Equal(t, []database.Delivery{
			{UserID: invitee, DeviceID: "LAPTOP", Delivered: true},
			{UserID: invitee, DeviceID: "PHONE", Delivered: true},
		}, getSent(t, db, "b1").Devices)
		require.Error(t, db.PutDelivery(ctx, "no-such-bundle", database.Delivery{UserID: invitee, DeviceID: "X"}),
			"a delivery needs its bundle")

		list, err := db.ListSentBundles(ctx, puppetA)
		require.NoError(t, err)
		require.Len(t, list, 1)
		require.Len(t, list[0].Devices, 2)
		list, err = db.ListSentBundles(ctx, puppetB)
		require.NoError(t, err)
		require.Empty(t, list)
	})
}

func TestSentBundleInviteEventIsUnique(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		putSent(t, db, &database.SentBundle{BundleID: "b1", Puppet: puppetA, RoomID: roomX, Invitee: invitee, InviteEventID: "$inv", State: database.SentNothing})
		err := db.PutSentBundle(ctx, &database.SentBundle{BundleID: "b2", Puppet: puppetA, RoomID: roomX, Invitee: invitee, InviteEventID: "$inv", State: database.SentNothing})
		require.Error(t, err, "a second bundle for the same invite event")
		// The same event ID elsewhere, and any number of bundles not linked to an event yet, are fine.
		putSent(t, db, &database.SentBundle{BundleID: "b3", Puppet: puppetA, RoomID: roomY, Invitee: invitee, InviteEventID: "$inv", State: database.SentNothing})
		putSent(t, db, &database.SentBundle{BundleID: "b4", Puppet: puppetB, RoomID: roomX, Invitee: invitee, InviteEventID: "$inv", State: database.SentNothing})
		putSent(t, db, &database.SentBundle{BundleID: "b5", Puppet: puppetA, RoomID: roomX, Invitee: invitee, State: database.SentNothing})
		putSent(t, db, &database.SentBundle{BundleID: "b6", Puppet: puppetA, RoomID: roomX, Invitee: invitee, State: database.SentNothing})
	})
}

func TestClaimSentBundleForInvite(t *testing.T) {
	old := time.Now().Add(-30 * 24 * time.Hour).UnixMilli()
	for _, tc := range []struct {
		name      string
		bundles   []database.SentBundle
		wantClaim string // bundle claimed by puppetA's invite of invitee to roomX; "" = none
		// wantSecond is the bundle a second invite event claims afterwards; "" = none.
		wantSecond string
	}{
		{"recent unclaimed bundle", []database.SentBundle{
			{BundleID: "mine", Puppet: puppetA, RoomID: roomX, Invitee: invitee},
		}, "mine", ""},
		{"the newest of two", []database.SentBundle{
			{BundleID: "older", Puppet: puppetA, RoomID: roomX, Invitee: invitee, CreatedAt: time.Now().Add(-2 * time.Minute).UnixMilli()},
			{BundleID: "newer", Puppet: puppetA, RoomID: roomX, Invitee: invitee, CreatedAt: time.Now().Add(-time.Minute).UnixMilli()},
		}, "newer", "older"},
		{"another invitee's bundle", []database.SentBundle{
			{BundleID: "dave", Puppet: puppetA, RoomID: roomX, Invitee: "@dave:hs"},
		}, "", ""},
		{"another puppet's bundle", []database.SentBundle{
			{BundleID: "b", Puppet: puppetB, RoomID: roomX, Invitee: invitee},
		}, "", ""},
		{"another room's bundle", []database.SentBundle{
			{BundleID: "y", Puppet: puppetA, RoomID: roomY, Invitee: invitee},
		}, "", ""},
		// An explicit refusal (share_history: false) holds however late the invite's echo comes.
		{"an old bundle", []database.SentBundle{
			{BundleID: "old", Puppet: puppetA, RoomID: roomX, Invitee: invitee, CreatedAt: old},
		}, "old", ""},
		{"a bundle whose invite failed", []database.SentBundle{
			{BundleID: "failed", Puppet: puppetA, RoomID: roomX, Invitee: invitee},
		}, "", ""},
		{"a bundle already linked to an invite", []database.SentBundle{
			{BundleID: "linked", Puppet: puppetA, RoomID: roomX, Invitee: invitee, InviteEventID: "$earlier"},
		}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, db *database.Database) {
				ctx := context.Background()
				before := map[string]id.EventID{}
				for _, b := range tc.bundles {
					b.State = database.SentDelivered
					putSent(t, db, &b)
					if b.BundleID == "failed" {
						require.NoError(t, db.SetInviteFailed(ctx, b.BundleID))
						b.InviteEventID = getSent(t, db, b.BundleID).InviteEventID
					}
					before[b.BundleID] = b.InviteEventID
				}
				claimed, err := db.ClaimSentBundleForInvite(ctx, puppetA, roomX, invitee, "$invite")
				require.NoError(t, err)
				require.Equal(t, tc.wantClaim != "", claimed != nil)
				if claimed != nil {
					require.Equal(t, tc.wantClaim, claimed.BundleID)
				}
				for _, b := range tc.bundles {
					want := before[b.BundleID]
					if b.BundleID == tc.wantClaim {
						want = "$invite"
					}
					require.Equal(t, want, getSent(t, db, b.BundleID).InviteEventID, "invite event of %s", b.BundleID)
				}
				has, err := db.HasSentBundleForInvite(ctx, puppetA, roomX, "$invite")
				require.NoError(t, err)
				require.Equal(t, claimed != nil, has)

				// A bundle is claimed once: a later invite event finds only a bundle still unclaimed.
				again, err := db.ClaimSentBundleForInvite(ctx, puppetA, roomX, invitee, "$reinvite")
				require.NoError(t, err)
				require.Equal(t, tc.wantSecond != "", again != nil, "claiming for a second invite")
				if tc.wantClaim != "" {
					require.Equal(t, id.EventID("$invite"), getSent(t, db, tc.wantClaim).InviteEventID, "the first claim stays")
				}
				if tc.wantSecond != "" {
					require.Equal(t, id.EventID("$reinvite"), getSent(t, db, tc.wantSecond).InviteEventID)
				}
			})
		})
	}
}

func TestHasSentBundleForInvite(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		putSent(t, db, &database.SentBundle{BundleID: "b", Puppet: puppetA, RoomID: roomX, Invitee: invitee, InviteEventID: "$inv", State: database.SentFailed})
		for _, tc := range []struct {
			puppet id.UserID
			room   id.RoomID
			event  id.EventID
			want   bool
		}{
			{puppetA, roomX, "$inv", true},
			{puppetA, roomX, "$other", false},
			{puppetA, roomY, "$inv", false},
			{puppetB, roomX, "$inv", false},
			{puppetA, roomX, "", false},
		} {
			has, err := db.HasSentBundleForInvite(ctx, tc.puppet, tc.room, tc.event)
			require.NoError(t, err)
			require.Equal(t, tc.want, has, "%s %s %s", tc.puppet, tc.room, tc.event)
		}
	})
}

func TestListUnfinishedSentBundles(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		states := []string{database.SentUploaded, database.SentDelivered, database.SentBuilding, database.SentNothing,
			database.SentSkipped, database.SentFailed}
		for i, state := range states {
			putSent(t, db, &database.SentBundle{BundleID: state, Puppet: puppetA, RoomID: roomX, Invitee: invitee,
				State: state, CreatedAt: int64(1000 + i)})
		}
		require.NoError(t, db.PutDelivery(ctx, database.SentUploaded, database.Delivery{UserID: invitee, DeviceID: "D", Delivered: true}))
		list, err := db.ListUnfinishedSentBundles(ctx)
		require.NoError(t, err)
		var ids []string
		for _, b := range list {
			ids = append(ids, b.BundleID)
		}
		require.Equal(t, []string{database.SentUploaded, database.SentBuilding}, ids, "unfinished, oldest first")
		require.Len(t, list[0].Devices, 1, "with the deliveries done so far")
	})
}

func TestListSentBundlesNewestFirst(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		for i := range 3 {
			putSent(t, db, &database.SentBundle{BundleID: fmt.Sprint("b", i), Puppet: puppetA, RoomID: roomX,
				Invitee: invitee, State: database.SentDelivered, CreatedAt: int64(1000 + i)})
		}
		list, err := db.ListSentBundles(context.Background(), puppetA)
		require.NoError(t, err)
		require.Len(t, list, 3)
		require.Equal(t, []string{"b2", "b1", "b0"}, []string{list[0].BundleID, list[1].BundleID, list[2].BundleID})
	})
}

func TestClaimSentBundleForInviteConcurrently(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		for round := range 200 {
			bundleID := fmt.Sprint("race", round)
			room := id.RoomID(fmt.Sprintf("!race%d:hs", round))
			putSent(t, db, &database.SentBundle{BundleID: bundleID, Puppet: puppetA, RoomID: room, Invitee: invitee, State: database.SentDelivered})
			const racers = 8
			var wg sync.WaitGroup
			wins := make(chan id.EventID, racers)
			for i := range racers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					eventID := id.EventID(fmt.Sprintf("$invite%d", i))
					claimed, err := db.ClaimSentBundleForInvite(ctx, puppetA, room, invitee, eventID)
					if err == nil && claimed != nil {
						wins <- eventID
					}
				}()
			}
			wg.Wait()
			close(wins)
			var winners []id.EventID
			for w := range wins {
				winners = append(winners, w)
			}
			require.Len(t, winners, 1, "round %d: one bundle, claimed by %v", round, winners)
			require.Equal(t, winners[0], getSent(t, db, bundleID).InviteEventID)
		}
	})
}
