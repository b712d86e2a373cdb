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
