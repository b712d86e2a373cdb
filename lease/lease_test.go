package lease

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeClock is a clock tests step by hand; AfterFunc's calls run on Advance.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

// Advance moves the clock on and runs the timers that came due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*fakeTimer
	for _, t := range c.timers {
		if !t.stopped && !t.at.After(c.now) {
			t.stopped = true
			due = append(due, t)
		}
	}
	c.mu.Unlock()
	for _, t := range due {
		t.f()
	}
}

// fakeStore is a lease row on the fake clock, as the database keeps it: holder and expiry.
type fakeStore struct {
	mu       sync.Mutex
	clock    *fakeClock
	holder   Holder
	expires  time.Time
	epoch    int64
	renewErr error // what Renew fails with, if set
}

func (s *fakeStore) Describe() string { return "the test database" }

func (s *fakeStore) TryAcquire(_ context.Context, me Holder, ttl time.Duration) (Attempt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	if s.holder.ID != "" && s.holder.ID != me.ID && now.Before(s.expires) {
		return Attempt{Holder: s.holder, ExpiresIn: s.expires.Sub(now)}, nil
	}
	var previous *Holder
	if s.holder.ID != "" && s.holder.ID != me.ID {
		p := s.holder
		previous = &p
	}
	s.epoch++
	me.Since, me.Epoch = now, s.epoch
	s.holder, s.expires = me, now.Add(ttl)
	return Attempt{Acquired: true, Holder: me, Previous: previous}, nil
}

func (s *fakeStore) Renew(_ context.Context, me Holder, ttl time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.renewErr != nil {
		return s.renewErr
	}
	if s.holder.ID != me.ID {
		return ErrNotHolder
	}
	s.expires = s.clock.Now().Add(ttl)
	return nil
}

func (s *fakeStore) Release(_ context.Context, me Holder) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holder.ID == me.ID {
		s.expires = time.Time{}
	}
	return nil
}

var testTiming = Timing{TTL: 5 * time.Second, Renew: time.Second, Margin: 1500 * time.Millisecond, Poll: time.Second}

func holder(name string, pid int) Holder { return Holder{ID: name, Host: "host-" + name, PID: pid} }

