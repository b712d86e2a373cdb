package history

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
)

// memberHomeserver answers the invitee's current member event and the room's history visibility.
type memberHomeserver struct {
	*httptest.Server
	mu         sync.Mutex
	member     map[string]any
	visibility event.HistoryVisibility
}

func newMemberHomeserver(t *testing.T) *memberHomeserver {
	t.Helper()
	hs := &memberHomeserver{visibility: event.HistoryVisibilityShared}
	hs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hs.mu.Lock()
		defer hs.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch {
		case strings.Contains(r.URL.Path, "/state/m.room.member/"):
			_ = json.NewEncoder(w).Encode(hs.member)
		case strings.Contains(r.URL.Path, "/state/m.room.history_visibility"):
			_ = json.NewEncoder(w).Encode(map[string]any{"history_visibility": hs.visibility})
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errcode":"M_NOT_FOUND","error":"not in this test"}`))
		}
	}))
	t.Cleanup(hs.Close)
	return hs
}

// setMember makes the invitee's current member event eventID, with membership, replacing
// replaces (a join's unsigned.replaces_state, with an invite before it).
func (hs *memberHomeserver) setMember(eventID id.EventID, membership event.Membership, replaces id.EventID) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.member = map[string]any{"type": "m.room.member", "event_id": eventID, "room_id": benchRoom, "sender": "@heirloom_inviter:localhost",
		"state_key": "@bob:localhost", "content": map[string]any{"membership": membership}}
	if replaces != "" {
		hs.member["unsigned"] = map[string]any{"replaces_state": replaces, "prev_content": map[string]any{"membership": "invite"}}
	}
}

// signedPuppet is a puppet whose own device its self-signing key signs (so it may share history),
// talking to the homeserver at url.
func signedPuppet(t *testing.T, env *benchEnv, url string) *e2ee.Puppet {
	t.Helper()
	ctx := context.Background()
	p := env.puppet(t, "inviter")
	keys, err := p.Mach.GenerateCrossSigningKeys()
	require.NoError(t, err)
	p.Mach.CrossSigningKeys = keys
	require.NoError(t, p.Store.PutSignature(ctx, p.UserID, p.Mach.OwnIdentity().SigningKey, p.UserID, keys.SelfSigningKey.PublicKey(), "signature"))
	p.Client.HomeserverURL = mustURL(t, url)
	p.Client.DefaultHTTPRetries = 0
	return p
}

// A bundle goes to the devices an invitee adds later only while the very invite it was built for
// stands (or at the join that replaced that invite), and while a first delivery would still be
// allowed: another invite of the same user, a join or a leave since, or a visibility that no
// longer shares history, and it goes to no new device.
func TestRedeliveryOnlyWhileTheInviteStands(t *testing.T) {
	env := newBenchEnv(t)
	hs := newMemberHomeserver(t)
	p := signedPuppet(t, env, hs.URL)
	b := &database.SentBundle{BundleID: "b1", Puppet: p.UserID, RoomID: benchRoom, Invitee: "@bob:localhost",
		InviteEventID: "$invite", InviteeMasterKey: "bobMasterKey", State: database.SentDelivered,
		Kind: database.SentKindInvite, CreatedAt: time.Now().UnixMilli()}
	for _, tc := range []struct {
		name       string
		member     id.EventID
		membership event.Membership
		replaces   id.EventID
		atJoin     bool
		visibility event.HistoryVisibility
		want       string
	}{
		{"the invite stands", "$invite", event.MembershipInvite, "", false, event.HistoryVisibilityShared, ""},
		{"world-readable room", "$invite", event.MembershipInvite, "", false, event.HistoryVisibilityWorldReadable, ""},
		{"another invite stands", "$another-invite", event.MembershipInvite, "", false, event.HistoryVisibilityShared, ReasonInviteNotTheBundles},
		{"joined from the invite, at the join", "$join", event.MembershipJoin, "$invite", true, event.HistoryVisibilityShared, ""},
		{"joined from the invite, later", "$join", event.MembershipJoin, "$invite", false, event.HistoryVisibilityShared, ReasonInviteeJoined},
		{"joined from another invite", "$join", event.MembershipJoin, "$another-invite", true, event.HistoryVisibilityShared, ReasonInviteeJoinedOther},
		{"left", "$leave", event.MembershipLeave, "", false, event.HistoryVisibilityShared, ReasonNoLongerInvited},
		{"visibility now joined", "$invite", event.MembershipInvite, "", false, event.HistoryVisibilityJoined, ReasonVisibility},
		{"visibility now invited", "$invite", event.MembershipInvite, "", false, event.HistoryVisibilityInvited, ReasonVisibility},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs.setMember(tc.member, tc.membership, tc.replaces)
			hs.mu.Lock()
			hs.visibility = tc.visibility
			hs.mu.Unlock()
			require.Equal(t, tc.want, env.svc.redeliveryRefused(context.Background(), p, b, tc.atJoin))
		})
	}

	// Past the window, whatever stands.
	hs.setMember("$invite", event.MembershipInvite, "")
	old := *b
	old.CreatedAt = time.Now().Add(-env.svc.cfg.HistorySharing.Redeliver() - time.Minute).UnixMilli()
	require.Equal(t, "past history_sharing.redeliver_window", env.svc.redeliveryRefused(context.Background(), p, &old, false))
}

