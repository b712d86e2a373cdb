package gateway_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
)

// While the bridge is down, its outbox grows only up to gateway.max_outbox_size: over it, heirloom
// answers the homeserver's transactions with an error (the homeserver holds them and sends them
// again), after handling what they bring for heirloom's own devices, which the homeserver would
// not send again. GET /status and /metrics say why. Once the bridge has caught up, the homeserver's
// next try is taken, and nothing was lost.
func TestOutboxCapStopsAcknowledging(t *testing.T) {
	h := newHarness(t, func(c *config.Config) { c.Gateway.MaxOutboxSize = config.MinMaxOutboxSize })
	clock := useFakeClock(h)
	var mu sync.Mutex
	down := true
	h.bridge.setAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			answerJSON(http.StatusServiceUnavailable, `{"errcode":"M_UNKNOWN"}`)(w, r, body)
			return
		}
		answerJSON(http.StatusOK, `{}`)(w, r, body)
	})
	h.run(t)
	const alice = "@irc_alice:localhost"
	big := strings.Repeat("x", 60_000)
	push := func(txnID string, events ...string) response {
		return h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/"+txnID, heirloomHS, `{"events":[`+strings.Join(events, ",")+`],`+
			`"de.sorunome.msc2409.to_device":[{"type":"m.dummy","sender":"@alice:localhost","to_user_id":"@irc_alice:localhost","to_device_id":"NONE","content":{}}]}`)
	}
	var stored []string
	for i := 0; ; i++ {
		require.Less(t, i, 30, "the outbox never filled")
		eventID := fmt.Sprintf("$big%d", i)
		resp := push(fmt.Sprint(i), messageEvent(eventID, alice, big))
		if resp.status != http.StatusOK {
			require.Equal(t, http.StatusServiceUnavailable, resp.status, "%s", resp.body)
			require.Equal(t, "M_UNKNOWN", resp.errcode(t))
			break
		}
		stored = append(stored, eventID)
	}
	st := gatewayStatus(t, h)
	require.True(t, st.OutboxFull, "%+v", st)
	require.GreaterOrEqual(t, st.OutboxBytes, int64(config.MinMaxOutboxSize))
	require.Equal(t, len(stored), st.OutboxEvents, "the refused transaction's event is not stored: the homeserver keeps it")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.Equal(c, 1.0, h.metric(t, "heirloom_gateway_outbox_full"))
	}, 5*time.Second, 50*time.Millisecond)
	require.Equal(t, 1.0, h.metric(t, `heirloom_transactions_total{outcome="refused"}`))
	require.Equal(t, float64(len(stored)+1), h.metric(t, `heirloom_events_total{section="to_device",type="m.dummy"}`),
		"the refused transaction's to-device message was handled: the homeserver does not send it again")

	// The bridge is back and catches up; the homeserver's next try is taken.
	mu.Lock()
	down = false
	mu.Unlock()
	h.do(t, http.MethodGet, "/_matrix/client/v3/account/whoami", bridgeAS, "")
	clock.Advance(time.Second)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.False(c, parseStatus(c, h.do(t, http.MethodGet, "/_heirloom/v1/status", "api-secret-0123456789abcdef", "")).OutboxFull)
	}, 10*time.Second, 50*time.Millisecond)
	refusedID := fmt.Sprintf("$big%d", len(stored))
	resp := push(fmt.Sprint(len(stored)), messageEvent(refusedID, alice, big))
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.Equal(c, append(stored, refusedID), eventsOf(okTxns(c, h.bridge)))
	}, 10*time.Second, 50*time.Millisecond, "every event, once, in order")
}

// The gateway's side tables do not grow without end: a decrypted file's record goes a month
// after heirloom last handed out its URL, an event that went to the bridge encrypted a week after,
// by the database's clock.
func TestGatewayTablesPruned(t *testing.T) {
	h := newHarness(t)
	clock := useFakeClock(h)
	ctx := context.Background()
	require.NoError(t, h.db.PutGatewayMedia(ctx, "heirloom_old", "sealed"))
	require.NoError(t, h.db.PutGatewayLate(ctx, &database.GatewayLate{EventID: "$late", RoomID: "!r:localhost", SessionID: "s", Body: "{}"}))
	clock.Advance(6 * 24 * time.Hour)
	require.NoError(t, h.db.PutGatewayMedia(ctx, "heirloom_recent", "sealed"))
	h.gw.Prune(ctx)
	lates, err := h.db.LateGatewayEvents(ctx, "s")
	require.NoError(t, err)
	require.Len(t, lates, 1, "kept for a week")
	clock.Advance(2 * 24 * time.Hour)
	h.gw.Prune(ctx)
	lates, err = h.db.LateGatewayEvents(ctx, "s")
	require.NoError(t, err)
	require.Empty(t, lates, "gone after a week")
	clock.Advance(23 * 24 * time.Hour)
	h.gw.Prune(ctx)
	for mediaID, kept := range map[string]bool{"heirloom_old": false, "heirloom_recent": true} {
		sealed, err := h.db.GatewayMedia(ctx, mediaID)
		require.NoError(t, err)
		require.Equal(t, kept, sealed != "", mediaID)
	}
}
