package gateway

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	hdb "github.com/heirloom-matrix/heirloom/database"
	"maunium.net/go/mautrix/id"
)

// transactionsUntil composes transactions from the outbox as the delivery loop does (each after
// the last was delivered), and returns how many it took until one carries seq.
func transactionsUntil(t *testing.T, outbox []*hdb.GatewayEvent, alone map[id.RoomID]bool, seq int64) int {
	loneLast := false
	for n := 1; len(outbox) > 0; n++ {
		p := newPicker(time.UnixMilli(10_000), alone)
		p.othersFirst = loneLast
		for _, e := range outbox {
			if !p.offer(e) {
				break
			}
		}
		p.finish()
		require.NotEmpty(t, p.seqs)
		if slices.Contains(p.seqs, seq) {
			return n
		}
		loneLast = p.lone
		outbox = slices.DeleteFunc(outbox, func(e *hdb.GatewayEvent) bool { return slices.Contains(p.seqs, e.Seq) })
	}
	t.Fatalf("no transaction carried %d", seq)
	return 0
}

// A room that had an event set aside within the hour has its events go alone, one transaction
// each. Its members (a remote server's users are not rate limited by the bridge's homeserver) can
// then queue a flood of small events there, one poison event first. Events alone take turns with
// the others: another room's event waits behind one transaction alone at most, not one per
// flooded event (here 300).
func TestRoomGoingAloneHoldsOtherRoomsBackOneTransactionAtATime(t *testing.T) {
	a, b := id.RoomID("!flooded:evil.example"), id.RoomID("!other:hs")
	var outbox []*hdb.GatewayEvent
	for n := int64(1); n <= 300; n++ {
		outbox = append(outbox, ev(n, a))
	}
	outbox = append(outbox, ev(301, b))
	require.LessOrEqual(t, transactionsUntil(t, outbox, map[id.RoomID]bool{a: true}, 301), 2,
		"room b's event must not wait for one transaction per event of a room whose events go alone")

	// Every other transaction, at most, is an event alone; each of the others carries room b's events.
	outbox = nil
	for n := int64(1); n <= 300; n += 2 {
		outbox = append(outbox, ev(n, a), ev(n+1, b))
	}
	require.LessOrEqual(t, transactionsUntil(t, outbox, map[id.RoomID]bool{a: true}, 300), 2*150/maxTxnEvents+2)
}

// Taking turns starves no room that goes alone: however many events the other rooms queue, its
// event goes within two transactions.
func TestRoomGoingAloneIsNotStarvedByOtherRooms(t *testing.T) {
	a, b := id.RoomID("!alone:hs"), id.RoomID("!busy:hs")
	outbox := []*hdb.GatewayEvent{ev(1, a)}
	for n := int64(2); n <= 1000; n++ {
		outbox = append(outbox, ev(n, b))
	}
	require.Equal(t, 1, transactionsUntil(t, outbox, map[id.RoomID]bool{a: true}, 1), "first in the outbox, it goes first")
	outbox = append([]*hdb.GatewayEvent{ev(0, a)}, outbox...)
	require.LessOrEqual(t, transactionsUntil(t, outbox, map[id.RoomID]bool{a: true}, 1), 3,
		"after its room's transaction alone, it goes once the others had one")
	require.Equal(t, 3, transactionsUntil(t, []*hdb.GatewayEvent{ev(1, a), ev(2, a), ev(3, a)}, map[id.RoomID]bool{a: true}, 3),
		"with no other room's event to go first, each goes in turn")
}
