package gateway_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"
)

// How a bridge leaves a transaction unanswered.
const (
	noAnswer     = "no answer"         // it never answers (matrix-bot-sdk 0.8.0 on some invites)
	closedConn   = "connection closed" // the connection ends after the request, without an answer
	proxyTimeout = "proxy's 504"       // a reverse proxy in front of it gives up on it
)

// hangingBridge takes empty transactions and every transaction without one of the events in hang
// at once, and leaves the others unanswered, the way how says; or every transaction, empty ones
// included, if down is set (a bridge that accepts connections but answers nothing).
type hangingBridge struct {
	mu       sync.Mutex
	hang     map[string]bool
	how      string
	down     bool
	hung     []time.Duration // how long each transaction left unanswered waited
	accepted []string
}

func (b *hangingBridge) answer(w http.ResponseWriter, r *http.Request, body []byte) {
	var txn bridgeTxn
	_ = json.Unmarshal(body, &txn)
	b.mu.Lock()
	hang, how := b.down, b.how
	for _, ev := range txn.Events {
		hang = hang || b.hang[fmt.Sprint(ev["event_id"])]
	}
	b.mu.Unlock()
	if !hang {
		b.mu.Lock()
		for _, ev := range txn.Events {
			b.accepted = append(b.accepted, fmt.Sprint(ev["event_id"]))
		}
		b.mu.Unlock()
		answerJSON(http.StatusOK, `{}`)(w, r, body)
		return
	}
	start := time.Now()
	switch how {
	case noAnswer:
		<-r.Context().Done() // until heirloom gives up and closes the connection
	case closedConn:
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			_ = conn.Close()
		}
	case proxyTimeout:
		answerJSON(http.StatusGatewayTimeout, `<html>504 Gateway Time-out</html>`)(w, r, body)
	}
	b.mu.Lock()
	b.hung = append(b.hung, time.Since(start))
	b.mu.Unlock()
}

func (b *hangingBridge) got(eventID string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Contains(b.accepted, eventID)
}

func (b *hangingBridge) acceptedIDs() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.accepted...)
}

func (b *hangingBridge) waits() []time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]time.Duration(nil), b.hung...)
}

// The shortened answer timeouts of these tests: a transaction's first attempt, the later ones.
const (
	firstAnswer = 800 * time.Millisecond
	laterAnswer = 200 * time.Millisecond
)

// A bridge that leaves one event unanswered while it takes empty transactions (matrix-bot-sdk
// 0.8.0 never answers a transaction with an invite of an unregistered user of its namespace, and a
// retry of the same transaction ID waits on the same answer) is not down: the transaction is tried
// once more, then split, its events going alone under new transaction IDs, and the event left
// unanswered alone is set aside. Its room and the others wait on it for the transaction's first
// attempt and two short ones; a later event the bridge hangs on costs only short attempts.
func TestBridgeHangingOnOneEventHoldsNoOtherRoom(t *testing.T) {
	for _, how := range []string{noAnswer, closedConn, proxyTimeout} {
		t.Run(how, func(t *testing.T) { hangingOnOneEvent(t, how) })
	}
}

func hangingOnOneEvent(t *testing.T, how string) {
	h := newHarness(t)
	clock := useFakeClock(h)
	h.gw.SetAnswerTimeouts(firstAnswer, laterAnswer, laterAnswer)
	bridge := &hangingBridge{hang: map[string]bool{"$hang": true, "$hang2": true}, how: how}
	h.bridge.setAnswer(bridge.answer)
	h.run(t)
	roomX, roomY, roomZ := id.RoomID("!x:localhost"), id.RoomID("!y:localhost"), id.RoomID("!z:localhost")
	const alice = "@irc_alice:localhost"
	txn := `{"events":[` + inRoom(memberEvent("$jx", alice, alice, "join"), roomX) + `,` + inRoom(memberEvent("$jy", alice, alice, "join"), roomY) + `,` +
		inRoom(memberEvent("$jz", alice, alice, "join"), roomZ) + `,` +
		inRoom(messageEvent("$x1", "@bob:localhost", "one"), roomX) + `,` + inRoom(memberEvent("$hang", "@bob:localhost", "@irc_nobody:localhost", "invite"), roomX) + `,` +
		inRoom(messageEvent("$x2", "@bob:localhost", "after the invite"), roomX) + `,` +
		inRoom(messageEvent("$y1", "@bob:localhost", "room Y"), roomY) + `]}`
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS, txn).status)

	// The transaction unanswered, tried once more a second later (by the database's clock), split,
	// its events alone: the invite is left unanswered once more and set aside, and the rooms go on.
	deadline := time.Now().Add(20 * time.Second)
	for !bridge.got("$y1") || !bridge.got("$x2") {
		require.True(t, time.Now().Before(deadline), "the rooms never went on; unanswered: %v", bridge.waits())
		clock.Advance(time.Second)
		time.Sleep(50 * time.Millisecond)
	}
	require.Equal(t, []string{"$jx", "$jy", "$jz", "$x1", "$x2", "$y1"}, bridge.acceptedIDs(), "each room in its order, the invite set aside")
	waits := bridge.waits()
	require.Len(t, waits, 3, "the transaction, its one retry, and the event alone: then set aside")
	if how == noAnswer {
		require.GreaterOrEqual(t, waits[0], firstAnswer-50*time.Millisecond, "a transaction's first attempt has the full timeout")
		for _, w := range waits[1:] {
			require.Less(t, w, firstAnswer-100*time.Millisecond, "a retry of an unanswered transaction, and an event alone, have the short one")
		}
	}

	st := gatewayStatus(t, h)
	require.Len(t, st.DeadLetters, 1, "%+v", st)
	require.Equal(t, "$hang", st.DeadLetters[0].EventID)
	require.Zero(t, st.OutboxEvents)
	require.False(t, st.DeliveryFailing)

	// Another event the bridge hangs on, in another room, within the hour: every attempt of it has
	// the short timeout, so the rooms behind it wait little.
	before := len(bridge.waits())
	txn = `{"events":[` + inRoom(messageEvent("$z1", "@bob:localhost", "room Z"), roomZ) + `,` +
		inRoom(memberEvent("$hang2", "@bob:localhost", "@irc_nobody2:localhost", "invite"), roomZ) + `,` +
		inRoom(messageEvent("$y2", "@bob:localhost", "room Y again"), roomY) + `]}`
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/2", heirloomHS, txn).status)
	deadline = time.Now().Add(20 * time.Second)
	for !bridge.got("$y2") {
		require.True(t, time.Now().Before(deadline), "room Y never reached the bridge again; unanswered: %v", bridge.waits())
		clock.Advance(time.Second)
		time.Sleep(50 * time.Millisecond)
	}
	if how == noAnswer {
		for _, w := range bridge.waits()[before:] {
			require.Less(t, w, firstAnswer-100*time.Millisecond, "after the bridge hung on an event, every attempt has the short timeout")
		}
	}
}

