package database

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"maunium.net/go/mautrix/id"
)

// MessageIndex is one megolm message a puppet decrypted: the replay check's key (account, room,
// session, message index, the event's sender) and the event that used it first.
type MessageIndex struct {
	AccountID string
	RoomID    id.RoomID
	SessionID id.SessionID
	Index     uint
	Sender    id.UserID
	EventID   id.EventID
	Timestamp int64
}

// CheckMessageIndex records m's event as the one that used its key, unless another event did
// first. It reports whether m's event is that event (a first decryption, or the same event again):
// another event ID or timestamp under the same key is a replay.
// An event is recorded only with both its ID and timestamp (a read whose filter leaves one out
// would record the event under a timestamp it does not have, and the event itself would then be a
// replay). One that lacks its timestamp passes if no event or the same event ID used the key; one
// that lacks its ID cannot be told from another, and passes only if no event used the key yet.
func (db *Database) CheckMessageIndex(ctx context.Context, m MessageIndex) (bool, error) {
	if m.EventID == "" || m.Timestamp == 0 {
		var eventID id.EventID
		err := db.own.QueryRow(ctx, `SELECT event_id FROM heirloom_message_index
			WHERE account_id=$1 AND room_id=$2 AND session_id=$3 AND message_index=$4 AND sender=$5`,
			m.AccountID, m.RoomID, m.SessionID, int64(m.Index), m.Sender).Scan(&eventID)
		if errors.Is(err, sql.ErrNoRows) {
			return true, nil
		} else if err != nil {
			return false, fmt.Errorf("failed to check the message index: %w", err)
		}
		return m.EventID != "" && eventID == m.EventID, nil
	}
	const q = `INSERT INTO heirloom_message_index (account_id, room_id, session_id, message_index, sender, event_id, timestamp)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (account_id, room_id, session_id, message_index, sender) DO UPDATE SET timestamp=heirloom_message_index.timestamp
		RETURNING event_id, timestamp`
	var eventID id.EventID
	var timestamp int64
	err := db.own.QueryRow(ctx, q, m.AccountID, m.RoomID, m.SessionID, int64(m.Index), m.Sender, m.EventID, m.Timestamp).
		Scan(&eventID, &timestamp)
	if err != nil {
		return false, fmt.Errorf("failed to check the message index: %w", err)
	}
	return eventID == m.EventID && timestamp == m.Timestamp, nil
}
