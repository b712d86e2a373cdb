package database_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/database"
)

// A room's record of encryption keeps the first usable settings whatever comes later, and the
// latest content as it was; a room never recorded has no record.
func TestRoomEncryptionRecord(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		rec, err := db.GetRoomEncryption(ctx, roomX)
		require.NoError(t, err)
		require.Nil(t, rec)
		require.NoError(t, db.RecordRoomEncryption(ctx, roomX, `{"algorithm":"m.unknown"}`, ""))
		rec, err = db.GetRoomEncryption(ctx, roomX)
		require.NoError(t, err)
		require.Equal(t, &database.RoomEncryption{RoomID: roomX, Latest: `{"algorithm":"m.unknown"}`}, rec, "encrypted, nothing usable")
		megolm := `{"algorithm":"m.megolm.v1.aes-sha2"}`
		require.NoError(t, db.RecordRoomEncryption(ctx, roomX, megolm, megolm))
		require.NoError(t, db.RecordRoomEncryption(ctx, roomX, `{}`, ""))
		require.NoError(t, db.RecordRoomEncryption(ctx, roomX, `{"algorithm":"m.megolm.v1.aes-sha2","rotation_period_ms":1}`,
			`{"algorithm":"m.megolm.v1.aes-sha2","rotation_period_ms":1}`))
		rec, err = db.GetRoomEncryption(ctx, roomX)
		require.NoError(t, err)
		require.Equal(t, megolm, rec.Settings, "the first usable settings stay")
		require.Equal(t, `{"algorithm":"m.megolm.v1.aes-sha2","rotation_period_ms":1}`, rec.Latest)
	})
}
