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

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
)

// joinHomeserver is a homeserver for one room the puppet joins: the join answers, the puppet's
// member event names the state event the join replaced, the bundle media is served, and nobody
// has keys to query.
type joinHomeserver struct {
	*httptest.Server
	mu sync.Mutex
	// replacesState and prevMembership are what the join replaced, as the homeserver names it.
	replacesState  id.EventID
	prevMembership event.Membership
	media          []byte
	// onJoin runs while the homeserver handles the join, e.g. to cancel the caller's request.
	onJoin func()
	joins  int
	// onMedia runs before the bundle media is served, e.g. to hold a download.
	onMedia func()
}

func newJoinHomeserver(t *testing.T, media []byte) *joinHomeserver {
	t.Helper()
	hs := &joinHomeserver{media: media, prevMembership: event.MembershipInvite}
	hs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hs.mu.Lock()
		defer hs.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		path := r.URL.Path
		switch {
		case strings.HasSuffix(path, "/join") && r.Method == http.MethodPost:
			hs.joins++
			if hs.onJoin != nil {
				hs.onJoin()
			}
			_, _ = w.Write([]byte(`{"room_id":"` + string(benchRoom) + `"}`))
		case strings.Contains(path, "/state/m.room.member/"):
			evt := map[string]any{"type": "m.room.member", "event_id": "$join", "sender": "@heirloom_dst:localhost",
				"state_key": "@heirloom_dst:localhost", "room_id": benchRoom, "content": map[string]any{"membership": "join"},
				"unsigned": map[string]any{"replaces_state": hs.replacesState, "prev_sender": "@alice:localhost",
					"prev_content": map[string]any{"membership": hs.prevMembership}}}
			_ = json.NewEncoder(w).Encode(evt)
		case strings.HasSuffix(path, "/keys/query"):
			_, _ = w.Write([]byte(`{"device_keys":{}}`))
		case strings.Contains(path, "/media/download/"):
			if hs.onMedia != nil {
				hs.onMedia()
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			_, _ = w.Write(hs.media)
		case strings.HasSuffix(path, "/sync"):
			_, _ = w.Write([]byte(`{"next_batch":"s1"}`))
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errcode":"M_UNRECOGNIZED","error":"not in this test"}`))
		}
	}))
	t.Cleanup(hs.Close)
	return hs
}

// joinFixture is a puppet invited by alice, whose bundle for the room arrived and waits for the
// join: alice's device is one the puppet trusts, so only the invite rules decide.
func joinFixture(t *testing.T) (*benchEnv, *e2ee.Puppet, *joinHomeserver, *database.ReceivedBundle) {
	t.Helper()
	return joinFixtureOn(t, testdb.SQLite(t), 20)
}

// joinFixtureOn is joinFixture on the given database, with a bundle of n sessions.
func joinFixtureOn(t *testing.T, dbCfg config.Database, n int) (*benchEnv, *e2ee.Puppet, *joinHomeserver, *database.ReceivedBundle) {
	t.Helper()
	env := newBenchEnvOn(t, dbCfg)
	rb, body := receivedFixture(t, env, n)
	rb.State = database.ReceivedPending
	require.NoError(t, env.db.UpdateReceivedBundle(context.Background(), rb))
	hs := newJoinHomeserver(t, body)
	p := pointPuppetAt(t, env, hs.URL)
	require.NoError(t, p.Store.PutDevice(context.Background(), rb.Sender, &id.Device{
		UserID: rb.Sender, DeviceID: rb.SenderDevice, IdentityKey: rb.SenderKey, SigningKey: "aliceSigning", Trust: id.TrustStateVerified,
	}))
	return env, p, hs, rb
}

func invite(t *testing.T, env *benchEnv, p *e2ee.Puppet, eventID id.EventID, membership event.Membership) {
	t.Helper()
	stateKey := p.UserID.String()
	evt := &event.Event{ID: eventID, Type: event.StateMember, RoomID: benchRoom, Sender: "@alice:localhost", StateKey: &stateKey,
		Content: event.Content{Parsed: &event.MemberEventContent{Membership: membership}}}
	env.svc.TrackMembership(context.Background(), evt)
}

func bundleState(t *testing.T, env *benchEnv, rb *database.ReceivedBundle) *database.ReceivedBundle {
	t.Helper()
	b, err := env.db.GetReceivedBundle(context.Background(), rb.Puppet, rb.RoomID, rb.Sender)
	require.NoError(t, err)
	return b
}

// The join that replaced alice's invite accepts it: her bundle is imported.
func TestJoinFromTheInviteImportsTheBundle(t *testing.T) {
	env, p, hs, rb := joinFixture(t)
	invite(t, env, p, "$invite", event.MembershipInvite)
	hs.replacesState = "$invite"
	res, err := env.svc.Join(context.Background(), p, benchRoom)
	require.NoError(t, err)
	require.NotNil(t, res.Bundle, res.History)
	require.Equal(t, database.ReceivedImported, res.Bundle.State, res.Bundle.Error)
	require.Equal(t, database.ReceivedImported, bundleState(t, env, rb).State)
}

// A bridge that gives up on its /join request (the request's context is cancelled once the join
// went through) still gets the bundle imported: nothing after the join hangs on the request.
func TestCancelledJoinRequestStillImports(t *testing.T) {
	env, p, hs, rb := joinFixture(t)
	invite(t, env, p, "$invite", event.MembershipInvite)
	hs.replacesState = "$invite"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hs.onJoin = cancel
	_, _ = env.svc.Join(ctx, p, benchRoom)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		b, err := env.db.GetReceivedBundle(context.Background(), rb.Puppet, rb.RoomID, rb.Sender)
		require.NoError(c, err)
		require.Equal(c, database.ReceivedImported, b.State)
	}, 10*time.Second, 20*time.Millisecond, "the bundle is imported although the request was cancelled")
}

