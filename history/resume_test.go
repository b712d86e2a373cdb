package history

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
)

// signOwnDevice gives the puppet a cross-signing identity that signs its device, as provisioning does.
func signOwnDevice(t *testing.T, p *e2ee.Puppet) {
	t.Helper()
	keys, err := p.Mach.GenerateCrossSigningKeys()
	require.NoError(t, err)
	p.Mach.CrossSigningKeys = keys
	require.NoError(t, p.Store.PutSignature(context.Background(), p.UserID, p.Mach.OwnIdentity().SigningKey, p.UserID,
		keys.SelfSigningKey.PublicKey(), "signature"))
}

// F2: a bundle uploaded before a restart is delivered at startup only to the invitee of the puppet's
// own invite (or the join that replaced it), and only while the room's history visibility and the
// puppet's own signature still allow it: the checks of a redelivery, no fewer.
func TestResumedDeliveryRechecksTheInviteAndTheVisibility(t *testing.T) {
	const bob id.UserID = "@bob:localhost"
	env := newBenchEnv(t)
	hs := newDeliveryHomeserver(t)
	bobs := newCrossSigner(t, bob)
	bobs.addDevice("BOBDEV", true)
	hs.publish(t, bobs, true)
	p := pointPuppetAt(t, env, hs.URL)
	signOwnDevice(t, p)
	ctx := context.Background()
	for _, tc := range []struct {
		name       string
		sender     id.UserID
		eventID    id.EventID
		membership event.Membership
		replaces   id.EventID
		visibility event.HistoryVisibility
		unsigned   bool
		// unrecorded: the puppet's invite was not sent (or its echo not seen) before the restart.
		unrecorded bool
		delivered  bool
	}{
		{name: "the puppet's own invite, history shared", sender: p.UserID, eventID: "$invite", membership: event.MembershipInvite,
			visibility: event.HistoryVisibilityShared, delivered: true},
		{name: "the join that replaced the puppet's invite", sender: bob, eventID: "$join", membership: event.MembershipJoin,
			replaces: "$invite", visibility: event.HistoryVisibilityShared, delivered: true},
		{name: "another member's invite", sender: "@carol:localhost", eventID: "$carols", membership: event.MembershipInvite,
			visibility: event.HistoryVisibilityShared},
		{name: "another invite of the puppet's", sender: p.UserID, eventID: "$later", membership: event.MembershipInvite,
			visibility: event.HistoryVisibilityShared},
		{name: "a join that replaced something else", sender: bob, eventID: "$join", membership: event.MembershipJoin,
			replaces: "$carols", visibility: event.HistoryVisibilityShared},
		{name: "the puppet's own invite, but the room no longer shares history", sender: p.UserID, eventID: "$invite",
			membership: event.MembershipInvite, visibility: event.HistoryVisibilityJoined},
		{name: "the puppet's own invite, but its device is no longer signed", sender: p.UserID, eventID: "$invite",
			membership: event.MembershipInvite, visibility: event.HistoryVisibilityShared, unsigned: true},
		{name: "the puppet's invite never sent, another member's invite", sender: "@carol:localhost", eventID: "$carols",
			membership: event.MembershipInvite, visibility: event.HistoryVisibilityShared, unrecorded: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.unsigned {
				_, err := env.db.Raw.Exec(ctx, `DELETE FROM crypto_cross_signing_signatures WHERE signed_user_id=$1`, p.UserID)
				require.NoError(t, err)
				t.Cleanup(func() { signOwnDevice(t, p) })
			}
			hs.set(bob, tc.sender, tc.eventID, tc.membership, tc.replaces, tc.visibility)
			b := &database.SentBundle{BundleID: "b-" + strings.ReplaceAll(tc.name, " ", "-"), Puppet: p.UserID, RoomID: benchRoom,
				Invitee: bob, InviteEventID: "$invite", State: database.SentUploaded, CreatedAt: time.Now().UnixMilli(),
				Devices: []database.Delivery{{UserID: bob, DeviceID: "BOBDEV"}}}
			if tc.unrecorded {
				b.InviteEventID = ""
			}
			reason, wait, err := env.svc.recheckDelivery(ctx, p, b)
			require.NoError(t, err)
			if tc.delivered {
				require.Empty(t, reason, "the delivery goes ahead")
				require.False(t, wait)
			} else {
				require.False(t, reason == "" && !wait,
					"the puppet did not send this invite, or history may no longer be shared: the resumed delivery must not go ahead")
			}
		})
	}
}
