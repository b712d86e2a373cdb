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

	"github.com/heirloom-matrix/heirloom/config"
)

// buggyBridge refuses (500) every transaction holding an event whose content has the marker: a
// bug of the bridge on one kind of event, which any room member can trigger by sending one.
type buggyBridge struct {
	mu       sync.Mutex
	marker   string
	accepted []string
	refused  int
}

func (b *buggyBridge) answer(w http.ResponseWriter, r *http.Request, body []byte) {
	var txn bridgeTxn
	_ = json.Unmarshal(body, &txn)
	for _, ev := range txn.Events {
		if c, ok := ev["content"].(map[string]any); ok && strings.Contains(fmt.Sprint(c["body"]), b.marker) {
			b.mu.Lock()
			b.refused++
			b.mu.Unlock()
			answerJSON(http.StatusInternalServerError, `{"errcode":"M_UNKNOWN","error":"Internal appservice error"}`)(w, r, body)
			return
		}
	}
	b.mu.Lock()
	for _, ev := range txn.Events {
		b.accepted = append(b.accepted, fmt.Sprint(ev["event_id"]))
	}
	b.mu.Unlock()
	answerJSON(http.StatusOK, `{}`)(w, r, body)
}

func (b *buggyBridge) got(eventID string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Contains(b.accepted, eventID)
}

// The dead-letter rule bounds a sequence of refused events, not only one: a room member who can
// make the bridge refuse an event (any bridge bug he can trigger, which is what the rule is for)
// sends many, eight a transaction. His room is held about a minute for the first only (his room's
// further refused events are set aside at their first refusal alone), so the other members'
// messages in that room wait a minute or two, not a minute per refused event; and the room's events
// held there never fill gateway.max_outbox_size for every room: another room's message goes on
// within seconds, and no homeserver transaction is refused.
func TestRefusedEventsHoldTheirRoomMinutesInTotalAndNoOtherRoom(t *testing.T) {
	h := newHarness(t, func(c *config.Config) { c.Gateway.MaxOutboxSize = config.MinMaxOutboxSize })
	clock := useFakeClock(h)
	bridge := &buggyBridge{marker: "BOOM"}
	h.bridge.setAnswer(bridge.answer)
	roomX, roomY := id.RoomID("!x:localhost"), id.RoomID("!y:localhost")
	const alice = "@irc_alice:localhost"
	h.run(t)
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/0", heirloomHS, `{"events":[`+
		inRoom(memberEvent("$jx", alice, alice, "join"), roomX)+`,`+inRoom(memberEvent("$jy", alice, alice, "join"), roomY)+`]}`).status)

	// Mallory's messages, each under the homeserver's 64 KiB event limit, eight a transaction (at
	// Synapse's default rc_message, 0.2/s with a burst of 10, under a minute's worth for one
	// account); Bob's ordinary message in the same room after the first sixteen.
	pad := strings.Repeat("a", 45_000)
	n := 0
	boom := func(txnID string) response {
		var events []string
		for range 8 {
			n++
			events = append(events, inRoom(messageEvent(fmt.Sprintf("$boom%d", n), "@mallory:localhost", "BOOM "+pad), roomX))
		}
		return h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/"+txnID, heirloomHS, `{"events":[`+strings.Join(events, ",")+`]}`)
	}
	require.Equal(t, http.StatusOK, boom("1").status)
	require.Equal(t, http.StatusOK, boom("2").status)
	resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/3", heirloomHS, `{"events":[`+
		inRoom(messageEvent("$bob", "@bob:localhost", "an ordinary message"), roomX)+`]}`)
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)

	// Time passes, in steps of the database's clock.
	step := func(d time.Duration) {
		for range int(d / (5 * time.Second)) {
			clock.Advance(5 * time.Second)
			time.Sleep(50 * time.Millisecond)
		}
	}
	start := clock.Now()
	for !bridge.got("$bob") && clock.Now().Sub(start) < 5*time.Minute {
		step(5 * time.Second)
	}
	st := gatewayStatus(t, h)
	t.Logf("Bob's message reached the bridge after %v: %d events set aside, %d waiting (%d bytes)", clock.Now().Sub(start),
		len(st.DeadLetters), st.OutboxEvents, st.OutboxBytes)
	require.True(t, bridge.got("$bob"), "Bob's message in room X still waits behind Mallory's refused events after 5 minutes")
	require.Less(t, clock.Now().Sub(start), 2*time.Minute, "Bob's message waited more than two minutes behind Mallory's refused events")

	// Mallory goes on (three more messages a minute, under Synapse's default rate limit), then
	// Carol speaks in room Y. The homeserver queues what heirloom refuses and sends it again, in
	// order (modelled here: the head of the queue is retried every 5 s; Synapse backs off longer).
	var queue []string
	for range 3 {
		var events []string
		for range 8 {
			n++
			events = append(events, inRoom(messageEvent(fmt.Sprintf("$boom%d", n), "@mallory:localhost", "BOOM "+pad), roomX))
		}
		queue = append(queue, `{"events":[`+strings.Join(events, ",")+`]}`)
	}
	queue = append(queue, `{"events":[`+inRoom(messageEvent("$carol", "@carol:localhost", "room Y"), roomY)+`]}`)
	refusedTxns := 0
	spoke := clock.Now()
	for !bridge.got("$carol") && clock.Now().Sub(spoke) < 30*time.Minute {
		if len(queue) > 0 {
			resp := h.do(t, http.MethodPut, fmt.Sprintf("/_matrix/app/v1/transactions/q%d", len(queue)), heirloomHS, queue[0])
			if resp.status == http.StatusOK {
				queue = queue[1:]
			} else {
				refusedTxns++
			}
		}
		step(5 * time.Second)
	}
	waited := clock.Now().Sub(spoke)
	t.Logf("room Y's message reached the bridge %v after it was sent; heirloom refused the homeserver's transactions %d times", waited, refusedTxns)
	assert.Less(t, waited, 2*time.Minute, "room Y waited %v on room X's refused events (gateway.max_outbox_size is one cap for every room)", waited)
	assert.Zero(t, refusedTxns, "the homeserver's transactions were refused for every room")
	require.Equal(t, fmt.Sprintf("$boom%d", n), gatewayStatus(t, h).DeadLetters[0].EventID, "the refused events are set aside")
}

