package server_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"
)

func memberEvent(evtID, sender, target, membership string) string {
	return `{"type":"m.room.member","state_key":"` + target + `","room_id":"!room:localhost","sender":"` + sender +
		`","event_id":"` + evtID + `","origin_server_ts":1,"content":{"membership":"` + membership + `"}}`
}

// An invite and its rescinding in one transaction leave no live invite: every state change of the
// transaction is applied in order before heirloom reacts to any, so a later join without an invite
// (to a room made public, say) cannot accept the rescinded inviter's bundle.
func TestInviteRescindedInTheSameTransactionIsNotLive(t *testing.T) {
	for _, undo := range []string{"leave", "ban"} {
		t.Run(undo, func(t *testing.T) {
			h := newHarness(t)
			h.provision(t, puppet)
			body := `{"events":[` + memberEvent("$invite", "@mallory:localhost", string(puppet), "invite") + `,` +
				memberEvent("$rescind", "@mallory:localhost", string(puppet), undo) + `]}`
			resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/t1", "Bearer "+hsToken, strings.NewReader(body))
			require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
			inv, err := h.db.GetInvite(context.Background(), puppet, "!room:localhost")
			require.NoError(t, err)
			require.Nil(t, inv, "the rescinded invite is not recorded as live")
		})
	}
}

// Event-type labels come from events anyone can send: /metrics counts known types by name and
// everything else as one "other", so no sender can grow it without bound.
func TestEventTypeLabelsAreBounded(t *testing.T) {
	h := newHarness(t)
	events := make([]string, 0, 300)
	for i := range 300 {
		events = append(events, fmt.Sprintf(`{"type":"com.example.spam%d","room_id":"!room:localhost","sender":"@s:localhost",`+
			`"event_id":"$e%d","origin_server_ts":1,"content":{}}`, i, i))
	}
	resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/spam", "Bearer "+hsToken,
		strings.NewReader(`{"events":[`+strings.Join(events, ",")+`]}`))
	require.Equal(t, http.StatusOK, resp.status)
	metrics := string(h.do(t, http.MethodGet, "/metrics", "", nil).body)
	require.Zero(t, strings.Count(metrics, "com.example.spam"), "no label per sent type")
	require.True(t, h.metric(t, `heirloom_events_total{section="events",type="other"} 300`))
}

// A device-list change reaches the shared device tables even when no puppet machine is loaded, so a
// puppet loaded later does not encrypt to a stale device list.
func TestDeviceListChangeWithNoMachineLoaded(t *testing.T) {
	h := newHarness(t)
	const user id.UserID = "@alice:localhost"
	_, err := h.db.Raw.Exec(context.Background(), `INSERT INTO crypto_tracked_user (user_id, devices_outdated) VALUES ($1, false)`, user)
	require.NoError(t, err)
	resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/dl", "Bearer "+hsToken,
		strings.NewReader(`{"org.matrix.msc3202.device_lists":{"changed":["`+string(user)+`"],"left":[]}}`))
	require.Equal(t, http.StatusOK, resp.status)
	var outdated bool
	require.NoError(t, h.db.Raw.QueryRow(context.Background(), `SELECT devices_outdated FROM crypto_tracked_user WHERE user_id=$1`, user).Scan(&outdated))
	require.True(t, outdated, "the change is recorded with no machine loaded")
}

// A departure stamped in the future (its server's clock, or a lie) marks the room's rotation no
// later than now: it cannot pin every session created until then to rotate.
func TestFutureTimestampedDepartureDoesNotPinRotation(t *testing.T) {
	h := newHarness(t)
	future := `{"type":"m.room.member","state_key":"@a:localhost","room_id":"!room:localhost","sender":"@a:localhost",` +
		`"event_id":"$future","origin_server_ts":4102444800000,"content":{"membership":"leave"}}`
	resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/future", "Bearer "+hsToken, strings.NewReader(`{"events":[`+future+`]}`))
	require.Equal(t, http.StatusOK, resp.status)
	require.False(t, h.rotateAfter(t).After(time.Now().Add(time.Second)), "rotation mark %s", h.rotateAfter(t))
}
