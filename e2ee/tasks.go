package e2ee

import (
	"context"
	"fmt"
	"sync"

	"github.com/rs/zerolog"
)

// tasks tracks the work the manager starts in the background, so that Shutdown can wait for it
// before the database closes.
type tasks struct {
	lock     sync.Mutex
	wg       sync.WaitGroup
	stopping bool
}

// run runs fn on its own goroutine with a context that outlives ctx's cancellation. Once Shutdown
// began it runs nothing and says so.
func (t *tasks) run(ctx context.Context, what string, fn func(ctx context.Context)) {
	t.lock.Lock()
	defer t.lock.Unlock()
	if t.stopping {
		zerolog.Ctx(ctx).Warn().Str("task", what).Msg("Not starting puppet device work: shutting down")
		return
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		fn(context.WithoutCancel(ctx))
	}()
}

// Shutdown stops the manager from starting background work and waits until the work already
// started has finished, or ctx ends (then it returns ctx's error). Call it after the HTTP listener
// stopped and before the database closes.
func (m *Manager) Shutdown(ctx context.Context) error {
	m.tasks.lock.Lock()
	m.tasks.stopping = true
	m.tasks.lock.Unlock()
	done := make(chan struct{})
	go func() {
		m.tasks.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("failed to finish puppet device work: %w", ctx.Err())
	}
}
