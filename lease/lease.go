// Package lease provides heirloom's one-writer rule: a lease on the database that one process at a
// time holds, the fence that stops a process acting once it may have lost the lease, and a
// standby's wait for it.
//
// Every puppet's Olm account must have exactly one writer: two processes on one database would
// overwrite each other's pickles and lose the private halves of uploaded one-time keys. Only the
// holder of the lease acts (touches a key, sends to the homeserver, delivers to the bridge, takes a
// transaction). The holder renews the lease every Timing.Renew; a renewal holds it for Timing.TTL
// by the store's clock. The holder stops acting Timing.TTL - Timing.Margin after the last renewal
// that succeeded began, by its own monotonic clock, so it has stopped before the lease expires in
// the store and another process can take it. The stores add fencing of their own (a PostgreSQL
// takeover ends every connection of the previous holder), for a process paused past its deadline.
package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Role is what a process is to the lease.
type Role int32

const (
	// Standby waits for the lease and does not act.
	Standby Role = iota
	// Active holds the lease: the one process that acts.
	Active
	// Lost held the lease and may no longer: it acts no more, and the process ends.
	Lost
)

// Roles lists every role, for metrics.
var Roles = []Role{Standby, Active, Lost}

func (r Role) String() string {
	switch r {
	case Active:
		return "active"
	case Lost:
		return "lost"
	default:
		return "standby"
	}
}

// ErrNotHolder means another process holds the lease: a renewal found it taken.
var ErrNotHolder = errors.New("another process holds the lease")

// ErrNotActive is what a gated request fails with in a process that does not hold the lease.
var ErrNotActive = errors.New("this heirloom process does not hold the database lease (standby, or lost it): not acting")

// Holder is a process that holds (or held) the lease.
type Holder struct {
	// ID is unique per process run; on PostgreSQL it is the application_name of the process's
	// connections.
	ID   string `json:"id"`
	Host string `json:"host"`
	PID  int    `json:"pid"`
	// Since is when it took the lease, by the store's clock.
	Since time.Time `json:"since"`
	// Epoch counts the takeovers of the lease (a fencing token): it grows by one at each.
	Epoch int64 `json:"epoch,omitempty"`
}

// String names the holder for an operator: host and pid.
func (h Holder) String() string {
	return fmt.Sprintf("pid %d on %s", h.PID, h.Host)
}

// Me returns a Holder for this process, with a fresh ID.
func Me() Holder {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown host"
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return Holder{ID: "heirloom-" + hex.EncodeToString(b), Host: host, PID: os.Getpid()}
}

// Attempt is the outcome of one try to take the lease.
type Attempt struct {
	Acquired bool
	// Holder is the process that holds the lease: this one if Acquired, else the other one (its
	// ID empty if the store cannot tell).
	Holder Holder
	// ExpiresIn is how long the other holder's lease still runs by the store's clock, if it renews
	// it no more (not Acquired; zero for a lease that does not expire, such as a file lock).
	ExpiresIn time.Duration
	// Previous is the holder whose expired lease this one took over, if any.
	Previous *Holder
}

// Store keeps the lease. Its methods are called by one goroutine at a time.
type Store interface {
	// TryAcquire takes the lease for me if nobody holds it or its holder's lease expired by the
	// store's clock, for ttl (zero: while the process lives). A store that takes over an expired
	// lease first makes sure the previous holder can no longer write.
	TryAcquire(ctx context.Context, me Holder, ttl time.Duration) (Attempt, error)
	// Renew holds the lease for ttl more by the store's clock; ErrNotHolder if another process
	// took it.
	Renew(ctx context.Context, me Holder, ttl time.Duration) error
	// Release gives the lease up, so that a standby need not wait for it to expire.
	Release(ctx context.Context, me Holder) error
	// Describe names what the lease is on (the database), for messages.
	Describe() string
}

// Timing is how a lease is kept.
type Timing struct {
	// TTL is how long a renewal holds the lease, by the store's clock. Zero: as long as the
	// process lives (a file lock the kernel releases when it ends).
	TTL time.Duration
	// Renew is how often the holder renews the lease.
	Renew time.Duration
	// Margin is how much earlier than TTL after a renewal began the holder stops acting: it covers
	// a request let through just before the deadline reaching the homeserver, a late timer, and a
	// difference in the rate of the two clocks.
	Margin time.Duration
	// Poll is the longest a standby waits between two looks at the lease.
	Poll time.Duration
}

// DatabaseTiming is the timing of a lease held in PostgreSQL: a holder that dies is replaced
// within about TTL; one whose renewals fail stops acting 3.5 s after the last one that succeeded
// began, 1.5 s before a standby may take over.
var DatabaseTiming = Timing{TTL: 5 * time.Second, Renew: time.Second, Margin: 1500 * time.Millisecond, Poll: time.Second}

// FileTiming is the timing of a file lock: it does not expire; its file is checked every 10 s.
var FileTiming = Timing{Renew: 10 * time.Second, Poll: time.Second}

// Clock is the lease's time: the holder's deadline is measured on it. Tests inject one.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f once d has passed; stop cancels the call if it has not happened.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// Lease is this process's side of the lease: it takes it, keeps it, and tells everything that acts
// whether it may.
type Lease struct {
	store  Store
	me     Holder
	timing Timing
	clock  Clock

	mu       sync.Mutex
	role     Role
	deadline time.Time // by clock; the holder acts only before it (TTL > 0)
	stop     func() bool
	cause    error
	lost     chan struct{}
	holder   Holder // the holder as last seen
	log      zerolog.Logger
}

// New returns the lease of process me on store, in the standby role. A nil clock is the real one.
func New(store Store, me Holder, timing Timing, clock Clock) *Lease {
	if clock == nil {
		clock = realClock{}
	}
	return &Lease{store: store, me: me, timing: timing, clock: clock, lost: make(chan struct{}), log: zerolog.Nop()}
}

// Me is this process as a holder.
func (l *Lease) Me() Holder { return l.me }

// Describe names what the lease is on.
func (l *Lease) Describe() string { return l.store.Describe() }

// Active reports whether this process holds the lease and may act now.
func (l *Lease) Active() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.activeLocked()
}

func (l *Lease) activeLocked() bool {
	return l.role == Active && (l.timing.TTL == 0 || l.clock.Now().Before(l.deadline))
}

// Role reports the process's role now: a holder past its deadline is Lost even before its timer
// has run.
func (l *Lease) Role() Role {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.role == Active && !l.activeLocked() {
		return Lost
	}
	return l.role
}

// Holder returns the holder as this process last saw it: itself once Active.
func (l *Lease) Holder() Holder {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.holder
}

// Lost is closed when this process loses the lease.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Err says why the lease was lost, or nil.
func (l *Lease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cause
}

// Context returns a context that ends when parent ends or the lease is lost, with the loss as its
// cause.
func (l *Lease) Context(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(parent)
	go func() {
		select {
		case <-l.lost:
			cancel(l.Err())
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}