func (b *buggyBridge) refusals() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.refused
}

// stepUntil moves the database's clock by step until the bridge got the event, and returns how
// long that took; the test fails if it takes more than limit.
func stepUntil(t *testing.T, clock *fakeClock, bridge *buggyBridge, eventID string, step, limit time.Duration) time.Duration {
	t.Helper()
	start := clock.Now()
	for !bridge.got(eventID) {
		require.Less(t, clock.Now().Sub(start), limit, "%s never reached the bridge", eventID)
		clock.Advance(step)
		time.Sleep(50 * time.Millisecond)
	}
	return clock.Now().Sub(start)
}

// deadLetter returns the event set aside with the ID, as GET /status lists it.
func deadLetter(t *testing.T, h *harness, eventID string) deadLetterStatus {
	t.Helper()
	for _, d := range gatewayStatus(t, h).DeadLetters {
		if d.EventID == eventID {
			return d
		}
	}
	t.Fatalf("%s is not set aside", eventID)
	return deadLetterStatus{}
}

// A room whose event was set aside has a spent budget for an hour: the bridge's next refusal of
// one of its events, alone, sets it aside at once, and its events go alone (one the bridge refuses
// costs the other rooms nothing). An hour later the room holds a refused event about a minute
// again.
func TestRoomWithAnEventSetAsideHoldsForTheNextOnlyOnce(t *testing.T) {
	h := newHarness(t)
	clock := useFakeClock(h)
	bridge := &buggyBridge{marker: "BOOM"}
	h.bridge.setAnswer(bridge.answer)
	roomX, roomY := id.RoomID("!x:localhost"), id.RoomID("!y:localhost")
	const alice = "@irc_alice:localhost"
	h.run(t)
	push := func(txnID string, events ...string) {
		require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/"+txnID, heirloomHS,
			`{"events":[`+strings.Join(events, ",")+`]}`).status)
	}
	push("0", inRoom(memberEvent("$jx", alice, alice, "join"), roomX), inRoom(memberEvent("$jy", alice, alice, "join"), roomY))
	push("1", inRoom(messageEvent("$p1", "@mallory:localhost", "BOOM"), roomX), inRoom(messageEvent("$x1", "@bob:localhost", "one"), roomX))
	took := stepUntil(t, clock, bridge, "$x1", 5*time.Second, 3*time.Minute)
	require.Greater(t, took, 45*time.Second, "the room's first refused event is tried for about a minute")
	require.Equal(t, setAsideRefusals, deadLetter(t, h, "$p1").Refusals)

	refusedBefore := bridge.refusals() // before the push: the delivery loop may try $p2 at once
	push("2", inRoom(messageEvent("$p2", "@mallory:localhost", "BOOM again"), roomX), inRoom(messageEvent("$x2", "@bob:localhost", "two"), roomX),
		inRoom(messageEvent("$y2", "@bob:localhost", "room Y"), roomY))
	took = stepUntil(t, clock, bridge, "$x2", time.Second, time.Minute)
	require.Less(t, took, 30*time.Second, "the room's next refused event is set aside at once")
	require.Equal(t, 1, deadLetter(t, h, "$p2").Refusals, "set aside at its first refusal")
	require.Equal(t, 1, bridge.refusals()-refusedBefore, "it went alone: the bridge refused one transaction, not the others' events with it")
	for _, txn := range bridgeTxns(t, h.bridge) {
		if slices.Contains(eventsOf([]bridgeTxn{txn}), "$x2") {
			require.Len(t, txn.Events, 1, "the room's events go alone")
		}
	}

	clock.Advance(61 * time.Minute)
	push("3", inRoom(messageEvent("$p3", "@mallory:localhost", "BOOM an hour later"), roomX), inRoom(messageEvent("$x3", "@bob:localhost", "three"), roomX))
	took = stepUntil(t, clock, bridge, "$x3", 5*time.Second, 3*time.Minute)
	require.Greater(t, took, 45*time.Second, "an hour later, the room's budget is back")
}