// An invite rescinded (or left) before the join, in the same transaction as the invite itself:
// a later join without an invite, e.g. to a room made public, accepts nothing.
func TestRescindedInviteIsNotAcceptedOnALaterJoin(t *testing.T) {
	env, p, hs, rb := joinFixture(t)
	invite(t, env, p, "$invite", event.MembershipInvite)
	invite(t, env, p, "$rescind", event.MembershipLeave)
	hs.replacesState, hs.prevMembership = "$rescind", event.MembershipLeave // the join replaced the leave
	res, err := env.svc.Join(context.Background(), p, benchRoom)
	require.NoError(t, err)
	require.Nil(t, res.Bundle, res.History)
	require.Equal(t, database.ReceivedPending, bundleState(t, env, rb).State, "alice's bundle is never imported")
}

// A join that replaced another membership event than the recorded invite (the invite was rescinded
// and heirloom did not hear of it) accepts nothing, and the stale invite is forgotten.
func TestJoinThatReplacedSomethingElseAcceptsNothing(t *testing.T) {
	env, p, hs, rb := joinFixture(t)
	invite(t, env, p, "$invite", event.MembershipInvite)
	hs.replacesState, hs.prevMembership = "$some-later-leave", event.MembershipLeave
	res, err := env.svc.Join(context.Background(), p, benchRoom)
	require.NoError(t, err)
	require.Nil(t, res.Bundle, res.History)
	require.Equal(t, database.ReceivedPending, bundleState(t, env, rb).State)
	inv, err := env.db.GetInvite(context.Background(), p.UserID, benchRoom)
	require.NoError(t, err)
	require.Nil(t, inv, "the stale invite is forgotten")
}

// A join that replaced another invite than the recorded one (another invite followed, which
// heirloom did not hear of) accepts nothing: the invite the bundle waits for is not the one the
// puppet joined from.
func TestJoinThatReplacedAnotherInviteAcceptsNothing(t *testing.T) {
	env, p, hs, rb := joinFixture(t)
	invite(t, env, p, "$invite", event.MembershipInvite)
	hs.replacesState, hs.prevMembership = "$a-later-invite", event.MembershipInvite
	res, err := env.svc.Join(context.Background(), p, benchRoom)
	require.NoError(t, err)
	require.Nil(t, res.Bundle, res.History)
	require.Equal(t, database.ReceivedPending, bundleState(t, env, rb).State, "alice's bundle is not imported")
}

// A join made outside the API, seen in the transaction stream after the invite, accepts the
// invite it replaced.
func TestJoinSeenInTransactionsAcceptsTheInvite(t *testing.T) {
	env, p, _, _ := joinFixture(t)
	invite(t, env, p, "$invite", event.MembershipInvite)
	stateKey := p.UserID.String()
	join := &event.Event{ID: "$join", Type: event.StateMember, RoomID: benchRoom, Sender: p.UserID, StateKey: &stateKey,
		Content:  event.Content{Parsed: &event.MemberEventContent{Membership: event.MembershipJoin}},
		Unsigned: event.Unsigned{ReplacesState: "$invite", PrevContent: &event.Content{VeryRaw: json.RawMessage(`{"membership":"invite"}`)}}}
	env.svc.TrackMembership(context.Background(), join)
	inv, err := env.db.GetInvite(context.Background(), p.UserID, benchRoom)
	require.NoError(t, err)
	require.True(t, inv.Confirmed())
	require.Equal(t, id.EventID("$join"), inv.JoinEventID)
}

// One import per accepted invite: once alice's bundle is imported under the puppet's join, another
// bundle from her for the same invite is dropped on arrival; a new invite starts over.
func TestOneImportPerAcceptedInvite(t *testing.T) {
	env, p, hs, rb := joinFixture(t)
	ctx := context.Background()
	invite(t, env, p, "$invite", event.MembershipInvite)
	hs.replacesState = "$invite"
	res, err := env.svc.Join(ctx, p, benchRoom)
	require.NoError(t, err)
	require.Equal(t, database.ReceivedImported, res.Bundle.State)
	require.True(t, env.svc.alreadyImported(ctx, p, benchRoom, rb.Sender), "a second bundle for this invite is refused")
	require.False(t, env.svc.alreadyImported(ctx, p, benchRoom, "@bob:localhost"), "the rule is per sender")

	invite(t, env, p, "$leave", event.MembershipLeave)
	invite(t, env, p, "$invite2", event.MembershipInvite)
	require.False(t, env.svc.alreadyImported(ctx, p, benchRoom, rb.Sender), "not yet accepted: a new bundle may wait")
	stateKey := p.UserID.String()
	env.svc.TrackMembership(ctx, &event.Event{ID: "$join2", Type: event.StateMember, RoomID: benchRoom, Sender: p.UserID,
		StateKey: &stateKey, Content: event.Content{Parsed: &event.MemberEventContent{Membership: event.MembershipJoin}},
		Unsigned: event.Unsigned{ReplacesState: "$invite2"}})
	require.False(t, env.svc.alreadyImported(ctx, p, benchRoom, rb.Sender), "a new accepted invite takes a new bundle")
}
