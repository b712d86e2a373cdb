package e2ee

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"
)

// A room key whose sender's (or the puppet's own) membership the homeserver did not answer for (a
// 5xx, a timeout, a worker restarting) is held like a key that came while the puppet was invited,
// and the question is asked again later: an error is no answer, and a key dropped over one is lost
// for good (nobody sends it again). The retries of a puppet's room back off from heldRetryFirst,
// doubling up to heldRetryMax, for as long as a key stays held (heldKeyMaxAge at most); only a
// definite answer stores or drops a key.
const (
	heldRetryFirst = 5 * time.Second
	heldRetryMax   = 10 * time.Minute
)

// heldRetries schedules the retries: one waiting per puppet's room at a time.
type heldRetries struct {
	mu       sync.Mutex
	attempts map[puppetRoom]int
	waiting  map[puppetRoom]bool
	stopped  chan struct{}
	initOnce sync.Once
	stopOnce sync.Once
	// first is heldRetryFirst (tests shorten it).
	first time.Duration
}

// next returns how long to wait before asking again for the room, and false if a retry already
// waits.
func (r *heldRetries) next(key puppetRoom) (time.Duration, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.waiting[key] {
		return 0, false
	}
	if r.waiting == nil {
		r.waiting, r.attempts = map[puppetRoom]bool{}, map[puppetRoom]int{}
	}
	r.waiting[key] = true
	first := r.first
	if first == 0 {
		first = heldRetryFirst
	}
	delay := first << min(r.attempts[key], 16)
	r.attempts[key]++
	return min(delay, heldRetryMax), true
}

// fired marks the room's retry as no longer waiting.
func (r *heldRetries) fired(key puppetRoom) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.waiting, key)
}

// done forgets the room's backoff: nothing is held for it any more.
func (r *heldRetries) done(key puppetRoom) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.waiting[key] {
		delete(r.attempts, key)
	}
}

// stopping is closed once the manager shuts down: a waiting retry gives up.
func (r *heldRetries) stopping() <-chan struct{} {
	r.initOnce.Do(func() { r.stopped = make(chan struct{}) })
	return r.stopped
}

func (r *heldRetries) stop() {
	r.stopping()
	r.stopOnce.Do(func() { close(r.stopped) })
}

// retryHeldKeys asks again, after the room's backoff, about the keys held for the puppet's room
// (ReleaseHeldKeys), unless a retry already waits.
func (p *Puppet) retryHeldKeys(ctx context.Context, roomID id.RoomID) {
	key := puppetRoom{p.UserID, roomID}
	delay, ok := p.mgr.heldRetries.next(key)
	if !ok {
		return
	}
	zerolog.Ctx(ctx).Info().Stringer("room_id", roomID).Dur("retry_in", delay).
		Msg("Asking the homeserver again later about the room keys held for the room")
	p.mgr.tasks.Run(ctx, "retry_held_keys", func(ctx context.Context) {
		timer := time.NewTimer(delay)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-p.mgr.heldRetries.stopping():
			p.mgr.heldRetries.fired(key)
			return
		}
		p.mgr.heldRetries.fired(key)
		p.ReleaseHeldKeys(ctx, roomID)
	})
}
