package history

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// MSC4268's sending side, through the calls the API and the transaction stream make: a puppet's
// invite builds, uploads and delivers a bundle of the room's history to the invitee's devices its
// identity signs, before the invite goes out, and reports what it did.

const bob id.UserID = "@bob:localhost"

// inviteRoom is benchRoom on its homeserver: encrypted, history shared, a provisioned puppet
// joined and holding the room's sessions (18 shared, 2 not), and bob, with a phone his
// cross-signing identity signs and a laptop it does not.
type inviteRoom struct {
	env *benchEnv
	hs  *deliveryHomeserver
	p   *e2ee.Puppet
	bob *crossSigner
}

func newInviteRoom(t *testing.T) *inviteRoom {
	t.Helper()
	return newInviteRoomOn(t, testdb.SQLite(t))
}

func newInviteRoomOn(t *testing.T, dbCfg config.Database) *inviteRoom {
	t.Helper()
	hs := newDeliveryHomeserver(t)
	env := newBenchEnvAt(t, dbCfg, hs.URL)
	env.svc.cfg.HistorySharing.ShareOnInvite = true
	r := &inviteRoom{env: env, hs: hs, bob: newCrossSigner(t, bob)}
	r.bob.addDevice("PHONE", true)
	r.bob.addDevice("LAPTOP", false)
	hs.publish(t, r.bob, true)
	r.p = provisioned(t, env, "inviter")
	sharedRoom(t, env, hs, event.HistoryVisibilityShared, r.p.UserID)
	fillSessions(t, env, r.p, 20)
	return r
}

// provisioned provisions the puppet as the API does (registered, its device and keys uploaded, its
// cross-signing identity published and signing the device) and returns it loaded, asking the
// homeserver once per request so that a failure shows at once.
func provisioned(t *testing.T, env *benchEnv, name string) *e2ee.Puppet {
	t.Helper()
	ctx := context.Background()
	userID := id.UserID("@heirloom_" + name + ":localhost")
	_, err := env.mgr.Provision(ctx, userID, "")
	require.NoError(t, err)
	p, err := env.mgr.Get(ctx, userID)
	require.NoError(t, err)
	p.Client.DefaultHTTPRetries = 0
	return p
}

// sharedRoom makes benchRoom an encrypted room with the history visibility, the users joined, as
// heirloom's state store holds it after the room's state came in, and as the homeserver says.
func sharedRoom(t *testing.T, env *benchEnv, hs *deliveryHomeserver, visibility event.HistoryVisibility, joined ...id.UserID) {
	t.Helper()
	ctx := context.Background()
	empty := ""
	for _, evt := range []*event.Event{
		{Type: event.StateCreate, Content: event.Content{Parsed: &event.CreateEventContent{}}},
		{Type: event.StateEncryption, Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}},
		{Type: event.StateHistoryVisibility, Content: event.Content{Parsed: &event.HistoryVisibilityEventContent{HistoryVisibility: visibility}}},
	} {
		evt.RoomID, evt.StateKey = benchRoom, &empty
		mautrix.UpdateStateStore(ctx, env.db.StateStore, evt)
	}
	for _, user := range joined {
		require.NoError(t, env.db.StateStore.SetMembership(ctx, benchRoom, user, event.MembershipJoin))
	}
	hs.do(func(hs *deliveryHomeserver) {
		hs.visibility = visibility
		for _, user := range joined {
			hs.setMembership(user, user, event.MembershipJoin)
		}
	})
}

// heldSessions returns the puppet's sessions of benchRoom and whether each may be shared.
func heldSessions(t *testing.T, p *e2ee.Puppet) map[id.SessionID]bool {
	t.Helper()
	out := map[id.SessionID]bool{}
	err := p.Store.GetGroupSessionsForRoom(context.Background(), benchRoom).Iter(func(igs *crypto.InboundGroupSession) (bool, error) {
		out[igs.ID()] = igs.SharedHistory != nil && *igs.SharedHistory
		return true, nil
	})
	require.NoError(t, err)
	return out
}

