package history

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// What a bridge admin asks of history sharing (through the API or heirloom's bot): a fresh bundle
// for a member, a retry of failed imports now, a room's bundles.

// A member who lost their keys gets a fresh bundle of the room's history on the admin's request,
// under every rule of an invite's bundle, and without an invite.
func TestReshareGivesAMemberTheHistoryAgain(t *testing.T) {
	ctx := context.Background()
	r := newInviteRoom(t)
	r.hs.do(func(hs *deliveryHomeserver) { hs.setMembership(bob, bob, event.MembershipJoin) })
	res, err := r.env.svc.Reshare(ctx, r.p, benchRoom, bob)
	require.NoError(t, err)
	require.Equal(t, database.SentDelivered, res.Bundle.State, res.Bundle.Reason)
	require.Equal(t, []string{"upload", "sendToDevice"}, r.hs.sentOps(), "no invite")
	require.Len(t, r.bundleOn(t, r.bob, "PHONE").roomKeys, 18)
	listed, err := r.env.svc.RoomBundles(ctx, benchRoom)
	require.NoError(t, err)
	require.Len(t, listed.Sent, 1)
	require.Equal(t, database.SentKindReshare, listed.Sent[0].Kind)
	require.Empty(t, listed.Sent[0].InviteEventID, "a reshare names no invite")

	// A later invite's echo is never taken for the reshare's bundle.
	r.hs.do(func(hs *deliveryHomeserver) { hs.setMembership(bob, bob, event.MembershipLeave) })
	r.hs.do(func(hs *deliveryHomeserver) { hs.setMembership(bob, r.p.UserID, event.MembershipInvite) })
	r.hs.publish(t, r.bob, true)
	inviteID, _ := r.hs.member(bob)
	r.env.svc.InviteSent(ctx, echoOf(inviteID, r.p.UserID, bob))
	waitForBackground(t, r.env.svc)
	listed, err = r.env.svc.RoomBundles(ctx, benchRoom)
	require.NoError(t, err)
	require.Len(t, listed.Sent, 2)
	require.Equal(t, database.SentKindInvite, listed.Sent[0].Kind)
	require.Equal(t, inviteID, listed.Sent[0].InviteEventID)
}

// A reshare goes only to a member, and says why not otherwise; the rules of an invite's bundle
// still decide what goes.
func TestReshareRefusals(t *testing.T) {
	ctx := context.Background()
	t.Run("not in the room", func(t *testing.T) {
		r := newInviteRoom(t)
		_, err := r.env.svc.Reshare(ctx, r.p, benchRoom, bob)
		require.ErrorIs(t, err, ErrNotMember)
	})
	t.Run("left the room", func(t *testing.T) {
		r := newInviteRoom(t)
		r.hs.do(func(hs *deliveryHomeserver) { hs.setMembership(bob, bob, event.MembershipLeave) })
		_, err := r.env.svc.Reshare(ctx, r.p, benchRoom, bob)
		require.ErrorIs(t, err, ErrNotMember)
	})
	t.Run("the puppet cannot see the room", func(t *testing.T) {
		r := newInviteRoom(t)
		r.hs.do(func(hs *deliveryHomeserver) { hs.fail["member"] = http.StatusForbidden })
		_, err := r.env.svc.Reshare(ctx, r.p, benchRoom, bob)
		require.ErrorIs(t, err, e2ee.ErrUnknownRoom)
	})
	t.Run("too large", func(t *testing.T) {
		r := newInviteRoom(t)
		r.hs.do(func(hs *deliveryHomeserver) {
			hs.setMembership(bob, bob, event.MembershipJoin)
			hs.uploadLimit = 1024
		})
		_, err := r.env.svc.Reshare(ctx, r.p, benchRoom, bob)
		require.ErrorIs(t, err, keybundle.ErrBundleTooLarge)
		require.Empty(t, r.hs.sentOps())
	})
	t.Run("history no longer shared", func(t *testing.T) {
		r := newInviteRoom(t)
		r.hs.do(func(hs *deliveryHomeserver) {
			hs.setMembership(bob, bob, event.MembershipJoin)
			hs.visibility = event.HistoryVisibilityJoined
		})
		res, err := r.env.svc.Reshare(ctx, r.p, benchRoom, bob)
		require.NoError(t, err)
		require.Equal(t, database.SentNothing, res.Bundle.State)
		require.Equal(t, ReasonVisibility, res.Bundle.Reason)
		require.Empty(t, r.hs.sentOps())
	})
}

// An admin's retry starts a failed import again at once, with its attempts from zero, under every
// rule of an import; it touches no other puppet's bundles, and with nothing to retry it says so.
func TestRetryReceivedImportsAFailedBundleNow(t *testing.T) {
	ctx := context.Background()
	r := newReceiveRoom(t, testdb.SQLite(t))
	r.env.svc.maxAttempts = 1
	res, err := r.env.svc.RetryReceived(ctx, r.dst, benchRoom)
	require.NoError(t, err)
	require.Empty(t, res.Bundles, "nothing to retry")

	r.invited(t, alice)
	r.arrive(r.sender, r.offer(t, 20))
	r.hs.do(func(hs *deliveryHomeserver) { hs.fail["download"] = http.StatusBadGateway })
	joined, err := r.env.svc.Join(ctx, r.dst, benchRoom)
	require.NoError(t, err)
	require.Equal(t, database.ReceivedFailed, joined.Bundle.State)
	require.Contains(t, joined.Bundle.Error, "gave up after 1 attempts")

	other := provisioned(t, r.env, "other")
	res, err = r.env.svc.RetryReceived(ctx, other, benchRoom)
	require.NoError(t, err)
	require.Empty(t, res.Bundles, "another puppet's retry leaves this one alone")
	require.Equal(t, database.ReceivedFailed, r.stored(t, alice).State)

	r.hs.do(func(hs *deliveryHomeserver) { delete(hs.fail, "download") })
	res, err = r.env.svc.RetryReceived(ctx, r.dst, benchRoom)
	require.NoError(t, err)
	require.Len(t, res.Bundles, 1)
	require.Equal(t, database.ReceivedImported, res.Bundles[0].State, res.Bundles[0].Error)
	require.Equal(t, 18, res.Bundles[0].Imported)
	require.Zero(t, res.Bundles[0].Attempts, "its attempts start again from zero, and none failed")
}
