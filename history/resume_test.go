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
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
)

// crossSignedKeys is a user's part of a /keys/query answer: one device, signed by the device and by
// the user's self-signing key, which the master key signs. mautrix checks every signature.
func crossSignedKeys(t *testing.T, userID id.UserID, deviceID id.DeviceID) map[string]any {
	t.Helper()
	master, err := olm.NewPKSigning()
	require.NoError(t, err)
	selfSigning, err := olm.NewPKSigning()
	require.NoError(t, err)
	masterKeys := mautrix.CrossSigningKeys{UserID: userID, Usage: []id.CrossSigningUsage{id.XSUsageMaster},
		Keys: map[id.KeyID]id.Ed25519{id.NewKeyID(id.KeyAlgorithmEd25519, master.PublicKey().String()): master.PublicKey()}}
	sskKeys := mautrix.CrossSigningKeys{UserID: userID, Usage: []id.CrossSigningUsage{id.XSUsageSelfSigning},
		Keys: map[id.KeyID]id.Ed25519{id.NewKeyID(id.KeyAlgorithmEd25519, selfSigning.PublicKey().String()): selfSigning.PublicKey()}}
	sig, err := master.SignJSON(sskKeys)
	require.NoError(t, err)
	sskKeys.Signatures = signatures.NewSingleSignature(userID, id.KeyAlgorithmEd25519, master.PublicKey().String(), sig)

	account := crypto.NewOlmAccount()
	device := mautrix.DeviceKeys{UserID: userID, DeviceID: deviceID, Algorithms: []id.Algorithm{id.AlgorithmMegolmV1, id.AlgorithmOlmV1},
		Keys: map[id.DeviceKeyID]string{
			id.NewDeviceKeyID(id.KeyAlgorithmCurve25519, deviceID): string(account.IdentityKey()),
			id.NewDeviceKeyID(id.KeyAlgorithmEd25519, deviceID):    string(account.SigningKey()),
		}}
	deviceSig, err := account.SignJSON(device)
	require.NoError(t, err)
	crossSig, err := selfSigning.SignJSON(device)
	require.NoError(t, err)
	device.Signatures = signatures.NewSingleSignature(userID, id.KeyAlgorithmEd25519, deviceID.String(), deviceSig)
	device.Signatures[userID][id.NewKeyID(id.KeyAlgorithmEd25519, selfSigning.PublicKey().String())] = crossSig
	return map[string]any{
		"device_keys":       map[id.UserID]any{userID: map[id.DeviceID]any{deviceID: device}},
		"master_keys":       map[id.UserID]any{userID: masterKeys},
		"self_signing_keys": map[id.UserID]any{userID: sskKeys},
	}
}

// deliveryHomeserver answers what a resumed delivery reads: the invitee's member event, the room's
// history visibility and the invitee's keys.
type deliveryHomeserver struct {
	*httptest.Server
	mu         sync.Mutex
	member     map[string]any // the invitee's member event
	visibility event.HistoryVisibility
	keys       map[string]any
}

func newDeliveryHomeserver(t *testing.T, keys map[string]any) *deliveryHomeserver {
	t.Helper()
	hs := &deliveryHomeserver{keys: keys}
	hs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hs.mu.Lock()
		defer hs.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch path := r.URL.Path; {
		case strings.Contains(path, "/state/m.room.member/"):
			_ = json.NewEncoder(w).Encode(hs.member)
		case strings.Contains(path, "/state/m.room.history_visibility"):
			_ = json.NewEncoder(w).Encode(map[string]any{"history_visibility": hs.visibility})
		case strings.HasSuffix(path, "/keys/query"):
			_ = json.NewEncoder(w).Encode(hs.keys)
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errcode":"M_UNRECOGNIZED","error":"not in this test"}`))
		}
	}))
	t.Cleanup(hs.Close)
	return hs
}

// set makes the invitee's member event one of membership by sender, with the event ID, and sets
// the room's history visibility.
func (hs *deliveryHomeserver) set(invitee, sender id.UserID, eventID id.EventID, membership event.Membership, replaces id.EventID,
	visibility event.HistoryVisibility) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.member = map[string]any{"type": "m.room.member", "event_id": eventID, "sender": sender, "state_key": invitee,
		"room_id": benchRoom, "content": map[string]any{"membership": membership},
		"unsigned": map[string]any{"replaces_state": replaces}}
	hs.visibility = visibility
}

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
	hs := newDeliveryHomeserver(t, crossSignedKeys(t, bob, "BOBDEV"))
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