// receivedBundle is what an invitee's device makes of the bundle sent to it: the Olm message
// decrypted, the file it names downloaded from the homeserver and decrypted.
type receivedBundle struct {
	olm      *crypto.DecryptedOlmEvent
	content  event.RoomKeyBundleEventContent
	roomKeys map[id.SessionID]keybundle.RoomKey
	withheld map[id.SessionID]keybundle.Withheld
}

// bundleOn opens the one bundle message the device got, as the device's client does.
func (r *inviteRoom) bundleOn(t *testing.T, c *crossSigner, device id.DeviceID) *receivedBundle {
	t.Helper()
	msgs := r.hs.sentTo(event.ToDeviceEncrypted, c.user, device)
	require.Len(t, msgs, 1, "one Olm message to %s's %s", c.user, device)
	rb := &receivedBundle{olm: c.open(t, device, msgs[0].content), roomKeys: map[id.SessionID]keybundle.RoomKey{},
		withheld: map[id.SessionID]keybundle.Withheld{}}
	require.Equal(t, event.ToDeviceRoomKeyBundle.Type, rb.olm.Type.Type)
	require.NoError(t, json.Unmarshal(rb.olm.Content.VeryRaw, &rb.content))
	mxc, err := rb.content.File.URL.Parse()
	require.NoError(t, err)
	var body []byte
	r.hs.do(func(hs *deliveryHomeserver) { body = hs.media[mxc.FileID] })
	require.NotEmpty(t, body, "the file is on the homeserver")
	plain, err := keybundle.Open(bytes.NewReader(body), &rb.content.File, 1<<20)
	require.NoError(t, err)
	data, err := io.ReadAll(plain)
	require.NoError(t, err)
	require.NoError(t, plain.Close(), "the file's hash is the one the message names")
	requireElementParses(t, data)
	var wire struct {
		RoomKeys []keybundle.RoomKey  `json:"room_keys"`
		Withheld []keybundle.Withheld `json:"withheld"`
	}
	require.NoError(t, json.Unmarshal(data, &wire))
	for _, k := range wire.RoomKeys {
		rb.roomKeys[k.SessionID] = k
	}
	for _, w := range wire.Withheld {
		rb.withheld[w.SessionID] = w
	}
	return rb
}

// The invitee's signed device gets, over Olm and before the invite, the bundle of every shared
// session of the room and a withheld entry for every other; the unsigned device gets nothing, and
// the report says so, device by device. The bundle is bound to the invite's event.
func TestInviteDeliversTheRoomsHistoryBeforeTheInvite(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, dbCfg config.Database) {
		r := newInviteRoomOn(t, dbCfg)
		ctx := context.Background()
		res, err := r.env.svc.Invite(ctx, r.p, benchRoom, bob, true)
		require.NoError(t, err)
		b := res.Bundle
		require.Equal(t, database.SentDelivered, b.State, b.Reason)
		require.Equal(t, 18, b.Sessions)
		require.Equal(t, 2, b.Withheld)
		require.ElementsMatch(t, []DeliveryReport{
			{UserID: bob, DeviceID: "PHONE", Delivered: true},
			{UserID: bob, DeviceID: "LAPTOP", Reason: ReasonNotCrossSigned},
		}, b.Devices)
		require.Equal(t, []string{"upload", "sendToDevice", "invite"}, r.hs.sentOps(), "the bundle goes before the invite")
		require.Empty(t, r.hs.sentTo(event.ToDeviceEncrypted, bob, "LAPTOP"), "the unsigned device gets nothing")

		got := r.bundleOn(t, r.bob, "PHONE")
		require.Equal(t, r.p.UserID, got.olm.Sender)
		require.Equal(t, bob, got.olm.Recipient)
		require.Equal(t, benchRoom, got.content.RoomID)
		require.NotNil(t, got.olm.SenderDeviceKeys, "MSC4147: the sending device's keys travel with the bundle")
		sskID := id.NewKeyID(id.KeyAlgorithmEd25519, r.p.Mach.CrossSigningKeys.SelfSigningKey.PublicKey().String())
		require.Contains(t, got.olm.SenderDeviceKeys.Signatures[r.p.UserID], sskID,
			"with the puppet's self-signing signature, without which Element refuses the bundle")
		for sessionID, shared := range heldSessions(t, r.p) {
			if shared {
				require.Contains(t, got.roomKeys, sessionID)
				require.Equal(t, benchRoom, got.roomKeys[sessionID].RoomID)
			} else {
				require.Contains(t, got.withheld, sessionID)
				require.Equal(t, keybundle.CodeHistoryNotShared, got.withheld[sessionID].Code)
			}
		}
		require.Len(t, got.roomKeys, 18)
		require.Len(t, got.withheld, 2)

		inviteID, membership := r.hs.member(bob)
		require.Equal(t, event.MembershipInvite, membership)
		listed, err := r.env.svc.Bundles(ctx, r.p.UserID)
		require.NoError(t, err)
		require.Len(t, listed.Sent, 1)
		require.Empty(t, listed.Received)
		require.Equal(t, b.BundleID, listed.Sent[0].BundleID)
		require.Equal(t, inviteID, listed.Sent[0].InviteEventID, "the bundle is bound to the invite the homeserver named")
		require.Equal(t, database.SentKindInvite, listed.Sent[0].Kind)
		inRoom, err := r.env.svc.RoomBundles(ctx, benchRoom)
		require.NoError(t, err)
		require.Equal(t, listed.Sent, inRoom.Sent)
	})
}

