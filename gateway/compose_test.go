package gateway

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

// ev is an outbox event for the picker: seq n in room, of size bytes.
func ev(n int64, room id.RoomID, mutate ...func(*database.GatewayEvent)) *database.GatewayEvent {
	e := &database.GatewayEvent{Seq: n, RoomID: room, EventID: id.EventID(fmt.Sprintf("$%d", n)), Size: 100}
	for _, m := range mutate {
		m(e)
	}
	return e
}

func waiting(until int64) func(*database.GatewayEvent) {
	return func(e *database.GatewayEvent) { e.Waiting, e.WaitUntil = true, until }
}

func refused(times int, retryAt int64) func(*database.GatewayEvent) {
	return func(e *database.GatewayEvent) { e.Solo, e.Refusals, e.RetryAt = true, times, retryAt }
}

func solo(e *database.GatewayEvent) { e.Solo = true }

func sized(n int64) func(*database.GatewayEvent) {
	return func(e *database.GatewayEvent) { e.Size = n }
}

// The hold-back rule, event by event: what goes in the next transaction, and when something held
// back may go.
func TestHoldBackRule(t *testing.T) {
	const now = 10_000
	a, b, c := id.RoomID("!a:hs"), id.RoomID("!b:hs"), id.RoomID("!c:hs")
	for _, tc := range []struct {
		name   string
		events []*database.GatewayEvent
		want   []int64
		wake   int64
	}{
		{"in order, all rooms", []*database.GatewayEvent{ev(1, a), ev(2, b), ev(3, a)}, []int64{1, 2, 3}, 0},
		{"a waiting event holds back its room only", []*database.GatewayEvent{ev(1, a, waiting(now+5)), ev(2, a), ev(3, b), ev(4, a)},
			[]int64{3}, now + 5},
		{"a wait that is over goes, as it is", []*database.GatewayEvent{ev(1, a, waiting(now)), ev(2, a)}, []int64{1, 2}, 0},
		{"the earliest wake", []*database.GatewayEvent{ev(1, a, waiting(now+9)), ev(2, b, refused(1, now+3)), ev(3, c)},
			[]int64{3}, now + 3},
		{"an event refused alone holds back its room until its retry", []*database.GatewayEvent{ev(1, a, refused(2, now+1)), ev(2, a), ev(3, b)},
			[]int64{3}, now + 1},
		{"a refused event whose retry is due goes alone", []*database.GatewayEvent{ev(1, a, refused(2, now)), ev(2, b)}, []int64{1}, 0},
		{"a solo event waits for the next transaction, its room behind it", []*database.GatewayEvent{ev(1, b), ev(2, a, solo), ev(3, a), ev(4, c)},
			[]int64{1, 4}, 0},
		{"events of no room are never held", []*database.GatewayEvent{ev(1, "", waiting(now+5)), ev(2, "")}, []int64{2}, now + 5},
		{"a transaction stops at its size", []*database.GatewayEvent{ev(1, a, sized(maxTxnBytes-50)), ev(2, b), ev(3, c, sized(10))},
			[]int64{1}, 0},
		{"a first event goes whatever its size", []*database.GatewayEvent{ev(1, a, sized(maxTxnBytes*2)), ev(2, b)}, []int64{1}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPicker(time.UnixMilli(now), nil)
			for _, e := range tc.events {
				if !p.offer(e) {
					break
				}
			}
			require.Equal(t, tc.want, p.seqs)
			require.Equal(t, tc.wake, p.wake)
		})
	}
}

// However many events one room holds back, another room's first event is offered and taken: the
// picker reads the whole outbox, not a window of it.
func TestHoldBackRuleHasNoWindow(t *testing.T) {
	p := newPicker(time.UnixMilli(10_000), nil)
	require.True(t, p.offer(ev(1, "!a:hs", waiting(20_000))))
	for n := int64(2); n < 100_000; n++ {
		require.True(t, p.offer(ev(n, "!a:hs")))
	}
	p.offer(ev(100_000, "!b:hs"))
	require.Equal(t, []int64{100_000}, p.seqs)
}

// The events of a room that had an event set aside within the hour go alone: one the bridge
// refuses or hangs on is not in a transaction with other rooms' events.
func TestHoldBackRuleRoomsSetAsideGoAlone(t *testing.T) {
	a, b := id.RoomID("!a:hs"), id.RoomID("!b:hs")
	p := newPicker(time.UnixMilli(10_000), map[id.RoomID]bool{a: true})
	for _, e := range []*database.GatewayEvent{ev(1, b), ev(2, a), ev(3, b), ev(4, a)} {
		if !p.offer(e) {
			break
		}
	}
	require.Equal(t, []int64{1, 3}, p.seqs, "room a's events wait for transactions of their own")
	p = newPicker(time.UnixMilli(10_000), map[id.RoomID]bool{a: true})
	for _, e := range []*database.GatewayEvent{ev(2, a), ev(3, b), ev(4, a)} {
		if !p.offer(e) {
			break
		}
	}
	require.Equal(t, []int64{2}, p.seqs, "the first of room a's events goes alone")
}

// A transaction carries at most maxTxnEvents events.
func TestHoldBackRuleFillsATransaction(t *testing.T) {
	p := newPicker(time.UnixMilli(10_000), nil)
	n := int64(0)
	for p.offer(ev(n, "!a:hs", sized(1))) {
		n++
	}
	require.Len(t, p.seqs, maxTxnEvents)
}

// What the bridge refuses and what it is merely too busy, misconfigured or down to take.
func TestRefusalOrOutage(t *testing.T) {
	for status, refusal := range map[int]bool{400: true, 413: true, 422: true, 500: true,
		401: false, 403: false, 404: false, 405: false, 408: false, 429: false, 501: false, 502: false, 503: false, 504: false} {
		require.Equal(t, refusal, isRefusal(status), "%d", status)
	}
}

// A decrypted payload reaches the bridge only within bounds a bridge's JSON parser handles.
func TestJSONDepth(t *testing.T) {
	for doc, want := range map[string]int{`1`: 0, `{}`: 1, `{"a":[{"b":"]]]]"}]}`: 3, `["\"[[[", [[]]]`: 3, `{"a":"\\"}`: 1} {
		require.Equal(t, want, jsonDepth([]byte(doc)), doc)
	}
}
