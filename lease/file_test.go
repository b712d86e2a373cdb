package lease

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFileLockHasOneHolderAndNamesIt(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "heirloom.db.lock")
	first, second := NewFileStore(path, "heirloom.db"), NewFileStore(path, "heirloom.db")
	me := Holder{ID: "heirloom-1", Host: "first-host", PID: 4242}
	got, err := first.TryAcquire(ctx, me, 0)
	require.NoError(t, err)
	require.True(t, got.Acquired)

	got, err = second.TryAcquire(ctx, Holder{ID: "heirloom-2", Host: "second-host", PID: 99}, 0)
	require.NoError(t, err)
	require.False(t, got.Acquired, "a second holder of the same lock file")
	require.Equal(t, "first-host", got.Holder.Host)
	require.Equal(t, 4242, got.Holder.PID)
	require.Contains(t, second.Describe(), "heirloom.db")
	require.NoError(t, first.Renew(ctx, me, 0))

	require.NoError(t, first.Release(ctx, me))
	got, err = second.TryAcquire(ctx, Holder{ID: "heirloom-2", Host: "second-host", PID: 99}, 0)
	require.NoError(t, err)
	require.True(t, got.Acquired, "the lock is free once released")
}

func TestFileLockReplacedIsLost(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "heirloom.db.lock")
	store := NewFileStore(path, "heirloom.db")
	me := Holder{ID: "heirloom-1", Host: "h", PID: 1}
	_, err := store.TryAcquire(ctx, me, 0)
	require.NoError(t, err)
	require.NoError(t, os.Remove(path))
	// Another process could now lock a new file of the same name: the holder stops.
	require.ErrorIs(t, store.Renew(ctx, me, 0), ErrNotHolder)
}
