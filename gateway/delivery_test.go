package gateway_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"
)

// fakeClock is the database's clock (database.Database.Now) under a test's control. Moving it
// wakes the delivery loop.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	moved func()
}

func useFakeClock(h *harness) *fakeClock {
	c := &fakeClock{now: time.UnixMilli(1_700_000_000_000), moved: h.gw.Nudge}
	h.db.Now = c.Now
	return c
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
	c.moved()
}

// pythonDepthLimit is the deepest JSON nesting of a whole transaction body mautrix-python's
// appservice (heisenbridge 1.15.4's) parses: content nested 978 levels inside an event of a
// transaction is 982 levels (measured in heisenbridge's virtualenv); deeper, json.loads raises
// RecursionError and aiohttp answers 500.
const pythonDepthLimit = 982

// jsonDepth is the deepest nesting of arrays and objects in data.
func jsonDepth(data []byte) int {
	depth, deepest, inString, escaped := 0, 0, false, false
	for _, c := range data {
		switch {
		case escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		case inString:
		case c == '[' || c == '{':
			depth++
			deepest = max(deepest, depth)
		case c == ']' || c == '}':
			depth--
		}
	}
	return deepest
}

// pythonBridge answers transactions as mautrix-python 0.20.8 (heisenbridge 1.15.4) does: 500 for
// a body Python's json module cannot parse (nested too deep, or an integer over 4,300 digits), 200
// otherwise. It keeps the events of what it accepted, and counts what it refused.
type pythonBridge struct {
	mu       sync.Mutex
	accepted []map[string]any
	refused  int
}

func (b *pythonBridge) answer(w http.ResponseWriter, r *http.Request, body []byte) {
	if jsonDepth(body) > pythonDepthLimit || longestIntLiteral(body) > pythonIntDigits {
		b.mu.Lock()
		b.refused++
		b.mu.Unlock()
		answerJSON(http.StatusInternalServerError, `500: Internal Server Error`)(w, r, body)
		return
	}
	var txn bridgeTxn
	if json.Unmarshal(body, &txn) == nil {
		b.mu.Lock()
		b.accepted = append(b.accepted, txn.Events...)
		b.mu.Unlock()
	}
	answerJSON(http.StatusOK, `{}`)(w, r, body)
}

// types maps the event IDs the bridge accepted to their type.
func (b *pythonBridge) types() map[string]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]string{}
	for _, ev := range b.accepted {
		out[fmt.Sprint(ev["event_id"])] = fmt.Sprint(ev["type"])
	}
	return out
}

func inRoom(ev string, room id.RoomID) string {
	return strings.Replace(ev, "!r:localhost", string(room), 1)
}

// One room member's encrypted message with content nested deeper than a bridge can parse
// (mautrix-python fails past ~980 levels, with a 500) does not reach the bridge decrypted: it
// goes on as it arrived, encrypted, and nothing behind it waits.
func TestDeeplyNestedDecryptedContentGoesEncrypted(t *testing.T) {
	h := newHarness(t)
	bridge := &pythonBridge{}
	h.bridge.setAnswer(bridge.answer)
	roomX, roomY := id.RoomID("!x:localhost"), id.RoomID("!y:localhost")
	p := h.newReader(t)
	h.run(t)
	sender := newRemoteSender(t, roomX)
	sender.giveKey(t, p, roomX)
	nest := strings.Repeat("[", 1000) + `"x"` + strings.Repeat("]", 1000)
	deep := sender.eventWithPayload(t, "$poison", roomX, `{"type":"m.room.message","room_id":"`+string(roomX)+
		`","content":{"msgtype":"m.text","body":"boom","nest":`+nest+`}}`)
	shallow := sender.eventWithPayload(t, "$fine", roomX, `{"type":"m.room.message","room_id":"`+string(roomX)+
		`","content":{"msgtype":"m.text","body":"fine","nest":[[["x"]]]}}`)
	txn := `{"events":[` + readerJoins("$jx", roomX) + `,` +
		readerJoins("$jy", roomY) + `,` + deep + `,` + shallow + `,` +
		inRoom(messageEvent("$inY", "@alice:localhost", "room Y goes on"), roomY) + `]}`
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS, txn).status)
	require.EventuallyWithT(t, func(c *assert.CollectT) { require.Contains(c, bridge.types(), "$inY") }, 10*time.Second, 20*time.Millisecond,
		"the bridge never accepted the events behind the deep one")
	got := bridge.types()
	require.Equal(t, "m.room.encrypted", got["$poison"], "the deep event goes to the bridge as it arrived")
	require.Equal(t, "m.room.message", got["$fine"], "ordinary nesting is decrypted")
}

