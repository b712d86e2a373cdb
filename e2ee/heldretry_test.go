package e2ee

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"

	"github.com/heirloom-matrix/heirloom/database"
)

// Phases of membershipHomeserver's answers to a membership question.
const (
	answerForbidden int32 = iota // the puppet is only invited: 403
	answerFailing                // the homeserver fails: 500
	answerJoined                 // the user is joined
)

// membershipHomeserver answers membership questions as phase says.
func membershipHomeserver(t *testing.T, phase *atomic.Int32) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if !strings.Contains(r.URL.Path, "/state/m.room.member/") {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errcode":"M_NOT_FOUND","error":"not found"}`))
			return
		}
		switch phase.Load() {
		case answerForbidden:
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"errcode":"M_FORBIDDEN","error":"User not in room"}`))
		case answerFailing:
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(`{"errcode":"M_UNKNOWN","error":"Internal server error"}`))
		default:
			_, _ = w.Write([]byte(`{"membership":"join"}`))
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// A room key held while the puppet was invited is checked at the join: its sender's membership is
// asked of the homeserver. If that one question fails for a passing reason (a 500, a restart of a
// Synapse worker), the key stays held, and is stored once the homeserver answers: the key of a
// member is never lost over one failed request (nobody sends it again).
func TestAHeldKeyOutlivesAMembershipQuestionTheHomeserverFailsAtTheJoin(t *testing.T) {
	var phase atomic.Int32
	mgr := testManagerAt(t, membershipHomeserver(t, &phase))
	mgr.heldRetries.first = time.Hour // the second question is asked by hand here
	t.Cleanup(mgr.heldRetries.stop)
	p := testPuppet(t, mgr, "invited")
	ctx := context.Background()
	db := mgr.db
	inviter, alice := newOlmSender("@inviter:localhost"), newOlmSender("@alice:localhost")
	require.NoError(t, db.StateStore.SetMembership(ctx, roomA, p.UserID, event.MembershipInvite))
	require.NoError(t, db.PutInvite(ctx, &database.Invite{Puppet: p.UserID, RoomID: roomA, Inviter: inviter.user,
		InviteEventID: "$invite", InvitedAt: time.Now().UnixMilli()}))
	real, err := olm.NewOutboundGroupSession()
	require.NoError(t, err)
	alice.sendRoomKey(ctx, p, roomA, real.ID(), real.Key(), true)
	require.Nil(t, heldRow(t, p, roomA, real.ID()), "held, not stored, while invited")

	require.NoError(t, db.StateStore.SetMembership(ctx, roomA, p.UserID, event.MembershipJoin))
	phase.Store(answerFailing)
	p.ReleaseHeldKeys(ctx, roomA)
	require.Nil(t, heldRow(t, p, roomA, real.ID()), "not stored while the homeserver does not answer")
	phase.Store(answerJoined)
	p.ReleaseHeldKeys(ctx, roomA)
	require.NotNil(t, heldRow(t, p, roomA, real.ID()),
		"alice is a member: her key must not be dropped for good because one membership question failed with a 500 at the join")
}

// A room key from a sender heirloom's state store does not know, while the homeserver fails to
// say whether he is a member: held, and asked about again by itself after a backoff, then stored
// once the homeserver answers. Nobody calls ReleaseHeldKeys here: the retry does.
func TestARoomKeyIsAskedAboutAgainWhenTheHomeserverFails(t *testing.T) {
	var phase atomic.Int32
	phase.Store(answerFailing)
	mgr := testManagerAt(t, membershipHomeserver(t, &phase))
	mgr.heldRetries.first = 20 * time.Millisecond
	t.Cleanup(mgr.heldRetries.stop)
	p := testPuppet(t, mgr, "joined")
	ctx := context.Background()
	require.NoError(t, mgr.db.StateStore.SetMembership(ctx, roomA, p.UserID, event.MembershipJoin))
	alice := newOlmSender("@alice:localhost")
	real, err := olm.NewOutboundGroupSession()
	require.NoError(t, err)
	alice.sendRoomKey(ctx, p, roomA, real.ID(), real.Key(), true)
	require.Nil(t, heldRow(t, p, roomA, real.ID()), "not stored while the homeserver does not answer")
	time.Sleep(100 * time.Millisecond) // a few failed retries
	require.Nil(t, heldRow(t, p, roomA, real.ID()))

	phase.Store(answerJoined)
	require.Eventually(t, func() bool { return heldRow(t, p, roomA, real.ID()) != nil }, 10*time.Second, 20*time.Millisecond,
		"the key is stored once the homeserver answers that its sender is a member")
}
