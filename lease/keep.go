package lease

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/heirloom-matrix/heirloom/internal/tasks"
)

// TryAcquire makes one attempt to take the lease. Once taken, the process is Active until its
// deadline, which Keep moves on.
func (l *Lease) TryAcquire(ctx context.Context) (Attempt, error) {
	start := l.clock.Now()
	got, err := l.store.TryAcquire(ctx, l.me, l.timing.TTL)
	if err != nil {
		return Attempt{}, fmt.Errorf("failed to take the lease on %s: %w", l.store.Describe(), err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.holder = got.Holder
	if !got.Acquired {
		return got, nil
	}
	l.log = *zerolog.Ctx(ctx)
	l.role = Active
	l.extendLocked(start)
	return got, nil
}

// Acquire waits as a standby until this process holds the lease, or ctx ends. It logs the active
// process it waits for, once per holder, and returns the attempt that took the lease.
func (l *Lease) Acquire(ctx context.Context) (Attempt, error) {
	log := zerolog.Ctx(ctx)
	var seen Holder
	failing := false
	for {
		got, err := l.TryAcquire(ctx)
		wait := l.timing.Poll
		switch {
		case err != nil && ctx.Err() == nil:
			if !failing {
				log.Warn().Err(err).Msg("Cannot look at the lease (is the database down?); trying again")
			}
			failing = true
		case err != nil:
		case got.Acquired:
			return got, nil
		default:
			failing = false
			if got.Holder.ID != seen.ID {
				seen = got.Holder
				log.Info().Str("database", l.store.Describe()).Str("application_name", l.me.ID).Str("active_host", got.Holder.Host).
					Int("active_pid", got.Holder.PID).Time("active_since", got.Holder.Since).
					Msg("Waiting as the standby: another heirloom process holds the lease and is the active one")
			}
			// Look again just after the holder's lease would expire, or sooner.
			wait = min(max(got.ExpiresIn+20*time.Millisecond, 20*time.Millisecond), l.timing.Poll)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return Attempt{}, ctx.Err()
		case <-t.C:
		}
	}
}

// Keep renews the lease every Timing.Renew until ctx ends or the lease is lost. It does not
// release the lease: the process does, once it has stopped acting (Release).
func (l *Lease) Keep(ctx context.Context) {
	held, stop := l.Context(ctx)
	defer stop()
	tasks.Every(held, l.timing.Renew, nil, func() { l.RenewOnce(ctx) })
}

// RenewOnce renews the lease once. A renewal that succeeds moves the deadline to TTL - Margin after
// it began; one that finds the lease taken loses it at once; any other failure leaves the deadline
// where it was, and the process stops acting when it passes.
func (l *Lease) RenewOnce(ctx context.Context) {
	if l.Role() != Active {
		return
	}
	start := l.clock.Now()
	renewCtx, cancel := context.WithTimeout(ctx, max(l.timing.TTL-l.timing.Margin, l.timing.Renew))
	err := l.store.Renew(renewCtx, l.me, l.timing.TTL)
	cancel()
	switch {
	case err == nil:
		l.mu.Lock()
		// A renewal that comes back after the deadline revives nothing: the process stopped acting.
		if l.activeLocked() {
			l.extendLocked(start)
		}
		l.mu.Unlock()
		l.expireIfDue()
	case errors.Is(err, ErrNotHolder):
		l.lose(fmt.Errorf("the lease on %s was taken by another process: %w", l.store.Describe(), err))
	case ctx.Err() == nil:
		l.mu.Lock()
		left := l.deadline.Sub(l.clock.Now())
		l.mu.Unlock()
		l.log.Warn().Err(err).Dur("stops_acting_in", left).Msg("Failed to renew the lease; retrying")
	}
}

// extendLocked moves the deadline to TTL - Margin after start and sets the timer that loses the
// lease when it passes.
func (l *Lease) extendLocked(start time.Time) {
	if l.timing.TTL == 0 {
		return
	}
	l.deadline = start.Add(l.timing.TTL - l.timing.Margin)
	if l.stop != nil {
		l.stop()
	}
	l.stop = l.clock.AfterFunc(l.deadline.Sub(l.clock.Now()), l.expireIfDue)
}

// expireIfDue loses the lease if its deadline has passed without a renewal.
func (l *Lease) expireIfDue() {
	l.mu.Lock()
	due := l.role == Active && l.timing.TTL != 0 && !l.clock.Now().Before(l.deadline)
	l.mu.Unlock()
	if due {
		l.lose(fmt.Errorf("no renewal of the lease on %s succeeded within %s", l.store.Describe(), l.timing.TTL-l.timing.Margin))
	}
}

// lose ends the Active role: Lost is closed, everything gated stops, and the log says so.
func (l *Lease) lose(cause error) {
	l.mu.Lock()
	if l.role != Active {
		l.mu.Unlock()
		return
	}
	l.role, l.cause = Lost, cause
	if l.stop != nil {
		l.stop()
	}
	close(l.lost)
	log := l.log
	l.mu.Unlock()
	log.Error().Err(cause).Str("database", l.store.Describe()).
		Msg("Lost the lease: this process stops acting now (no key, no message to the homeserver, no delivery to the bridge, transactions refused) and exits; a standby takes over")
}

// Release gives the lease up once the process has stopped acting, so that a standby takes over at
// once. It is a no-op unless the process is Active.
func (l *Lease) Release(ctx context.Context) {
	l.mu.Lock()
	if l.role != Active {
		l.mu.Unlock()
		return
	}
	l.role = Standby
	if l.stop != nil {
		l.stop()
	}
	l.mu.Unlock()
	if err := l.store.Release(ctx, l.me); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to release the lease; a standby takes over when it expires")
	}
}