// A refused event of a room that holds more than its share of gateway.max_outbox_size (a quarter)
// is set aside at its first refusal alone: the events piled up behind it go on at once.
func TestRefusedEventOfARoomOverItsShareIsSetAsideAtOnce(t *testing.T) {
	h := newHarness(t, func(c *config.Config) { c.Gateway.MaxOutboxSize = config.MinMaxOutboxSize })
	clock := useFakeClock(h)
	bridge := &buggyBridge{marker: "BOOM"}
	h.bridge.setAnswer(bridge.answer)
	roomX := id.RoomID("!x:localhost")
	const alice = "@irc_alice:localhost"
	h.run(t)
	events := []string{inRoom(memberEvent("$jx", alice, alice, "join"), roomX), inRoom(messageEvent("$p1", "@mallory:localhost", "BOOM"), roomX)}
	big := strings.Repeat("x", 50_000)
	for i := range 6 { // 300 KB behind the refused event: over a quarter of 1 MiB
		events = append(events, inRoom(messageEvent(fmt.Sprintf("$big%d", i), "@bob:localhost", big), roomX))
	}
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS,
		`{"events":[`+strings.Join(events, ",")+`]}`).status)
	took := stepUntil(t, clock, bridge, "$big5", time.Second, 2*time.Minute)
	require.Less(t, took, 30*time.Second, "the room over its share waited on its refused event")
	d := deadLetter(t, h, "$p1")
	require.Equal(t, 1, d.Refusals, "set aside at its first refusal alone")
}

