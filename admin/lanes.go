package admin

import (
	"context"
	"sync"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"
)

// laneSize bounds the events of one sender waiting for the bot; more of that sender's are
// dropped (and logged), nobody else's.
const laneSize = 32

// lanes answers each sender's events in order, in a goroutine of the sender's own that lives
// while the sender has events to answer: an event that waits (an admin's command for its room
// key) holds up only the events of its sender after it, never another sender's. A sender has at
// most laneSize events waiting, counted from when HandleEvent takes them, so that no sender can
// fill the bot's queue.
type lanes struct {
	mu       sync.Mutex
	bySender map[id.UserID]*lane
	running  sync.WaitGroup
}

type lane struct {
	events chan queued
	// pending counts the sender's events taken and not yet answered or dropped: in the bot's
	// queue or in events.
	pending int
	// draining: a goroutine answers events.
	draining bool
}

// admit counts one more event of the sender, and reports whether it may wait for the bot.
func (l *lanes) admit(sender id.UserID) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	ln := l.laneLocked(sender)
	if ln.pending >= laneSize {
		return false
	}
	ln.pending++
	return true
}

// release forgets an admitted event that was dropped before it reached its lane.
func (l *lanes) release(sender id.UserID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.doneLocked(sender, l.laneLocked(sender), 1)
}

// add puts an admitted event in its sender's lane, starting the lane's goroutine if it has none.
// Each event is handled with a context that ends when ctx does, so that a wait for a room key
// ends at shutdown.
func (l *lanes) add(ctx context.Context, q queued, handle func(context.Context, queued)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	sender := q.evt.Sender
	ln := l.laneLocked(sender)
	select {
	case ln.events <- q:
	default: // cannot happen: pending bounds what a lane holds
		zerolog.Ctx(q.ctx).Warn().Msg("Too many of this sender's events wait for the bot: dropping the event")
		l.doneLocked(sender, ln, 1)
		return
	}
	if !ln.draining {
		ln.draining = true
		l.running.Add(1)
		go l.drain(ctx, sender, ln, handle)
	}
}

// drain answers the lane's events until none is left, or ctx ends.
func (l *lanes) drain(ctx context.Context, sender id.UserID, ln *lane, handle func(context.Context, queued)) {
	defer l.running.Done()
	for {
		l.mu.Lock()
		if ctx.Err() != nil && len(ln.events) > 0 {
			zerolog.Ctx(ctx).Warn().Stringer("sender", sender).Int("events", len(ln.events)).
				Msg("Shutting down with events for the bot unanswered")
			for len(ln.events) > 0 {
				<-ln.events
				l.doneLocked(sender, ln, 1)
			}
		}
		if len(ln.events) == 0 {
			ln.draining = false
			l.doneLocked(sender, ln, 0)
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()
		q := <-ln.events
		hctx, cancel := context.WithCancel(q.ctx)
		stop := context.AfterFunc(ctx, cancel)
		handle(hctx, q)
		stop()
		cancel()
		l.mu.Lock()
		l.doneLocked(sender, ln, 1)
		l.mu.Unlock()
	}
}

// laneLocked returns the sender's lane, creating it. Callers hold mu.
func (l *lanes) laneLocked(sender id.UserID) *lane {
	if l.bySender == nil {
		l.bySender = make(map[id.UserID]*lane)
	}
	ln, ok := l.bySender[sender]
	if !ok {
		ln = &lane{events: make(chan queued, laneSize)}
		l.bySender[sender] = ln
	}
	return ln
}

// doneLocked counts n of the lane's events as answered or dropped, and forgets the lane once it
// has nothing left. Callers hold mu.
func (l *lanes) doneLocked(sender id.UserID, ln *lane, n int) {
	ln.pending = max(0, ln.pending-n)
	if ln.pending == 0 && !ln.draining && l.bySender[sender] == ln {
		delete(l.bySender, sender)
	}
}

// wait returns once every lane's goroutine has ended.
func (l *lanes) wait() {
	l.running.Wait()
}