// metric reads a sample of heirloom's /metrics (name, with labels if any); it fails the test if
// there is none.
func (h *harness) metric(t *testing.T, sample string) float64 {
	t.Helper()
	resp := h.do(t, http.MethodGet, "/metrics", "", "")
	require.Equal(t, http.StatusOK, resp.status)
	for _, line := range strings.Split(string(resp.body), "\n") {
		if rest, ok := strings.CutPrefix(line, sample+" "); ok {
			var v float64
			_, err := fmt.Sscan(rest, &v)
			require.NoError(t, err)
			return v
		}
	}
	t.Fatalf("/metrics has no %s", sample)
	return 0
}

// deliveryStatus is the gateway part of GET /_heirloom/v1/status, as an operator reads it.
type deliveryStatus struct {
	OutboxEvents    int                `json:"outbox_events"`
	DeliveryFailing bool               `json:"delivery_failing"`
	LastError       string             `json:"last_error"`
	DeadLetters     []deadLetterStatus `json:"dead_letters"`
	DeadLetterCount int                `json:"dead_letter_count"`
	OutboxBytes     int64              `json:"outbox_bytes"`
	OutboxFull      bool               `json:"outbox_full"`
}

// deadLetterStatus is an event set aside, as GET /status lists it.
type deadLetterStatus struct {
	EventID   string `json:"event_id"`
	RoomID    string `json:"room_id"`
	Refusals  int    `json:"refusals"`
	LastError string `json:"last_error"`
}

// setAsideRefusals is how many times the bridge refuses an event alone before it is set aside.
const setAsideRefusals = 4

func gatewayStatus(t *testing.T, h *harness) deliveryStatus {
	t.Helper()
	return parseStatus(t, h.do(t, http.MethodGet, "/_heirloom/v1/status", "api-secret-0123456789abcdef", ""))
}

func parseStatus(t require.TestingT, resp response) deliveryStatus {
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
	var status struct {
		Gateway *deliveryStatus `json:"gateway"`
	}
	require.NoError(t, json.Unmarshal(resp.body, &status))
	require.NotNil(t, status.Gateway)
	return *status.Gateway
}

// refusingBridge answers 500 to every transaction that holds one of the event IDs in refuse (a
// bridge with a bug on those events), 200 to the others.
type refusingBridge struct {
	mu     sync.Mutex
	refuse map[string]bool
}

func (b *refusingBridge) answer(w http.ResponseWriter, r *http.Request, body []byte) {
	var txn bridgeTxn
	_ = json.Unmarshal(body, &txn)
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, ev := range txn.Events {
		if b.refuse[fmt.Sprint(ev["event_id"])] {
			answerJSON(http.StatusInternalServerError, `{"errcode":"M_UNKNOWN","error":"Internal appservice error"}`)(w, r, body)
			return
		}
	}
	answerJSON(http.StatusOK, `{}`)(w, r, body)
}

func (b *refusingBridge) fix() {
	b.mu.Lock()
	b.refuse = nil
	b.mu.Unlock()
}

// accepted lists the event IDs of the transactions the bridge acknowledged (answered 2xx), in order.
func accepted(t require.TestingT, p *peer, refused func(ids []string) bool) []string {
	var out []string
	for _, txn := range bridgeTxns(t, p) {
		var ids []string
		for _, e := range txn.Events {
			ids = append(ids, e["event_id"].(string))
		}
		if !refused(ids) {
			out = append(out, ids...)
		}
	}
	return out
}