// A failure at any step of the bundle leaves the invite going ahead, the keys not sent (or not
// to the device that failed), and the report naming the step.
func TestInviteGoesAheadWhenItsBundleFails(t *testing.T) {
	for _, tc := range []struct {
		name   string
		spoil  func(r *inviteRoom)
		state  string
		reason string
		sent   []string
		phone  DeliveryReport
	}{
		{name: "the invitee's keys cannot be queried", spoil: func(r *inviteRoom) { r.hs.fail["keys/query"] = http.StatusBadGateway },
			state: database.SentFailed, reason: "failed to query invitee keys", sent: []string{"invite"}},
		{name: "the upload fails", spoil: func(r *inviteRoom) { r.hs.fail["upload"] = http.StatusBadGateway },
			state: database.SentFailed, reason: "failed to upload bundle", sent: []string{"invite"}},
		{name: "the to-device message is refused", spoil: func(r *inviteRoom) { r.hs.fail["sendToDevice"] = http.StatusBadGateway },
			state: database.SentFailed, reason: "delivery failed: failed to send bundle details", sent: []string{"upload", "invite"}},
		{name: "the phone has no one-time key left", spoil: func(r *inviteRoom) { r.hs.OTKs[bob] = nil },
			state: database.SentDelivered, sent: []string{"upload", "sendToDevice", "invite"},
			phone: DeliveryReport{UserID: bob, DeviceID: "PHONE", Reason: ReasonNoOlmSession}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newInviteRoom(t)
			r.hs.do(func(*deliveryHomeserver) { tc.spoil(r) })
			res, err := r.env.svc.Invite(context.Background(), r.p, benchRoom, bob, true)
			require.NoError(t, err, "the invite is sent whatever became of its bundle")
			require.Equal(t, tc.state, res.Bundle.State)
			require.Contains(t, res.Bundle.Reason, tc.reason)
			require.Equal(t, tc.sent, r.hs.sentOps())
			require.Empty(t, r.hs.sentTo(event.ToDeviceEncrypted, bob, "PHONE"), "no key reached bob")
			if tc.phone.DeviceID != "" {
				require.Contains(t, res.Bundle.Devices, tc.phone)
			}
			_, membership := r.hs.member(bob)
			require.Equal(t, event.MembershipInvite, membership)
		})
	}
}