func setup() (*fakeClock, *fakeStore, *Lease, *Lease) {
	clk := newFakeClock()
	store := &fakeStore{clock: clk}
	return clk, store, New(store, holder("a", 1), testTiming, clk), New(store, holder("b", 2), testTiming, clk)
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestStandbyTakesOverOnlyAfterTheHolderStopped(t *testing.T) {
	ctx := context.Background()
	clk, store, a, b := setup()
	got, err := a.TryAcquire(ctx)
	require.NoError(t, err)
	require.True(t, got.Acquired)
	require.True(t, a.Active())
	require.Equal(t, Active, a.Role())

	// a renews twice, then its renewals fail (its database connection is gone).
	clk.Advance(time.Second)
	a.RenewOnce(ctx)
	lastRenewal := clk.Now()
	store.renewErr = errors.New("connection reset")
	tookOver := time.Time{}
	for step := 0; step < 100; step++ {
		clk.Advance(100 * time.Millisecond)
		if step%10 == 0 {
			a.RenewOnce(ctx)
		}
		if b.Role() == Standby {
			attempt, err := b.TryAcquire(ctx)
			require.NoError(t, err)
			if attempt.Acquired {
				tookOver = clk.Now()
				require.Equal(t, "a", attempt.Previous.ID, "the takeover names the holder it replaced")
			} else {
				require.Equal(t, "a", attempt.Holder.ID)
			}
		}
		require.Falsef(t, a.Active() && b.Active(), "both processes active at %s after a's last renewal", clk.Now().Sub(lastRenewal))
	}
	require.False(t, tookOver.IsZero(), "b never took over")
	require.Equal(t, testTiming.TTL, tookOver.Sub(lastRenewal), "b takes over when a's lease expires in the store")
	require.Equal(t, Lost, a.Role())
	require.True(t, isClosed(a.Lost()), "a's Lost channel is closed by its own timer")
	require.ErrorContains(t, a.Err(), "no renewal of the lease")
}

func TestHolderStopsAtTTLMinusMarginByItsOwnClock(t *testing.T) {
	ctx := context.Background()
	clk, store, a, _ := setup()
	_, err := a.TryAcquire(ctx)
	require.NoError(t, err)
	store.renewErr = errors.New("timeout")
	clk.Advance(testTiming.TTL - testTiming.Margin - time.Millisecond)
	a.RenewOnce(ctx)
	require.True(t, a.Active(), "a failed renewal alone does not stop the holder before its deadline")
	require.False(t, isClosed(a.Lost()))
	clk.Advance(time.Millisecond)
	require.False(t, a.Active(), "the holder stops at its deadline")
	require.True(t, isClosed(a.Lost()))
}

func TestRenewalsKeepTheLease(t *testing.T) {
	ctx := context.Background()
	clk, _, a, b := setup()
	_, err := a.TryAcquire(ctx)
	require.NoError(t, err)
	for range 60 {
		clk.Advance(time.Second)
		a.RenewOnce(ctx)
		require.True(t, a.Active())
		attempt, err := b.TryAcquire(ctx)
		require.NoError(t, err)
		require.False(t, attempt.Acquired)
		require.Equal(t, holder("a", 1).Host, attempt.Holder.Host)
		require.Equal(t, testTiming.TTL, attempt.ExpiresIn)
	}
	require.Equal(t, Standby, b.Role())
}

func TestRenewalThatFindsTheLeaseTakenStopsAtOnce(t *testing.T) {
	ctx := context.Background()
	clk, store, a, b := setup()
	_, err := a.TryAcquire(ctx)
	require.NoError(t, err)
	// Another process took the row (an operator cleared it, say).
	store.mu.Lock()
	store.expires = clk.Now()
	store.mu.Unlock()
	attempt, err := b.TryAcquire(ctx)
	require.NoError(t, err)
	require.True(t, attempt.Acquired)
	a.RenewOnce(ctx)
	require.False(t, a.Active())
	require.True(t, isClosed(a.Lost()))
	require.ErrorIs(t, a.Err(), ErrNotHolder)
}

func TestRenewalBackAfterTheDeadlineRevivesNothing(t *testing.T) {
	ctx := context.Background()
	clk, store, a, _ := setup()
	_, err := a.TryAcquire(ctx)
	require.NoError(t, err)
	slow := &slowStore{fakeStore: store, clock: clk, delay: testTiming.TTL}
	a.store = slow
	a.RenewOnce(ctx) // begins now, succeeds TTL later: past the deadline
	require.False(t, a.Active())
	require.Equal(t, Lost, a.Role())
}

// slowStore's renewals take delay on the fake clock.
type slowStore struct {
	*fakeStore
	clock *fakeClock
	delay time.Duration
}

func (s *slowStore) Renew(ctx context.Context, me Holder, ttl time.Duration) error {
	s.clock.Advance(s.delay)
	return s.fakeStore.Renew(ctx, me, ttl)
}

func TestReleaseLetsTheStandbyTakeOverAtOnce(t *testing.T) {
	ctx := context.Background()
	_, _, a, b := setup()
	_, err := a.TryAcquire(ctx)
	require.NoError(t, err)
	a.Release(ctx)
	require.False(t, a.Active())
	require.False(t, isClosed(a.Lost()), "a release is not a loss")
	attempt, err := b.TryAcquire(ctx)
	require.NoError(t, err)
	require.True(t, attempt.Acquired)
}

func TestFileLeaseDoesNotExpire(t *testing.T) {
	clk := newFakeClock()
	store := &fakeStore{clock: clk}
	l := New(store, holder("a", 1), Timing{Renew: time.Second, Poll: time.Second}, clk)
	_, err := l.TryAcquire(context.Background())
	require.NoError(t, err)
	clk.Advance(24 * time.Hour)
	require.True(t, l.Active())
}

func TestTransportSendsOnlyWhileActive(t *testing.T) {
	ctx := context.Background()
	hits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits++ }))
	defer srv.Close()
	clk, store, a, _ := setup()
	cli := &http.Client{Transport: a.Transport(nil)}
	_, err := cli.Get(srv.URL)
	require.ErrorIs(t, err, ErrNotActive, "a standby sends nothing")
	_, err = a.TryAcquire(ctx)
	require.NoError(t, err)
	resp, err := cli.Get(srv.URL)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 1, hits)
	store.renewErr = errors.New("database gone")
	clk.Advance(testTiming.TTL)
	_, err = cli.Get(srv.URL)
	require.ErrorIs(t, err, ErrNotActive, "a process that lost the lease sends nothing")
	require.Equal(t, 1, hits)
}

