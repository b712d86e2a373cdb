package database_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/database"
)

// A device's fallback key record reads back as it was put, to the millisecond, and a new put
// replaces it whole: a new key starts with nothing uploaded.
func TestFallbackKeyRecord(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		rec, err := db.GetFallbackKey(ctx, "@heirloom_a:localhost")
		require.NoError(t, err)
		require.Nil(t, rec)
		made := time.UnixMilli(time.Now().UnixMilli())
		first := &database.FallbackKey{AccountID: "@heirloom_a:localhost", DeviceID: "DEV", KeyID: "AAAAAQ", CreatedAt: made, UploadedKeyID: "AAAAAQ"}
		require.NoError(t, db.PutFallbackKey(ctx, first))
		rec, err = db.GetFallbackKey(ctx, "@heirloom_a:localhost")
		require.NoError(t, err)
		require.Equal(t, first.CreatedAt.UnixMilli(), rec.CreatedAt.UnixMilli())
		rec.CreatedAt = first.CreatedAt
		require.Equal(t, first, rec)

		second := &database.FallbackKey{AccountID: "@heirloom_a:localhost", DeviceID: "DEV", KeyID: "AAAAAw", CreatedAt: made.Add(time.Hour)}
		require.NoError(t, db.PutFallbackKey(ctx, second))
		rec, err = db.GetFallbackKey(ctx, "@heirloom_a:localhost")
		require.NoError(t, err)
		require.Equal(t, "AAAAAw", rec.KeyID)
		require.Empty(t, rec.UploadedKeyID, "the new key is not on the homeserver yet")
		other, err := db.GetFallbackKey(ctx, "@heirloom_b:localhost")
		require.NoError(t, err)
		require.Nil(t, other, "another account's record is its own")
	})
}