// Where history may not go to the invitee, no key leaves: nothing is uploaded or sent, the invite
// goes ahead, and the report says why.
func TestInviteSharesNothingWhereTheRulesSayNo(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		setup  func(t *testing.T, r *inviteRoom)
		share  bool
		state  string
		reason string
	}{
		{name: "history visible to joined members only", share: true, state: database.SentNothing, reason: ReasonVisibility,
			setup: func(t *testing.T, r *inviteRoom) {
				r.hs.do(func(hs *deliveryHomeserver) { hs.visibility = event.HistoryVisibilityJoined })
			}},
		{name: "the room is not encrypted", share: true, state: database.SentNothing, reason: ReasonNotEncrypted,
			setup: func(t *testing.T, r *inviteRoom) {
				require.NoError(t, r.env.db.StateStore.SetEncryptionEvent(ctx, benchRoom, nil))
			}},
		{name: "the bridge did not ask for history", share: false, state: database.SentSkipped, reason: ReasonDisabled,
			setup: func(*testing.T, *inviteRoom) {}},
		{name: "history_sharing.share_on_invite is off", share: true, state: database.SentSkipped, reason: ReasonDisabled,
			setup: func(t *testing.T, r *inviteRoom) { r.env.svc.cfg.HistorySharing.ShareOnInvite = false }},
		{name: "the invitee is banned", share: true, state: database.SentSkipped, reason: ReasonInviteeBanned,
			setup: func(t *testing.T, r *inviteRoom) {
				r.hs.do(func(hs *deliveryHomeserver) { hs.setMembership(bob, "@mod:localhost", event.MembershipBan) })
			}},
		{name: "the invitee is joined already", share: true, state: database.SentSkipped, reason: ReasonInviteeJoined,
			setup: func(t *testing.T, r *inviteRoom) {
				r.hs.do(func(hs *deliveryHomeserver) { hs.setMembership(bob, bob, event.MembershipJoin) })
			}},
		{name: "the puppet may not invite", share: true, state: database.SentSkipped, reason: ReasonNoInvitePower,
			setup: func(t *testing.T, r *inviteRoom) {
				invite := 50
				require.NoError(t, r.env.db.StateStore.SetPowerLevels(ctx, benchRoom, &event.PowerLevelsEventContent{InvitePtr: &invite}))
			}},
		{name: "the invitee has no cross-signing identity", share: true, state: database.SentSkipped, reason: ReasonNoCrossSigning,
			setup: func(t *testing.T, r *inviteRoom) { r.hs.publish(t, r.bob, false) }},
		{name: "no device of the invitee is signed", share: true, state: database.SentSkipped, reason: ReasonNoDevices,
			setup: func(t *testing.T, r *inviteRoom) {
				r.bob.crossSigned["PHONE"] = false
				r.hs.publish(t, r.bob, true)
			}},
		{name: "no session of the room is held", share: true, state: database.SentNothing, reason: ReasonNothingToShare,
			setup: func(t *testing.T, r *inviteRoom) {
				_, err := r.env.db.Raw.Exec(ctx, `DELETE FROM crypto_megolm_inbound_session WHERE account_id=$1`, r.p.UserID)
				require.NoError(t, err)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newInviteRoom(t)
			tc.setup(t, r)
			res, err := r.env.svc.Invite(ctx, r.p, benchRoom, bob, tc.share)
			require.NoError(t, err)
			require.Equal(t, tc.state, res.Bundle.State)
			require.Equal(t, tc.reason, res.Bundle.Reason)
			require.Equal(t, []string{"invite"}, r.hs.sentOps(), "nothing is uploaded or sent; the invite goes ahead")
			listed, err := r.env.svc.Bundles(ctx, r.p.UserID)
			require.NoError(t, err)
			require.Len(t, listed.Sent, 1)
			require.Equal(t, tc.reason, listed.Sent[0].Reason, "GET …/bundles tells the bridge admin why")
		})
	}
}