// A bridge that refuses one event (a bug of its own on that event) gets the rest: the refused
// transaction is split, the event is retried alone a few times and then set aside, listed in GET
// /status with its event ID, and retried on an operator's call. Other rooms do not wait on it for
// more than a minute, its own room not for more than a few.
func TestBridgeRefusingOneEventSetsItAside(t *testing.T) {
	h := newHarness(t)
	clock := useFakeClock(h)
	bridge := &refusingBridge{refuse: map[string]bool{"$poison": true}}
	h.bridge.setAnswer(bridge.answer)
	h.run(t)
	roomX, roomY := id.RoomID("!x:localhost"), id.RoomID("!y:localhost")
	const alice = "@irc_alice:localhost"
	txn := `{"events":[` + inRoom(memberEvent("$jx", alice, alice, "join"), roomX) + `,` + inRoom(memberEvent("$jy", alice, alice, "join"), roomY) + `,` +
		inRoom(messageEvent("$x1", "@bob:localhost", "one"), roomX) + `,` + inRoom(messageEvent("$poison", "@bob:localhost", "poison"), roomX) + `,` +
		inRoom(messageEvent("$x2", "@bob:localhost", "after the poison"), roomX) + `,` +
		inRoom(messageEvent("$y1", "@bob:localhost", "room Y"), roomY) + `]}`
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS, txn).status)
	refused := func(ids []string) bool { return slices.Contains(ids, "$poison") }
	ok := func(ids ...string) func() bool {
		return func() bool {
			got := accepted(t, h.bridge, refused)
			for _, want := range ids {
				if !slices.Contains(got, want) {
					return false
				}
			}
			return true
		}
	}
	// Step the clock a second at a time: room Y is delivered within a minute of the first refusal.
	start := clock.Now()
	for !ok("$y1")() {
		require.Less(t, clock.Now().Sub(start), time.Minute, "room Y still waits on room X's refused event: accepted %v", accepted(t, h.bridge, refused))
		clock.Advance(time.Second)
		time.Sleep(50 * time.Millisecond)
	}
	require.NotContains(t, accepted(t, h.bridge, refused), "$x2", "room X keeps its order behind the refused event")
	for !ok("$x2")() {
		require.Less(t, clock.Now().Sub(start), 5*time.Minute, "room X still waits on its refused event: accepted %v", accepted(t, h.bridge, refused))
		clock.Advance(5 * time.Second)
		time.Sleep(50 * time.Millisecond)
	}
	got := accepted(t, h.bridge, refused)
	require.Equal(t, []string{"$jx", "$jy", "$x1", "$y1", "$x2"}, got)

	st := gatewayStatus(t, h)
	require.Len(t, st.DeadLetters, 1, "%+v", st)
	require.Equal(t, "$poison", st.DeadLetters[0].EventID)
	require.Equal(t, string(roomX), st.DeadLetters[0].RoomID)
	require.Contains(t, st.DeadLetters[0].LastError, "500")
	require.Contains(t, h.logs.String(), `"event_id":"$poison"`, "the log names the event set aside")
	require.Equal(t, 1.0, h.metric(t, "heirloom_gateway_dead_letters_total"))

	// The operator fixes the bridge and retries: the event is delivered, and the list is empty.
	bridge.fix()
	resp := h.do(t, http.MethodPost, "/_heirloom/v1/gateway/dead_letters/resend", "api-secret-0123456789abcdef", `{}`)
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.Contains(c, accepted(c, h.bridge, func([]string) bool { return false }), "$poison")
	}, 5*time.Second, 20*time.Millisecond)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		st := parseStatus(c, h.do(t, http.MethodGet, "/_heirloom/v1/status", "api-secret-0123456789abcdef", ""))
		require.Empty(c, st.DeadLetters)
	}, 5*time.Second, 20*time.Millisecond)
}

