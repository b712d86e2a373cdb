package gateway

import (
	"context"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

// The hold-back rule: which of the stored events go to the bridge next. Events go in the order
// the homeserver delivered them, and a room's events never overtake one another; but one room
// never holds back another. An event holds back its own room while it waits for its key (until
// gateway.decrypt_wait is over), and while it waits to be tried again after the bridge refused it
// alone (refusalBackoff); behind such an event, its room's events wait, however many, and other
// rooms' go on. An event the bridge refused in a transaction goes alone from then on, and so do
// the events of a room that had an event set aside within the hour (refusal.go): one the bridge
// refuses or hangs on then costs the other rooms one short attempt. Events that go alone take
// turns with the others: after a transaction of an event alone, the next takes the other rooms'
// events first, and an event alone goes then only if no other may. A room whose events go alone,
// flooded with them, so holds the other rooms back by one transaction at a time, not one per event.

const (
	// maxTxnEvents is how many events one transaction to the bridge carries at most (the
	// homeserver sends at most 100 room events per transaction; bridges are used to that).
	maxTxnEvents = 100
	// maxTxnBytes caps a transaction's events, beyond its first: mautrix-python (heisenbridge)
	// refuses a request body over 1 MiB (aiohttp's client_max_size), 413.
	maxTxnBytes = 512 << 10
	// headsPage is how many stored events the composer reads at a time.
	headsPage = 2000
)

// picker chooses the events of the next transaction from the outbox's events, offered in order.
type picker struct {
	now  int64
	held map[id.RoomID]bool
	// alone are the rooms whose events go alone.
	alone map[id.RoomID]bool
	// othersFirst is set after a transaction of an event alone: the events that go alone give way
	// to the others this time; deferred is the first of them, which goes if no other event does.
	othersFirst bool
	deferred    *database.GatewayEvent
	seqs        []int64
	bytes       int64
	// wake is when the earliest event held back may go (unix ms; 0: none is held).
	wake int64
	full bool
	// lone is set when the transaction is an event alone.
	lone bool
}

func newPicker(now time.Time, alone map[id.RoomID]bool) *picker {
	return &picker{now: now.UnixMilli(), held: map[id.RoomID]bool{}, alone: alone}
}

// heldUntil returns when an event that holds back its room may go (unix ms), or 0.
func heldUntil(e *database.GatewayEvent) int64 {
	switch {
	case e.Waiting:
		return e.WaitUntil
	case e.Refusals > 0:
		return e.RetryAt
	}
	return 0
}

// offer considers the next event; it reports false once the transaction is complete.
func (p *picker) offer(e *database.GatewayEvent) bool {
	if e.RoomID != "" && p.held[e.RoomID] {
		return true // behind an event of its room that may not go yet
	}
	if until := heldUntil(e); until > p.now {
		p.hold(e.RoomID)
		if p.wake == 0 || until < p.wake {
			p.wake = until
		}
		return true
	}
	solo := e.Solo || p.alone[e.RoomID]
	switch {
	case solo && (len(p.seqs) > 0 || p.othersFirst):
		// It goes alone, later: its room waits for it, others may join this transaction.
		if p.deferred == nil && len(p.seqs) == 0 {
			p.deferred = e
		}
		p.hold(e.RoomID)
		return true
	case len(p.seqs) > 0 && p.bytes+e.Size > maxTxnBytes:
		p.full = true
		return false
	}
	p.take(e)
	p.lone = solo
	p.full = solo || len(p.seqs) == maxTxnEvents
	return !p.full
}

func (p *picker) take(e *database.GatewayEvent) {
	p.seqs = append(p.seqs, e.Seq)
	p.bytes += e.Size
}

// finish completes the transaction once every event was offered: with the event alone that gave
// way, if no other event may go.
func (p *picker) finish() {
	if len(p.seqs) == 0 && p.deferred != nil {
		p.take(p.deferred)
		p.lone = true
	}
}

func (p *picker) hold(roomID id.RoomID) {
	if roomID != "" {
		p.held[roomID] = true
	}
}

// compose puts the events that may go now into a new transaction, and returns it; or nil, and
// when an event held back may go (zero if none is).
func (g *Gateway) compose(ctx context.Context, now time.Time) (*database.GatewayTxn, time.Time, error) {
	alone, err := g.db.GatewayRoomsSetAside(ctx, now.Add(-roomStrikeMemory).UnixMilli())
	if err != nil {
		return nil, time.Time{}, err
	}
	pick := newPicker(now, alone)
	pick.othersFirst = g.loneLast
	var after int64
	for !pick.full {
		heads, err := g.db.GatewayOutboxHeads(ctx, after, headsPage)
		if err != nil {
			return nil, time.Time{}, err
		}
		for _, e := range heads {
			if !pick.offer(e) {
				break
			}
		}
		if len(heads) < headsPage {
			break
		}
		after = heads[len(heads)-1].Seq
	}
	pick.finish()
	var wake time.Time
	if pick.wake != 0 {
		wake = time.UnixMilli(pick.wake)
	}
	if len(pick.seqs) == 0 {
		return nil, wake, nil
	}
	txn, err := g.db.CreateGatewayTxn(ctx, pick.seqs, now.UnixMilli(), g.recordLate)
	if err != nil || len(txn.Events) == 0 {
		return nil, wake, err
	}
	g.loneLast = pick.lone
	return txn, wake, nil
}
