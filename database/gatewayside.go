package database

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// The tables beside gateway mode's outbox: events that went to the bridge encrypted, the bridge's
// sends heirloom encrypted, and the decrypted files it serves the bridge.

// GatewayLate is an encrypted event that went to the bridge still encrypted.
type GatewayLate struct {
	EventID   id.EventID
	RoomID    id.RoomID
	SessionID id.SessionID
	// Body is the encrypted event as the homeserver sent it.
	Body string
}

// PutGatewayLate records an event that went to the bridge encrypted, for its decrypted copy to
// follow when the key arrives.
func (db *Database) PutGatewayLate(ctx context.Context, l *GatewayLate) error {
	_, err := db.own.Exec(ctx, `INSERT INTO gateway_late (event_id, room_id, session_id, body, created_at) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (event_id) DO NOTHING`, l.EventID, l.RoomID, l.SessionID, l.Body, db.nowMillis())
	if err != nil {
		return fmt.Errorf("failed to record an event sent encrypted: %w", err)
	}
	return nil
}

// LateGatewayEvents returns the events the bridge got encrypted whose key is of the session.
func (db *Database) LateGatewayEvents(ctx context.Context, sessionID id.SessionID) ([]*GatewayLate, error) {
	rows, err := db.own.Query(ctx, `SELECT event_id, room_id, session_id, body FROM gateway_late WHERE session_id=$1 ORDER BY created_at`, sessionID)
	out, err := dbutil.NewRowIterWithError(rows, func(row dbutil.Scannable) (*GatewayLate, error) {
		var l GatewayLate
		return &l, row.Scan(&l.EventID, &l.RoomID, &l.SessionID, &l.Body)
	}, err).AsList()
	if err != nil {
		return nil, fmt.Errorf("failed to read events sent encrypted: %w", err)
	}
	return out, nil
}

// DeleteGatewayLate forgets an event whose decrypted copy is on its way.
func (db *Database) DeleteGatewayLate(ctx context.Context, eventID id.EventID) error {
	if _, err := db.own.Exec(ctx, `DELETE FROM gateway_late WHERE event_id=$1`, eventID); err != nil {
		return fmt.Errorf("failed to forget an event sent encrypted: %w", err)
	}
	return nil
}

// PruneGatewayLate forgets events sent encrypted before the given time (unix ms), whose key never
// came, and all but the keep most recent ones.
func (db *Database) PruneGatewayLate(ctx context.Context, before int64, keep int) error {
	return db.pruneOldest(ctx, "gateway_late", "created_at", before, keep)
}

// pruneOldest deletes the rows of table whose column (a unix ms time) is before the given time,
// and all but the keep most recent.
func (db *Database) pruneOldest(ctx context.Context, table, column string, before int64, keep int) error {
	if _, err := db.own.Exec(ctx, `DELETE FROM `+table+` WHERE `+column+` < $1`, before); err != nil {
		return fmt.Errorf("failed to prune %s: %w", table, err)
	}
	// The keep-th most recent time: rows older than it go (NULL, so nothing, if there are fewer).
	_, err := db.own.Exec(ctx, `DELETE FROM `+table+` WHERE `+column+` < (SELECT `+column+` FROM `+table+`
		ORDER BY `+column+` DESC LIMIT 1 OFFSET $1)`, keep-1)
	if err != nil {
		return fmt.Errorf("failed to prune %s to %d rows: %w", table, keep, err)
	}
	return nil
}

// GatewaySend returns the event a bridge's send with this transaction ID became, or "".
func (db *Database) GatewaySend(ctx context.Context, userID id.UserID, txnID string) (id.EventID, error) {
	var eventID id.EventID
	err := db.own.QueryRow(ctx, `SELECT event_id FROM gateway_send WHERE user_id=$1 AND txn_id=$2`, userID, txnID).Scan(&eventID)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	} else if err != nil {
		return "", fmt.Errorf("failed to look up a send: %w", err)
	}
	return eventID, nil
}

// PutGatewaySend records the event a bridge's send became.
func (db *Database) PutGatewaySend(ctx context.Context, userID id.UserID, txnID string, eventID id.EventID) error {
	_, err := db.own.Exec(ctx, `INSERT INTO gateway_send (user_id, txn_id, event_id, sent_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id, txn_id) DO NOTHING`, userID, txnID, eventID, db.nowMillis())
	if err != nil {
		return fmt.Errorf("failed to record a send: %w", err)
	}
	return nil
}

// PruneGatewaySends forgets sends recorded before the given time (unix ms).
func (db *Database) PruneGatewaySends(ctx context.Context, before int64) error {
	if _, err := db.own.Exec(ctx, `DELETE FROM gateway_send WHERE sent_at < $1`, before); err != nil {
		return fmt.Errorf("failed to prune recorded sends: %w", err)
	}
	return nil
}

// PutGatewayMedia records the (sealed) file info of an encrypted file the bridge may download, or
// that its URL was handed out again.
func (db *Database) PutGatewayMedia(ctx context.Context, mediaID, sealed string) error {
	now := db.nowMillis()
	_, err := db.own.Exec(ctx, `INSERT INTO gateway_media (media_id, file_info, created_at, exposed_at) VALUES ($1, $2, $3, $3)
		ON CONFLICT (media_id) DO UPDATE SET exposed_at=excluded.exposed_at`, mediaID, sealed, now)
	if err != nil {
		return fmt.Errorf("failed to record media: %w", err)
	}
	return nil
}

// GatewayMedia returns the sealed file info of a media ID heirloom handed out, or "".
func (db *Database) GatewayMedia(ctx context.Context, mediaID string) (string, error) {
	var sealed string
	err := db.own.QueryRow(ctx, `SELECT file_info FROM gateway_media WHERE media_id=$1`, mediaID).Scan(&sealed)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	} else if err != nil {
		return "", fmt.Errorf("failed to look up media: %w", err)
	}
	return sealed, nil
}

// PruneGatewayMedia forgets decrypted files whose URL was last handed out before the given time
// (unix ms), and all but the keep most recently handed out.
func (db *Database) PruneGatewayMedia(ctx context.Context, before int64, keep int) error {
	return db.pruneOldest(ctx, "gateway_media", "exposed_at", before, keep)
}
