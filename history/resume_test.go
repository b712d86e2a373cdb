package history

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
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

// restartOf is a second heirloom process on the database and homeserver of r, started as the
// daemon starts the history service: Run resumes what the first left, then (its context being
// done) returns.
func restartOf(t *testing.T, r *inviteRoom, dbCfg config.Database, change func(*benchEnv)) *benchEnv {
	t.Helper()
	restarted := newBenchEnvAt(t, dbCfg, r.hs.URL)
	if change != nil {
		change(restarted)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	restarted.svc.Run(ctx)
	return restarted
}

// crashDuringDelivery has the puppet share history for an invite sent outside the API, and stops
// the process, as a crash would, after the bundle was uploaded and before its Olm message reached
// the homeserver.
func crashDuringDelivery(t *testing.T, r *inviteRoom) {
	t.Helper()
	r.hs.do(func(hs *deliveryHomeserver) { hs.setMembership(bob, r.p.UserID, event.MembershipInvite) })
	inviteID, _ := r.hs.member(bob)
	held := r.hs.hold(t, "sendToDevice", http.StatusInternalServerError)
	r.env.svc.InviteSent(context.Background(), echoOf(inviteID, r.p.UserID, bob))
	select {
	case <-held.arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("the delivery never began")
	}
	listed, err := r.env.svc.Bundles(context.Background(), r.p.UserID)
	require.NoError(t, err)
	require.Equal(t, database.SentUploaded, listed.Sent[0].State, "the crash leaves the bundle uploaded, not delivered")
}

// After a crash between upload and delivery, the next start delivers the bundle if every check of
// the first delivery passes again, and otherwise gives up on it with the reason: no key leaves.
func TestRestartFinishesTheDeliveryACrashInterrupted(t *testing.T) {
	for _, tc := range []struct {
		name     string
		meantime func(t *testing.T, r *inviteRoom)
		restart  func(*benchEnv)
		reason   string
	}{
		{name: "the invite stands", meantime: func(*testing.T, *inviteRoom) {}},
		{name: "the invite was rescinded", reason: ReasonNoLongerInvited, meantime: func(t *testing.T, r *inviteRoom) {
			r.hs.do(func(hs *deliveryHomeserver) { hs.setMembership(bob, r.p.UserID, event.MembershipLeave) })
		}},
		{name: "the room stopped sharing history", reason: ReasonVisibility, meantime: func(t *testing.T, r *inviteRoom) {
			r.hs.do(func(hs *deliveryHomeserver) { hs.visibility = event.HistoryVisibilityJoined })
		}},
		{name: "the invitee's identity was reset", reason: ReasonIdentityChanged, meantime: func(t *testing.T, r *inviteRoom) {
			r.bob.resetIdentity(t)
			r.hs.publish(t, r.bob, true)
		}},
		{name: "the accept window passed", reason: ReasonDeliveryTooLate, meantime: func(*testing.T, *inviteRoom) {},
			restart: func(env *benchEnv) { env.svc.cfg.HistorySharing.AcceptWindow = time.Nanosecond }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dbCfg := testdb.SQLite(t)
			r := newInviteRoomOn(t, dbCfg)
			crashDuringDelivery(t, r)
			tc.meantime(t, r)
			restarted := restartOf(t, r, dbCfg, tc.restart)
			listed, err := restarted.svc.Bundles(context.Background(), r.p.UserID)
			require.NoError(t, err)
			require.Len(t, listed.Sent, 1)
			if tc.reason == "" {
				require.Equal(t, database.SentDelivered, listed.Sent[0].State, listed.Sent[0].Reason)
				got := r.bundleOn(t, r.bob, "PHONE")
				require.Len(t, got.roomKeys, 18, "the phone reads the history the crash held back")
				return
			}
			require.Equal(t, database.SentFailed, listed.Sent[0].State)
			require.Equal(t, tc.reason, listed.Sent[0].Reason)
			require.Empty(t, r.hs.sentTo(event.ToDeviceEncrypted, bob, "PHONE"), "no key left")
		})
	}
}