func TestContextEndsWhenTheLeaseIsLost(t *testing.T) {
	ctx := context.Background()
	clk, store, a, _ := setup()
	_, err := a.TryAcquire(ctx)
	require.NoError(t, err)
	active, cancel := a.Context(ctx)
	defer cancel()
	store.renewErr = errors.New("database gone")
	clk.Advance(testTiming.TTL - testTiming.Margin)
	select {
	case <-active.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the context did not end when the lease was lost")
	}
	require.ErrorContains(t, context.Cause(active), "no renewal of the lease")
}

// Acquire, on the real clock: a standby waits while the holder renews, and takes over once the
// holder stops renewing and its lease expires.
func TestAcquireWaitsAsStandby(t *testing.T) {
	store := &realStore{}
	timing := Timing{TTL: 300 * time.Millisecond, Renew: 50 * time.Millisecond, Margin: 100 * time.Millisecond, Poll: 50 * time.Millisecond}
	a, b := New(store, holder("a", 1), timing, nil), New(store, holder("b", 2), timing, nil)
	ctx := context.Background()
	got, err := a.TryAcquire(ctx)
	require.NoError(t, err)
	require.True(t, got.Acquired)
	keepCtx, stopKeeping := context.WithCancel(ctx)
	go a.Keep(keepCtx)
	acquired := make(chan error, 1)
	go func() {
		_, err := b.Acquire(ctx)
		acquired <- err
	}()
	select {
	case err := <-acquired:
		t.Fatalf("b took the lease while a renewed it (%v)", err)
	case <-time.After(time.Second):
	}
	require.True(t, a.Active())
	stopKeeping()
	stopped := time.Now()
	select {
	case err := <-acquired:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("b did not take over")
	}
	require.False(t, a.Active(), "a stopped before b took over")
	require.GreaterOrEqual(t, time.Since(stopped), timing.TTL-timing.Renew, "b waited for a's lease to expire")
	require.True(t, b.Active())
}

// realStore is fakeStore on the real clock.
type realStore struct {
	mu      sync.Mutex
	holder  Holder
	expires time.Time
}

func (s *realStore) Describe() string { return "the test database" }

func (s *realStore) TryAcquire(_ context.Context, me Holder, ttl time.Duration) (Attempt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holder.ID != "" && s.holder.ID != me.ID && time.Now().Before(s.expires) {
		return Attempt{Holder: s.holder, ExpiresIn: time.Until(s.expires)}, nil
	}
	s.holder, s.expires = me, time.Now().Add(ttl)
	return Attempt{Acquired: true, Holder: me}, nil
}

func (s *realStore) Renew(_ context.Context, me Holder, ttl time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holder.ID != me.ID {
		return ErrNotHolder
	}
	s.expires = time.Now().Add(ttl)
	return nil
}

func (s *realStore) Release(context.Context, Holder) error { return nil }