// A bridge that is down (connection refused, timeouts, 502/503/504) is not refusing an event: the
// oldest transaction is retried, in order, however long it takes, and nothing is set aside.
func TestBridgeDownLosesNothing(t *testing.T) {
	h := newHarness(t)
	clock := useFakeClock(h)
	var mu sync.Mutex
	down := true
	answers := []int{http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout}
	n := 0
	h.bridge.setAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			n++
			if n%4 == 0 {
				// A connection that dies without an answer.
				hj, _ := w.(http.Hijacker)
				conn, _, _ := hj.Hijack()
				_ = conn.Close()
				return
			}
			answerJSON(answers[n%len(answers)], `{"errcode":"M_UNKNOWN"}`)(w, r, body)
			return
		}
		answerJSON(http.StatusOK, `{}`)(w, r, body)
	})
	h.run(t)
	const alice = "@irc_alice:localhost"
	var want []string
	for i := range 3 {
		events := []string{}
		for j := range 3 {
			eventID := fmt.Sprintf("$m%d_%d", i, j)
			want = append(want, eventID)
			events = append(events, messageEvent(eventID, alice, "while the bridge is down"))
		}
		require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, fmt.Sprintf("/_matrix/app/v1/transactions/%d", i), heirloomHS,
			`{"events":[`+strings.Join(events, ",")+`]}`).status)
	}
	tries := func() int {
		mu.Lock()
		defer mu.Unlock()
		return n
	}
	// Hours of downtime, in steps of the clock: the bridge is tried again and again.
	deadline := time.Now().Add(20 * time.Second)
	for tries() < 12 {
		require.True(t, time.Now().Before(deadline), "the bridge is retried while it is down (%d tries)", tries())
		clock.Advance(10 * time.Minute)
		time.Sleep(50 * time.Millisecond)
	}
	st := gatewayStatus(t, h)
	require.Empty(t, st.DeadLetters, "a bridge that is down refuses no event")
	require.True(t, st.DeliveryFailing)
	require.Equal(t, len(want), st.OutboxEvents)

	mu.Lock()
	down = false
	mu.Unlock()
	h.do(t, http.MethodGet, "/_matrix/client/v3/account/whoami", bridgeAS, "") // the bridge is back
	clock.Advance(time.Second)                                                 // it is tried within a second of the clock
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.GreaterOrEqual(c, len(eventsOf(okTxns(c, h.bridge))), len(want))
	}, 10*time.Second, 20*time.Millisecond)
	require.Equal(t, want, eventsOf(okTxns(t, h.bridge)), "everything, in order, once")
}

// okTxns are the transactions the bridge acknowledged: each one's last delivery (a transaction is
// resent under its ID until acknowledged, with empty ones asking whether the bridge is up in
// between).
func okTxns(t require.TestingT, p *peer) []bridgeTxn {
	txns := bridgeTxns(t, p)
	last := map[string]int{}
	for i, txn := range txns {
		last[txn.ID] = i
	}
	var out []bridgeTxn
	for i, txn := range txns {
		if last[txn.ID] == i {
			out = append(out, txn)
		}
	}
	return out
}

// A bridge that refuses every transaction, an empty one included, is broken rather than refusing
// an event: nothing is set aside, and the oldest transaction waits, in order.
func TestBridgeRefusingEverythingSetsNothingAside(t *testing.T) {
	h := newHarness(t)
	clock := useFakeClock(h)
	h.bridge.setAnswer(answerJSON(http.StatusInternalServerError, `{"errcode":"M_UNKNOWN"}`))
	h.run(t)
	const alice = "@irc_alice:localhost"
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS,
		`{"events":[`+messageEvent("$a", alice, "a")+`,`+messageEvent("$b", alice, "b")+`]}`).status)
	deadline := time.Now().Add(20 * time.Second)
	for len(bridgeTxns(t, h.bridge)) < 12 {
		require.True(t, time.Now().Before(deadline), "the bridge is tried again and again")
		clock.Advance(30 * time.Second)
		time.Sleep(50 * time.Millisecond)
	}
	st := gatewayStatus(t, h)
	require.Empty(t, st.DeadLetters, "%+v", st)
	require.Equal(t, 2, st.OutboxEvents)
}