// An invitee whose cross-signing identity changed since heirloom first saw it gets no history
// (MSC4268's red flag) until an admin confirms the new identity, checked out of band.
func TestIdentityChangeStopsHistoryUntilConfirmed(t *testing.T) {
	r := newInviteRoom(t)
	ctx := context.Background()
	res, err := r.env.svc.Invite(ctx, r.p, benchRoom, bob, true)
	require.NoError(t, err)
	require.Equal(t, database.SentDelivered, res.Bundle.State, "heirloom first sees bob's identity")

	r.bob.resetIdentity(t)
	r.hs.publish(t, r.bob, true)
	r.hs.do(func(hs *deliveryHomeserver) { hs.setMembership(bob, bob, event.MembershipLeave) })
	res, err = r.env.svc.Invite(ctx, r.p, benchRoom, bob, true)
	require.NoError(t, err)
	require.Equal(t, database.SentSkipped, res.Bundle.State)
	require.Equal(t, ReasonIdentityChanged, res.Bundle.Reason)
	require.Len(t, r.hs.sentTo(event.ToDeviceEncrypted, bob, "PHONE"), 1, "only the first invite's bundle reached bob")

	status, err := r.env.mgr.Identity(ctx, bob)
	require.NoError(t, err)
	require.True(t, status.Changed, "the admin sees the change")
	_, err = r.env.mgr.ConfirmIdentity(ctx, bob, "not the key")
	require.ErrorIs(t, err, e2ee.ErrIdentityMismatch)
	status, err = r.env.mgr.ConfirmIdentity(ctx, bob, status.Current)
	require.NoError(t, err)
	require.False(t, status.Changed)
	r.hs.publish(t, r.bob, true) // a fresh one-time key for the phone's new Olm session
	r.hs.do(func(hs *deliveryHomeserver) { hs.setMembership(bob, bob, event.MembershipLeave) })
	res, err = r.env.svc.Invite(ctx, r.p, benchRoom, bob, true)
	require.NoError(t, err)
	require.Equal(t, database.SentDelivered, res.Bundle.State, res.Bundle.Reason)
}

// A bundle over the size cap (the configured one, or the homeserver's media limit if smaller)
// fails the invite with ErrBundleTooLarge before anything leaves: the bridge is told, nothing is
// uploaded, and the invite is not sent.
func TestBundleOverTheMediaLimitFailsTheInvite(t *testing.T) {
	r := newInviteRoom(t)
	r.hs.do(func(hs *deliveryHomeserver) { hs.uploadLimit = 2048 })
	fillSessions(t, r.env, r.p, 50)
	_, err := r.env.svc.Invite(context.Background(), r.p, benchRoom, bob, true)
	require.ErrorIs(t, err, keybundle.ErrBundleTooLarge)
	require.Empty(t, r.hs.sentOps(), "nothing uploaded, nothing sent, no invite")
	listed, err := r.env.svc.Bundles(context.Background(), r.p.UserID)
	require.NoError(t, err)
	require.Len(t, listed.Sent, 1)
	require.Equal(t, database.SentFailed, listed.Sent[0].State)
	require.Contains(t, listed.Sent[0].Reason, keybundle.ErrBundleTooLarge.Error())
}

// echoOf is the invite's member event as the transaction stream brings it.
func echoOf(eventID id.EventID, sender, invitee id.UserID) *event.Event {
	stateKey := invitee.String()
	return &event.Event{ID: eventID, Type: event.StateMember, RoomID: benchRoom, Sender: sender, StateKey: &stateKey,
		Content: event.Content{Parsed: &event.MemberEventContent{Membership: event.MembershipInvite}}}
}

// waitForBackground waits until the service's background work (an invite's echo) is done; the
// service starts no more.
func waitForBackground(t *testing.T, svc *Service) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, svc.Shutdown(ctx))
}

// An invite the puppet sent by another path than the API (heirloom sees only its echo) gets its
// bundle when the echo comes, bound to that invite.
func TestInviteSeenOnlyInTheTransactionStreamGetsABundle(t *testing.T) {
	r := newInviteRoom(t)
	r.hs.do(func(hs *deliveryHomeserver) { hs.setMembership(bob, r.p.UserID, event.MembershipInvite) })
	inviteID, _ := r.hs.member(bob)
	r.env.svc.InviteSent(context.Background(), echoOf(inviteID, r.p.UserID, bob))
	waitForBackground(t, r.env.svc)
	got := r.bundleOn(t, r.bob, "PHONE")
	require.Len(t, got.roomKeys, 18)
	listed, err := r.env.svc.Bundles(context.Background(), r.p.UserID)
	require.NoError(t, err)
	require.Len(t, listed.Sent, 1)
	require.Equal(t, database.SentDelivered, listed.Sent[0].State)
	require.Equal(t, inviteID, listed.Sent[0].InviteEventID)
}

