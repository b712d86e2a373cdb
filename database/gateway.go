package database

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// Kinds of gateway events.
const (
	GatewayRoomEvent = "event"
	GatewayEphemeral = "ephemeral"
)

// GatewayEvent is one event bound for the bridge in gateway mode.
type GatewayEvent struct {
	Seq int64
	// Key is what makes a delivery of the same event idempotent: the event ID (with a suffix for a
	// decrypted copy that follows a late key), or the transaction's hash and position for an
	// ephemeral event.
	Key     string
	EventID id.EventID
	RoomID  id.RoomID
	Kind    string
	// Body is the event as the bridge gets it (JSON).
	Body string
	// Waiting marks an encrypted event whose key had not arrived: it holds back its room's
	// events until WaitUntil (unix ms), then goes on still encrypted.
	Waiting   bool
	SessionID id.SessionID
	WaitUntil int64
	TxnID     int64
	// ReceivedAt is when heirloom stored it (unix ms).
	ReceivedAt int64
}

// gatewaySeq serialises the choice of sequence numbers; one heirloom process owns the outbox.
var gatewaySeq sync.Mutex

// PutGatewayEvents stores events bound for the bridge, in order, after those already stored. An
// event whose key is stored already, waiting or delivered in the last day, is left as it is (a
// transaction the homeserver sent again).
func (db *Database) PutGatewayEvents(ctx context.Context, events []*GatewayEvent) error {
	if len(events) == 0 {
		return nil
	}
	gatewaySeq.Lock()
	defer gatewaySeq.Unlock()
	return db.DoTxn(ctx, func(ctx context.Context) error {
		var next int64
		if err := db.own.QueryRow(ctx, `SELECT COALESCE(MAX(seq), 0) FROM gateway_event`).Scan(&next); err != nil {
			return fmt.Errorf("failed to read the outbox position: %w", err)
		}
		now := db.nowMillis()
		for _, e := range events {
			next++
			res, err := db.own.Exec(ctx, `
				INSERT INTO gateway_event (seq, event_key, event_id, room_id, kind, body, waiting, session_id, wait_until, received_at)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (event_key) DO NOTHING`,
				next, e.Key, e.EventID, e.RoomID, e.Kind, e.Body, e.Waiting, e.SessionID, e.WaitUntil, now)
			if err != nil {
				return fmt.Errorf("failed to store event for the bridge: %w", err)
			}
			if n, _ := res.RowsAffected(); n == 1 {
				e.Seq = next
			} else {
				next--
			}
		}
		return nil
	})
}

const gatewayEventColumns = `seq, event_key, event_id, room_id, kind, body, waiting, session_id, wait_until, txn_id, received_at`

func scanGatewayEvent(row dbutil.Scannable) (*GatewayEvent, error) {
	var e GatewayEvent
	err := row.Scan(&e.Seq, &e.Key, &e.EventID, &e.RoomID, &e.Kind, &e.Body, &e.Waiting, &e.SessionID, &e.WaitUntil, &e.TxnID,
		&e.ReceivedAt)
	return &e, err
}

// GatewayTxn is a transaction composed for the bridge and not yet acknowledged by it.
type GatewayTxn struct {
	ID          int64
	Attempts    int
	NextAttempt int64
	LastError   string
	Events      []*GatewayEvent
}

// PendingGatewayTxn returns the oldest composed transaction the bridge has not acknowledged, with
// its events in order, or nil.
func (db *Database) PendingGatewayTxn(ctx context.Context) (*GatewayTxn, error) {
	var txn GatewayTxn
	err := db.own.QueryRow(ctx, `SELECT txn_id, attempts, next_attempt, last_error FROM gateway_txn ORDER BY txn_id LIMIT 1`).
		Scan(&txn.ID, &txn.Attempts, &txn.NextAttempt, &txn.LastError)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("failed to read the pending bridge transaction: %w", err)
	}
	rows, err := db.own.Query(ctx, `SELECT `+gatewayEventColumns+` FROM gateway_event WHERE txn_id=$1 ORDER BY seq`, txn.ID)
	if txn.Events, err = dbutil.NewRowIterWithError(rows, scanGatewayEvent, err).AsList(); err != nil {
		return nil, fmt.Errorf("failed to read the pending bridge transaction's events: %w", err)
	}
	return &txn, nil
}