// One room must not stop the others by filling the outbox: while the bridge is up and a room is
// held back by an event the bridge refuses, that room's events pile up over gateway.max_outbox_size;
// then its new events are set aside as they arrive (listed, resendable) and the homeserver's
// transactions are still taken, so another room's messages go on. Events set aside hold at most
// gateway.max_outbox_size: beyond it the oldest are forgotten, and the log says which.
func TestFullOutboxSetsAsideOnlyTheRoomOverItsShare(t *testing.T) {
	h := newHarness(t, func(c *config.Config) { c.Gateway.MaxOutboxSize = config.MinMaxOutboxSize })
	clock := useFakeClock(h)
	bridge := &buggyBridge{marker: "BOOM"}
	h.bridge.setAnswer(bridge.answer)
	roomX, roomY := id.RoomID("!x:localhost"), id.RoomID("!y:localhost")
	const alice = "@irc_alice:localhost"
	h.run(t)
	push := func(txnID string, events ...string) response {
		return h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/"+txnID, heirloomHS, `{"events":[`+strings.Join(events, ",")+`]}`)
	}
	require.Equal(t, http.StatusOK, push("0", inRoom(memberEvent("$jx", alice, alice, "join"), roomX), inRoom(memberEvent("$jy", alice, alice, "join"), roomY)).status)
	require.Eventually(t, func() bool { return bridge.got("$jy") }, 10*time.Second, 20*time.Millisecond)
	// $p1 goes alone and is refused; the clock stands still: room X is held behind it until its
	// retry.
	require.Equal(t, http.StatusOK, push("1", inRoom(messageEvent("$p1", "@mallory:localhost", "BOOM"), roomX)).status)
	require.Eventually(t, func() bool { return bridge.refusals() == 1 }, 10*time.Second, 20*time.Millisecond)

	big := strings.Repeat("x", 60_000)
	n := 0
	for !gatewayStatus(t, h).OutboxFull {
		require.Less(t, n, 30, "the outbox never filled")
		n++
		require.Equal(t, http.StatusOK, push(fmt.Sprintf("x%d", n), inRoom(messageEvent(fmt.Sprintf("$x%d", n), "@mallory:localhost", big), roomX)).status)
	}
	held := n
	for range 3 {
		n++
		resp := push(fmt.Sprintf("x%d", n), inRoom(messageEvent(fmt.Sprintf("$x%d", n), "@mallory:localhost", big), roomX))
		require.Equal(t, http.StatusOK, resp.status, "a transaction of the room over its share is taken: %s", resp.body)
	}
	st := gatewayStatus(t, h)
	require.Len(t, st.DeadLetters, 3, "the room's new events are set aside as they arrive: %+v", st)
	require.Contains(t, st.DeadLetters[0].LastError, "share")
	resp := push("y1", inRoom(messageEvent("$y1", "@carol:localhost", "room Y goes on"), roomY))
	require.Equal(t, http.StatusOK, resp.status, "another room's transaction is taken while one room fills the outbox: %s", resp.body)
	require.Eventually(t, func() bool { return bridge.got("$y1") }, 10*time.Second, 20*time.Millisecond, "room Y waited on room X")
	require.False(t, bridge.got("$x1"), "room X is still held")

	// Room X's events keep coming: those set aside hold at most the cap, the oldest forgotten.
	for range 20 {
		n++
		require.Equal(t, http.StatusOK, push(fmt.Sprintf("x%d", n), inRoom(messageEvent(fmt.Sprintf("$x%d", n), "@mallory:localhost", big), roomX)).status)
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		st := parseStatus(c, h.do(t, http.MethodGet, "/_heirloom/v1/status", "api-secret-0123456789abcdef", ""))
		require.LessOrEqual(c, st.DeadLetterCount*60_000, config.MinMaxOutboxSize, "events set aside: %d", st.DeadLetterCount)
	}, 10*time.Second, 50*time.Millisecond)
	// The log line follows the trim in the database.
	require.Eventually(t, func() bool { return strings.Contains(h.logs.String(), "Forgot an event set aside") }, 5*time.Second, 20*time.Millisecond)

	// Room X's refused event is tried again: the room is over its share, so it is set aside at
	// once, and the events held behind it go on; those set aside go when an operator resends them.
	clock.Advance(5 * time.Second)
	require.Eventually(t, func() bool { return bridge.got(fmt.Sprintf("$x%d", held)) }, 10*time.Second, 20*time.Millisecond,
		"room X never went on")
	require.Equal(t, 2, deadLetter(t, h, "$p1").Refusals, "set aside at its first retry")
	resp = h.do(t, http.MethodPost, "/_heirloom/v1/gateway/dead_letters/resend", "api-secret-0123456789abcdef", `{"event_id":"$x`+fmt.Sprint(n)+`"}`)
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
	stepUntil(t, clock, bridge, fmt.Sprintf("$x%d", n), time.Second, time.Minute)
}
