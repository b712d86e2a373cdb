package tasks

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Stop waits for the work started, then nothing more starts; a context that ends first is an error.
func TestGroup(t *testing.T) {
	g := &Group{Work: "test work"}
	release, finished := make(chan struct{}), make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	g.Run(ctx, "first", func(ctx context.Context) {
		<-release
		require.NoError(t, ctx.Err(), "the task's context outlives the caller's")
		close(finished)
	})
	cancel()

	short, stop := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer stop()
	require.ErrorIs(t, g.Stop(short), context.DeadlineExceeded, "the task is still running")
	require.True(t, g.Stopping())
	ran := false
	g.Run(context.Background(), "late", func(context.Context) { ran = true })

	close(release)
	require.NoError(t, g.Stop(context.Background()))
	<-finished
	require.False(t, ran, "nothing starts once Stop began")
}

// Every calls fn on each wake and each period, and returns once ctx ends.
func TestEvery(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	wake, called, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		Every(ctx, time.Hour, wake, func() { called <- struct{}{} })
		close(done)
	}()
	wake <- struct{}{}
	<-called // a wake calls fn long before the hour
	cancel()
	<-done

	ticks := 0
	ctx, cancel = context.WithCancel(context.Background())
	Every(ctx, time.Millisecond, nil, func() {
		if ticks++; ticks == 3 {
			cancel()
		}
	})
	require.Equal(t, 3, ticks, "the period calls fn, and nothing after ctx ends")
}

// Sleep waits its duration, and returns at once (false) once Stop began, before or during it.
func TestSleepEndsWithStop(t *testing.T) {
	g := &Group{Work: "test work"}
	require.True(t, g.Sleep(time.Millisecond))
	woke := make(chan bool)
	go func() { woke <- g.Sleep(time.Hour) }()
	time.Sleep(10 * time.Millisecond)
	require.NoError(t, g.Stop(context.Background()))
	select {
	case passed := <-woke:
		require.False(t, passed, "a sleep cut short by Stop")
	case <-time.After(5 * time.Second):
		t.Fatal("Stop did not end the sleep")
	}
	require.False(t, g.Sleep(time.Hour), "a sleep after Stop returns at once")
	require.NoError(t, g.Stop(context.Background()), "Stop twice")
}