// ComposeGatewayTxn puts up to limit events not yet in a transaction into a new one, in order,
// and returns it (nil if nothing may go now). An event still waiting for its key until after now
// holds back the rest of its room; once its wait is over it goes on as it is (still encrypted),
// and late is called for it in the same database transaction. Transaction IDs never repeat.
func (db *Database) ComposeGatewayTxn(ctx context.Context, limit int, now int64, late func(ctx context.Context, e *GatewayEvent) error) (*GatewayTxn, error) {
	var txn *GatewayTxn
	err := db.DoTxn(ctx, func(ctx context.Context) error {
		// A bounded look ahead: past a few rooms held back, the rest waits for the next round.
		rows, err := db.own.Query(ctx, `SELECT `+gatewayEventColumns+` FROM gateway_event WHERE txn_id=0 ORDER BY seq LIMIT $1`, 20*limit)
		candidates, err := dbutil.NewRowIterWithError(rows, scanGatewayEvent, err).AsList()
		if err != nil {
			return fmt.Errorf("failed to read the outbox: %w", err)
		}
		blocked := map[id.RoomID]bool{}
		var picked []*GatewayEvent
		for _, e := range candidates {
			if len(picked) == limit {
				break
			}
			if e.RoomID != "" && blocked[e.RoomID] {
				continue
			}
			if e.Waiting && e.WaitUntil > now {
				blocked[e.RoomID] = true
				continue
			}
			picked = append(picked, e)
		}
		if len(picked) == 0 {
			return nil
		}
		var id int64
		if err = db.own.QueryRow(ctx, `
			INSERT INTO gateway_counter (name, value) VALUES ('bridge_txn', 1)
			ON CONFLICT (name) DO UPDATE SET value=gateway_counter.value+1 RETURNING value`).Scan(&id); err != nil {
			return fmt.Errorf("failed to number the bridge transaction: %w", err)
		}
		if _, err = db.own.Exec(ctx, `INSERT INTO gateway_txn (txn_id, created_at) VALUES ($1, $2)`, id, now); err != nil {
			return fmt.Errorf("failed to record the bridge transaction: %w", err)
		}
		for _, e := range picked {
			if e.Waiting && late != nil {
				if err = late(ctx, e); err != nil {
					return err
				}
			}
			if _, err = db.own.Exec(ctx, `UPDATE gateway_event SET txn_id=$2, waiting=false WHERE seq=$1`, e.Seq, id); err != nil {
				return fmt.Errorf("failed to put an event into the bridge transaction: %w", err)
			}
			e.TxnID, e.Waiting = id, false
		}
		txn = &GatewayTxn{ID: id, Events: picked}
		return nil
	})
	return txn, err
}

// FinishGatewayTxn forgets a transaction the bridge acknowledged, and its events' bodies (their
// keys stay until PruneGatewayDelivered).
func (db *Database) FinishGatewayTxn(ctx context.Context, txnID int64) error {
	return db.DoTxn(ctx, func(ctx context.Context) error {
		if _, err := db.own.Exec(ctx, `UPDATE gateway_event SET body='', delivered_at=$2 WHERE txn_id=$1`, txnID, db.nowMillis()); err != nil {
			return fmt.Errorf("failed to forget delivered events: %w", err)
		}
		if _, err := db.own.Exec(ctx, `DELETE FROM gateway_txn WHERE txn_id=$1`, txnID); err != nil {
			return fmt.Errorf("failed to forget a delivered transaction: %w", err)
		}
		return nil
	})
}

// RetryGatewayTxn records a failed delivery and when to try again.
func (db *Database) RetryGatewayTxn(ctx context.Context, txnID int64, nextAttempt int64, reason string) error {
	_, err := db.own.Exec(ctx, `UPDATE gateway_txn SET attempts=attempts+1, next_attempt=$2, last_error=$3 WHERE txn_id=$1`,
		txnID, nextAttempt, reason)
	if err != nil {
		return fmt.Errorf("failed to record a failed delivery: %w", err)
	}
	return nil
}

// WaitingGatewayEvents returns the events not yet delivered that wait for a key of the session.
func (db *Database) WaitingGatewayEvents(ctx context.Context, sessionID id.SessionID) ([]*GatewayEvent, error) {
	rows, err := db.own.Query(ctx, `SELECT `+gatewayEventColumns+` FROM gateway_event WHERE session_id=$1 AND waiting AND txn_id=0 ORDER BY seq`,
		sessionID)
	out, err := dbutil.NewRowIterWithError(rows, scanGatewayEvent, err).AsList()
	if err != nil {
		return nil, fmt.Errorf("failed to read events waiting for a key: %w", err)
	}
	return out, nil
}

// ResolveGatewayEvent replaces a waiting event's body with its decrypted form: it goes on in order.
// It changes nothing if the event went into a transaction meanwhile.
func (db *Database) ResolveGatewayEvent(ctx context.Context, seq int64, body string) (bool, error) {
	res, err := db.own.Exec(ctx, `UPDATE gateway_event SET body=$2, waiting=false WHERE seq=$1 AND waiting AND txn_id=0`, seq, body)
	if err != nil {
		return false, fmt.Errorf("failed to store a decrypted event: %w", err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// PruneGatewayDelivered forgets the keys of events delivered before the given time (unix ms).
func (db *Database) PruneGatewayDelivered(ctx context.Context, before int64) error {
	if _, err := db.own.Exec(ctx, `DELETE FROM gateway_event WHERE delivered_at > 0 AND delivered_at < $1`, before); err != nil {
		return fmt.Errorf("failed to prune delivered events: %w", err)
	}
	return nil
}

// CountGatewayEvents returns how many events wait for delivery to the bridge (the outbox depth).
func (db *Database) CountGatewayEvents(ctx context.Context) (int, error) {
	var n int
	err := db.own.QueryRow(ctx, `SELECT COUNT(*) FROM gateway_event WHERE delivered_at = 0`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("failed to count the outbox: %w", err)
	}
	return n, nil
}

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

// ExpireGatewayLate forgets events sent encrypted before the given time: their key never came.
func (db *Database) ExpireGatewayLate(ctx context.Context, before int64) error {
	if _, err := db.own.Exec(ctx, `DELETE FROM gateway_late WHERE created_at < $1`, before); err != nil {
		return fmt.Errorf("failed to expire events sent encrypted: %w", err)
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

// PutGatewayMedia records the (sealed) file info of an encrypted file the bridge may download.
func (db *Database) PutGatewayMedia(ctx context.Context, mediaID, sealed string) error {
	_, err := db.own.Exec(ctx, `INSERT INTO gateway_media (media_id, file_info, created_at) VALUES ($1, $2, $3)
		ON CONFLICT (media_id) DO NOTHING`, mediaID, sealed, db.nowMillis())
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