// A device the invitee removed while the process was down gets nothing at the next start; the
// devices still signed get the bundle.
func TestRestartDeliversOnlyToDevicesStillThere(t *testing.T) {
	dbCfg := testdb.SQLite(t)
	r := newInviteRoomOn(t, dbCfg)
	r.bob.addDevice("TABLET", true)
	r.hs.publish(t, r.bob, true)
	crashDuringDelivery(t, r)
	delete(r.bob.devices, "TABLET")
	r.hs.publish(t, r.bob, true)
	restarted := restartOf(t, r, dbCfg, nil)
	listed, err := restarted.svc.Bundles(context.Background(), r.p.UserID)
	require.NoError(t, err)
	require.Equal(t, database.SentDelivered, listed.Sent[0].State)
	require.ElementsMatch(t, []DeliveryReport{
		{UserID: bob, DeviceID: "PHONE", Delivered: true},
		{UserID: bob, DeviceID: "TABLET", Reason: ReasonDeviceNowUnknown},
		{UserID: bob, DeviceID: "LAPTOP", Reason: ReasonNotCrossSigned},
	}, listed.Sent[0].Devices)
	require.Len(t, r.bundleOn(t, r.bob, "PHONE").roomKeys, 18)
	require.Empty(t, r.hs.sentTo(event.ToDeviceEncrypted, bob, "TABLET"))
}

// A bundle whose invite was not sent when the process stopped (the API builds it first) is not
// delivered at the next start: it waits for the invite, and past the accept window it is given
// up. One whose build the stop interrupted is marked failed: nothing of it left.
func TestRestartNeverDeliversForAnInviteNotSent(t *testing.T) {
	ctx := context.Background()
	dbCfg := testdb.SQLite(t)
	r := newInviteRoomOn(t, dbCfg)
	held := r.hs.hold(t, "sendToDevice", http.StatusInternalServerError)
	go func() { _, _ = r.env.svc.Invite(ctx, r.p, benchRoom, bob, true) }()
	<-held.arrived

	restarted := restartOf(t, r, dbCfg, nil)
	listed, err := restarted.svc.Bundles(ctx, r.p.UserID)
	require.NoError(t, err)
	require.Equal(t, database.SentUploaded, listed.Sent[0].State, "it waits for the invite's echo")
	require.Empty(t, r.hs.sentTo(event.ToDeviceEncrypted, bob, "PHONE"))

	restarted = restartOf(t, r, dbCfg, func(env *benchEnv) { env.svc.cfg.HistorySharing.AcceptWindow = time.Nanosecond })
	listed, err = restarted.svc.Bundles(ctx, r.p.UserID)
	require.NoError(t, err)
	require.Equal(t, database.SentFailed, listed.Sent[0].State)
	require.Equal(t, ReasonDeliveryTooLate, listed.Sent[0].Reason)
	require.Empty(t, r.hs.sentTo(event.ToDeviceEncrypted, bob, "PHONE"))
}

func TestRestartFailsABundleItsBuildDidNotFinish(t *testing.T) {
	ctx := context.Background()
	dbCfg := testdb.SQLite(t)
	r := newInviteRoomOn(t, dbCfg)
	held := r.hs.hold(t, "upload", http.StatusInternalServerError)
	go func() { _, _ = r.env.svc.Invite(ctx, r.p, benchRoom, bob, true) }()
	<-held.arrived

	restarted := restartOf(t, r, dbCfg, nil)
	listed, err := restarted.svc.Bundles(ctx, r.p.UserID)
	require.NoError(t, err)
	require.Equal(t, database.SentFailed, listed.Sent[0].State)
	require.Equal(t, ReasonInterrupted, listed.Sent[0].Reason)
	require.Empty(t, r.hs.sentTo(event.ToDeviceEncrypted, bob, "PHONE"))
}
