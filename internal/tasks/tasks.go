// Package tasks tracks work started in the background, so that a shutdown can wait for it before
// the database closes.
package tasks

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Group is the background work of one component; its zero value is ready.
type Group struct {
	// Work names the component's work in logs and errors, e.g. "history sharing work".
	Work string

	lock     sync.Mutex
	wg       sync.WaitGroup
	stopping bool
	stopped  chan struct{} // closed when Stop begins; made on first use
}

// Run runs fn on its own goroutine with a context that outlives ctx's cancellation. Once Stop
// began it runs nothing and says so.
func (g *Group) Run(ctx context.Context, what string, fn func(ctx context.Context)) {
	g.lock.Lock()
	defer g.lock.Unlock()
	if g.stopping {
		zerolog.Ctx(ctx).Warn().Str("task", what).Msgf("Not starting %s: shutting down", g.Work)
		return
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		fn(context.WithoutCancel(ctx))
	}()
}

// Stop starts nothing more and waits until the work already started has finished, or ctx ends
// (then it returns ctx's error).
func (g *Group) Stop(ctx context.Context) error {
	g.lock.Lock()
	if !g.stopping {
		g.stopping = true
		close(g.stopChan())
	}
	g.lock.Unlock()
	done := make(chan struct{})
	go func() {
		g.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("failed to finish %s: %w", g.Work, ctx.Err())
	}
}

// stopChan returns the channel Stop closes (under g.lock).
func (g *Group) stopChan() chan struct{} {
	if g.stopped == nil {
		g.stopped = make(chan struct{})
	}
	return g.stopped
}

// Sleep waits for d, or until Stop begins: it reports whether d passed with no Stop begun, so a
// task that waits before its work does not hold a shutdown back.
func (g *Group) Sleep(d time.Duration) bool {
	g.lock.Lock()
	stopped := g.stopChan()
	g.lock.Unlock()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return !g.Stopping()
	case <-stopped:
		return false
	}
}

// Stopping reports whether Stop began.
func (g *Group) Stopping() bool {
	g.lock.Lock()
	defer g.lock.Unlock()
	return g.stopping
}

// Every calls fn every period until ctx ends, and also whenever wake has a value (a nil wake never
// has). The first call is after the first period.
func Every(ctx context.Context, period time.Duration, wake <-chan struct{}, fn func()) {
	ticker := time.NewTicker(period)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-wake:
		}
		fn()
	}
}
