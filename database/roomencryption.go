package database

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"maunium.net/go/mautrix/id"
)

// RoomEncryption is what heirloom has seen of a room's m.room.encryption.
type RoomEncryption struct {
	RoomID id.RoomID
	// Settings is the first content heirloom could use (megolm, readable), "" while there is none.
	Settings string
	// Latest is the last content seen, as it was.
	Latest string
}

// RecordRoomEncryption records an m.room.encryption content seen for the room (latest, as it
// was), with the settings it names if heirloom can use them (usable, else ""). The first usable
// settings stay the room's: later contents never replace them.
func (db *Database) RecordRoomEncryption(ctx context.Context, roomID id.RoomID, latest, usable string) error {
	_, err := db.own.Exec(ctx, `
		INSERT INTO room_encryption (room_id, settings, latest, updated_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (room_id) DO UPDATE SET latest=excluded.latest, updated_at=excluded.updated_at,
			settings=CASE WHEN room_encryption.settings = '' THEN excluded.settings ELSE room_encryption.settings END`,
		roomID, usable, latest, db.nowMillis())
	if err != nil {
		return fmt.Errorf("failed to record the room's encryption: %w", err)
	}
	return nil
}

// GetRoomEncryption returns what heirloom has seen of the room's encryption, or nil if it has
// seen no m.room.encryption of the room.
func (db *Database) GetRoomEncryption(ctx context.Context, roomID id.RoomID) (*RoomEncryption, error) {
	rec := RoomEncryption{RoomID: roomID}
	err := db.own.QueryRow(ctx, `SELECT settings, latest FROM room_encryption WHERE room_id=$1`, roomID).Scan(&rec.Settings, &rec.Latest)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("failed to read the room's encryption: %w", err)
	}
	return &rec, nil
}