// The echo of an invite the API sent finds the bundle built before it and builds no second one;
// with share_on_invite off, an echo builds nothing.
func TestInviteEchoBuildsNoSecondBundle(t *testing.T) {
	r := newInviteRoom(t)
	ctx := context.Background()
	_, err := r.env.svc.Invite(ctx, r.p, benchRoom, bob, true)
	require.NoError(t, err)
	inviteID, _ := r.hs.member(bob)
	r.env.svc.InviteSent(ctx, echoOf(inviteID, r.p.UserID, bob))

	other := newInviteRoom(t)
	other.env.svc.cfg.HistorySharing.ShareOnInvite = false
	other.hs.do(func(hs *deliveryHomeserver) { hs.setMembership(bob, other.p.UserID, event.MembershipInvite) })
	otherID, _ := other.hs.member(bob)
	other.env.svc.InviteSent(ctx, echoOf(otherID, other.p.UserID, bob))

	waitForBackground(t, r.env.svc)
	waitForBackground(t, other.env.svc)
	listed, err := r.env.svc.Bundles(ctx, r.p.UserID)
	require.NoError(t, err)
	require.Len(t, listed.Sent, 1, "one invite, one bundle")
	require.Len(t, r.hs.sentTo(event.ToDeviceEncrypted, bob, "PHONE"), 1)
	listed, err = other.env.svc.Bundles(ctx, other.p.UserID)
	require.NoError(t, err)
	require.Empty(t, listed.Sent)
	require.Empty(t, other.hs.sentOps())
}

// An invite the homeserver refuses is reported to the caller, and its bundle is never taken for a
// later invite: that invite's echo gets a bundle of its own.
func TestRefusedInvitesBundleIsNotReused(t *testing.T) {
	r := newInviteRoom(t)
	ctx := context.Background()
	r.hs.do(func(hs *deliveryHomeserver) { hs.fail["invite"] = http.StatusForbidden })
	_, err := r.env.svc.Invite(ctx, r.p, benchRoom, bob, true)
	require.ErrorIs(t, err, mautrix.MForbidden)

	r.hs.do(func(hs *deliveryHomeserver) {
		delete(hs.fail, "invite")
		hs.setMembership(bob, r.p.UserID, event.MembershipInvite)
	})
	r.hs.publish(t, r.bob, true)
	inviteID, _ := r.hs.member(bob)
	r.env.svc.InviteSent(ctx, echoOf(inviteID, r.p.UserID, bob))
	waitForBackground(t, r.env.svc)
	listed, err := r.env.svc.Bundles(ctx, r.p.UserID)
	require.NoError(t, err)
	require.Len(t, listed.Sent, 2)
	require.Equal(t, inviteID, listed.Sent[0].InviteEventID, "the newest bundle is the later invite's own")
	require.NotEqual(t, inviteID, listed.Sent[1].InviteEventID)
	require.Equal(t, database.SentDelivered, listed.Sent[0].State)
}

// A change of history visibility heirloom hears of first from the homeserver at an invite (its
// transaction not in yet) counts at once: nothing is shared, the room's state is updated, and
// the room's outbound sessions are used up, as the transaction would have done.
func TestVisibilityChangeLearntAtTheInviteRotatesTheRoom(t *testing.T) {
	ctx := context.Background()
	r := newInviteRoom(t)
	before, err := r.env.db.RotateAfter(ctx, benchRoom)
	require.NoError(t, err)
	require.True(t, before.IsZero())
	r.hs.do(func(hs *deliveryHomeserver) { hs.visibility = event.HistoryVisibilityJoined })
	res, err := r.env.svc.Invite(ctx, r.p, benchRoom, bob, true)
	require.NoError(t, err)
	require.Equal(t, ReasonVisibility, res.Bundle.Reason)
	after, err := r.env.db.RotateAfter(ctx, benchRoom)
	require.NoError(t, err)
	require.False(t, after.IsZero(), "the room's sessions are used up")
	known, err := r.env.db.StateStore.GetHistoryVisibility(ctx, benchRoom)
	require.NoError(t, err)
	require.Equal(t, event.HistoryVisibilityJoined, known.HistoryVisibility)
}