// A bridge that answers nothing, not even an empty transaction, is down, not hanging on an event:
// the oldest transaction is retried in order, however long it takes, nothing is set aside, and
// everything arrives once the bridge answers again.
func TestBridgeAnsweringNothingIsDown(t *testing.T) {
	h := newHarness(t)
	clock := useFakeClock(h)
	h.gw.SetAnswerTimeouts(laterAnswer, laterAnswer, laterAnswer)
	bridge := &hangingBridge{how: noAnswer, down: true}
	h.bridge.setAnswer(bridge.answer)
	h.run(t)
	const alice = "@irc_alice:localhost"
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS,
		`{"events":[`+messageEvent("$a", alice, "a")+`,`+messageEvent("$b", alice, "b")+`]}`).status)
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/2", heirloomHS,
		`{"events":[`+messageEvent("$c", alice, "c")+`]}`).status)
	deadline := time.Now().Add(30 * time.Second)
	for len(bridge.waits()) < 12 {
		require.True(t, time.Now().Before(deadline), "the bridge is tried again and again")
		clock.Advance(time.Minute)
		time.Sleep(50 * time.Millisecond)
	}
	st := gatewayStatus(t, h)
	require.Empty(t, st.DeadLetters, "a bridge that answers nothing refuses no event")
	require.True(t, st.DeliveryFailing)
	require.Equal(t, 3, st.OutboxEvents)
	ids := map[string]bool{}
	for _, txn := range bridgeTxns(t, h.bridge) {
		if len(txn.Events) > 0 {
			ids[txn.ID] = true
			require.Len(t, txn.Events, 3, "the same transaction, whole, every time: nothing split")
		}
	}
	require.Len(t, ids, 1, "the same transaction, under its ID")

	bridge.mu.Lock()
	bridge.down = false
	bridge.mu.Unlock()
	h.do(t, http.MethodGet, "/_matrix/client/v3/account/whoami", bridgeAS, "") // the bridge is back
	clock.Advance(time.Second)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.Len(c, eventsOf(okTxns(c, h.bridge)), 3)
	}, 10*time.Second, 20*time.Millisecond)
	require.Equal(t, []string{"$a", "$b", "$c"}, eventsOf(okTxns(t, h.bridge)), "everything, in order, once")
}

// A bridge that hangs on the homeserver's query of a user (an unregistered name of its namespace
// invited to a room) is answered for within queryWait: a 404, what the homeserver concludes when the
// bridge does not answer, but without Synapse's appservice event stream standing still for a minute.
func TestQueryTheBridgeHangsOnIsAnsweredInTime(t *testing.T) {
	h := newHarness(t)
	h.gw.SetQueryWait(300 * time.Millisecond)
	h.bridge.setAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) {
		select { // no answer: until heirloom gives up, or 10 s (then an empty one)
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	start := time.Now()
	resp := h.do(t, http.MethodGet, "/_matrix/app/v1/users/@irc_nobody:localhost", heirloomHS, "")
	require.Equal(t, http.StatusNotFound, resp.status, "%s", resp.body)
	require.Less(t, time.Since(start), 5*time.Second, "the homeserver's query waited on the bridge")
}