// joinEvent is the invitee's join as the transaction stream brings it, naming what it replaced.
func joinEvent(t *testing.T, hs *deliveryHomeserver, user id.UserID) *event.Event {
	t.Helper()
	hs.do(func(hs *deliveryHomeserver) { hs.setMembership(user, user, event.MembershipJoin) })
	var raw map[string]any
	hs.do(func(hs *deliveryHomeserver) { raw = hs.members[user] })
	data, err := json.Marshal(raw)
	require.NoError(t, err)
	var evt event.Event
	require.NoError(t, json.Unmarshal(data, &evt))
	require.NoError(t, evt.Content.ParseRaw(event.StateMember))
	return &evt
}

// A device the invitee adds while the puppet's invite is pending, signed by the identity the
// bundle was delivered under, gets the same bundle (the same file and key) when the homeserver
// reports the change; an unsigned one is recorded with the reason and gets nothing.
func TestDeviceAddedAfterTheInviteGetsTheBundle(t *testing.T) {
	r := newInviteRoom(t)
	ctx := context.Background()
	res, err := r.env.svc.Invite(ctx, r.p, benchRoom, bob, true)
	require.NoError(t, err)
	r.bob.addDevice("TABLET", true)
	r.bob.addDevice("TV", false)
	r.hs.publish(t, r.bob, true)
	r.env.svc.DeviceListsChanged(ctx, []id.UserID{bob, r.p.UserID, r.env.svc.cfg.BotUserID()})
	waitForBackground(t, r.env.svc)

	phone, tablet := r.bundleOn(t, r.bob, "PHONE"), r.bundleOn(t, r.bob, "TABLET")
	require.Equal(t, phone.content.File.URL, tablet.content.File.URL, "the same file")
	require.Equal(t, phone.content.File.Key, tablet.content.File.Key, "under the same key")
	require.Len(t, tablet.roomKeys, 18)
	require.Empty(t, r.hs.sentTo(event.ToDeviceEncrypted, bob, "TV"))
	listed, err := r.env.svc.Bundles(ctx, r.p.UserID)
	require.NoError(t, err)
	require.Equal(t, res.Bundle.BundleID, listed.Sent[0].BundleID)
	require.ElementsMatch(t, []DeliveryReport{
		{UserID: bob, DeviceID: "PHONE", Delivered: true},
		{UserID: bob, DeviceID: "LAPTOP", Reason: ReasonNotCrossSigned},
		{UserID: bob, DeviceID: "TABLET", Delivered: true, AddedLater: true},
		{UserID: bob, DeviceID: "TV", Reason: ReasonNotCrossSigned, AddedLater: true},
	}, listed.Sent[0].Devices)
}

// An invitee who reset their identity after the invite gets the bundle on no new device: each is
// recorded as refused, and nothing is sent. With history_sharing.redeliver_window 0 nothing is
// offered at all.
func TestNewDevicesOfAChangedIdentityGetNothing(t *testing.T) {
	ctx := context.Background()
	t.Run("identity reset", func(t *testing.T) {
		r := newInviteRoom(t)
		_, err := r.env.svc.Invite(ctx, r.p, benchRoom, bob, true)
		require.NoError(t, err)
		r.bob.resetIdentity(t)
		r.bob.addDevice("TABLET", true)
		r.hs.publish(t, r.bob, true)
		r.env.svc.DeviceListsChanged(ctx, []id.UserID{bob})
		waitForBackground(t, r.env.svc)
		require.Empty(t, r.hs.sentTo(event.ToDeviceEncrypted, bob, "TABLET"))
		listed, err := r.env.svc.Bundles(ctx, r.p.UserID)
		require.NoError(t, err)
		require.Contains(t, listed.Sent[0].Devices,
			DeliveryReport{UserID: bob, DeviceID: "TABLET", Reason: ReasonIdentityChanged, AddedLater: true})
	})
	t.Run("redelivery off", func(t *testing.T) {
		r := newInviteRoom(t)
		off := time.Duration(0)
		r.env.svc.cfg.HistorySharing.RedeliverWindow = &off
		_, err := r.env.svc.Invite(ctx, r.p, benchRoom, bob, true)
		require.NoError(t, err)
		r.bob.addDevice("TABLET", true)
		r.hs.publish(t, r.bob, true)
		r.env.svc.DeviceListsChanged(ctx, []id.UserID{bob})
		r.env.svc.InviteeJoined(ctx, joinEvent(t, r.hs, bob))
		waitForBackground(t, r.env.svc)
		require.Empty(t, r.hs.sentTo(event.ToDeviceEncrypted, bob, "TABLET"))
	})
}

// The homeserver does not report the device lists of a mere invitee, so heirloom looks once more
// at the join from the puppet's invite: a device added by then gets the bundle just after the
// join. A join from another invite gets nothing.
func TestJoinFromTheInviteBringsTheBundleToNewDevices(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name       string
		otherFirst bool
	}{
		{"joined from the puppet's invite", false},
		{"joined from another member's invite", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newInviteRoom(t)
			_, err := r.env.svc.Invite(ctx, r.p, benchRoom, bob, true)
			require.NoError(t, err)
			if tc.otherFirst {
				r.hs.do(func(hs *deliveryHomeserver) { hs.setMembership(bob, "@carol:localhost", event.MembershipInvite) })
			}
			r.bob.addDevice("TABLET", true)
			r.hs.publish(t, r.bob, true)
			r.env.svc.InviteeJoined(ctx, joinEvent(t, r.hs, bob))
			waitForBackground(t, r.env.svc)
			if tc.otherFirst {
				require.Empty(t, r.hs.sentTo(event.ToDeviceEncrypted, bob, "TABLET"))
				return
			}
			require.Len(t, r.bundleOn(t, r.bob, "TABLET").roomKeys, 18)
		})
	}
}
