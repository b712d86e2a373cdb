package database

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// RotateAfter returns the time before which outbound megolm sessions in the room must not be reused.
func (db *Database) RotateAfter(ctx context.Context, roomID id.RoomID) (time.Time, error) {
	var ms int64
	err := db.own.QueryRow(ctx, `SELECT rotate_after FROM room_rotation WHERE room_id=$1`, roomID).Scan(&ms)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, nil
	} else if err != nil {
		return time.Time{}, fmt.Errorf("failed to read rotation mark: %w", err)
	}
	return time.UnixMilli(ms), nil
}

// RequireRotation marks every outbound megolm session in the room created until at (and in the
// same millisecond) as used up. A later mark never moves an earlier one back.
func (db *Database) RequireRotation(ctx context.Context, roomID id.RoomID, at time.Time) error {
	_, err := db.own.Exec(ctx, `
		INSERT INTO room_rotation (room_id, rotate_after) VALUES ($1, $2)
		ON CONFLICT (room_id) DO UPDATE SET rotate_after=CASE WHEN excluded.rotate_after > room_rotation.rotate_after
			THEN excluded.rotate_after ELSE room_rotation.rotate_after END`,
		roomID, at.UnixMilli()+1)
	if err != nil {
		return fmt.Errorf("failed to mark room for rotation: %w", err)
	}
	return nil
}

// JoinedRooms returns the rooms the user is joined to, as heirloom's state store knows them.
func (db *Database) JoinedRooms(ctx context.Context, userID id.UserID) ([]id.RoomID, error) {
	rows, err := db.StateStore.Query(ctx, `SELECT room_id FROM mx_user_profile WHERE user_id=$1 AND membership='join'`, userID)
	return listOf(rows, err, dbutil.ScanSingleColumn[id.RoomID], "read the user's rooms")
}
