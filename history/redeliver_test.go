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
