package database

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// The queries of gateway mode's outbox: the events bound for the bridge, in the order the
// homeserver delivered them, and the transactions composed of them. Which events may go when is
// the gateway's rule (package gateway); these only store and read.

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
	// Body is the event as the bridge gets it (JSON); empty in the heads GatewayOutboxHeads reads.
	Body string
	// Original is the event as the homeserver sent it when Body is heirloom's decrypted copy, ""
	// when Body is as it arrived. FellBack marks an event whose decrypted copy the bridge refused
	// every time: Body is then the event as it arrived, and Original the decrypted copy (an
	// operator's resend delivers it again).
	Original string
	FellBack bool
	// Size is the bytes of Body and Original.
	Size int64
	// Waiting marks an encrypted event whose key had not arrived: it holds back its room's
	// events until WaitUntil (unix ms), then goes on still encrypted.
	Waiting   bool
	SessionID id.SessionID
	WaitUntil int64
	TxnID     int64
	// ReceivedAt is when heirloom stored it (unix ms).
	ReceivedAt int64
	// Solo marks an event of a transaction the bridge refused: it goes alone from then on.
	Solo bool
	// Refusals counts the bridge's refusals of the event alone; after one, it holds back its room
	// until RetryAt (unix ms).
	Refusals int
	RetryAt  int64
	// DeadAt is when the event was set aside (a dead letter), 0 if it was not.
	DeadAt    int64
	LastError string
}

// gatewaySeq serialises the choice of sequence numbers; one heirloom process owns the outbox.
var gatewaySeq sync.Mutex

// PutGatewayEvents stores events bound for the bridge, in order, after those already stored. An
// event whose key is stored already, waiting or delivered in the last day, is left as it is (a
// transaction the homeserver sent again): only the events stored get their Seq set. An event with
// DeadAt set is stored set aside (a dead letter, with LastError), to be delivered only on an
// operator's request.
func (db *Database) PutGatewayEvents(ctx context.Context, events []*GatewayEvent) error {
	if len(events) == 0 {
		return nil
	}
	gatewaySeq.Lock()
	defer gatewaySeq.Unlock()
	return db.doTxn(ctx, func(ctx context.Context) error {
		var next int64
		if err := db.own.QueryRow(ctx, `SELECT COALESCE(MAX(seq), 0) FROM gateway_event`).Scan(&next); err != nil {
			return fmt.Errorf("failed to read the outbox position: %w", err)
		}
		now := db.nowMillis()
		for _, e := range events {
			next++
			e.Size = int64(len(e.Body) + len(e.Original))
			res, err := db.own.Exec(ctx, `
				INSERT INTO gateway_event (seq, event_key, event_id, room_id, kind, body, original, size, waiting, session_id, wait_until,
					received_at, dead_at, last_error)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (event_key) DO NOTHING`,
				next, e.Key, e.EventID, e.RoomID, e.Kind, e.Body, e.Original, e.Size, e.Waiting, e.SessionID, e.WaitUntil, now,
				e.DeadAt, e.LastError)
			if err != nil {
				return fmt.Errorf("failed to store event for the bridge: %w", err)
			}
			if n, _ := res.RowsAffected(); n == 1 {
				e.Seq, e.ReceivedAt = next, now
			} else {
				next--
			}
		}
		return nil
	})
}

const gatewayEventColumns = `seq, event_key, event_id, room_id, kind, body, original, fell_back, size, waiting, session_id, wait_until,
	txn_id, received_at, solo, refusals, retry_at, dead_at, last_error`

// gatewayEventHeadColumns are gatewayEventColumns without the bodies.
var gatewayEventHeadColumns = strings.Replace(gatewayEventColumns, "body, original,", "'', '',", 1)

func scanGatewayEvent(row dbutil.Scannable) (*GatewayEvent, error) {
	var e GatewayEvent
	err := row.Scan(&e.Seq, &e.Key, &e.EventID, &e.RoomID, &e.Kind, &e.Body, &e.Original, &e.FellBack, &e.Size, &e.Waiting, &e.SessionID,
		&e.WaitUntil, &e.TxnID, &e.ReceivedAt, &e.Solo, &e.Refusals, &e.RetryAt, &e.DeadAt, &e.LastError)
	return &e, err
}

// GatewayOutboxHeads returns up to limit events after afterSeq that are in no transaction and
// not set aside, in order: what the gateway composes its next transaction from. Only their
// sequence number, room, size, and what holds them back are read.
func (db *Database) GatewayOutboxHeads(ctx context.Context, afterSeq int64, limit int) ([]*GatewayEvent, error) {
	// Only columns of gateway_event_heads_idx: the scan never reads an event's body.
	rows, err := db.own.Query(ctx, `SELECT seq, room_id, size, waiting, wait_until, solo, refusals, retry_at FROM gateway_event
		WHERE txn_id=0 AND dead_at=0 AND seq>$1 ORDER BY txn_id, seq LIMIT $2`, afterSeq, limit)
	return listOf(rows, err, func(row dbutil.Scannable) (*GatewayEvent, error) {
		var e GatewayEvent
		return &e, row.Scan(&e.Seq, &e.RoomID, &e.Size, &e.Waiting, &e.WaitUntil, &e.Solo, &e.Refusals, &e.RetryAt)
	}, "read the outbox")
}

// GatewayTxn is a transaction composed for the bridge and not yet acknowledged by it.
type GatewayTxn struct {
	ID          int64
	Attempts    int
	NextAttempt int64
	LastError   string
	// Refusals counts the attempts the bridge refused (rather than being down).
	Refusals int
	Events   []*GatewayEvent
}

// PendingGatewayTxn returns the oldest composed transaction the bridge has not acknowledged, with
// its events in order, or nil.
func (db *Database) PendingGatewayTxn(ctx context.Context) (*GatewayTxn, error) {
	var txn GatewayTxn
	err := db.own.QueryRow(ctx, `SELECT txn_id, attempts, next_attempt, last_error, refusals FROM gateway_txn ORDER BY txn_id LIMIT 1`).
		Scan(&txn.ID, &txn.Attempts, &txn.NextAttempt, &txn.LastError, &txn.Refusals)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("failed to read the pending bridge transaction: %w", err)
	}
	rows, err := db.own.Query(ctx, `SELECT `+gatewayEventColumns+` FROM gateway_event WHERE txn_id=$1 ORDER BY seq`, txn.ID)
	if txn.Events, err = listOf(rows, err, scanGatewayEvent, "read the pending bridge transaction's events"); err != nil {
		return nil, err
	}
	return &txn, nil
}

// NextGatewayTxnID numbers a bridge transaction. Transaction IDs never repeat.
func (db *Database) NextGatewayTxnID(ctx context.Context) (int64, error) {
	var id int64
	err := db.own.QueryRow(ctx, `
		INSERT INTO gateway_counter (name, value) VALUES ('bridge_txn', 1)
		ON CONFLICT (name) DO UPDATE SET value=gateway_counter.value+1 RETURNING value`).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("failed to number the bridge transaction: %w", err)
	}
	return id, nil
}

// CreateGatewayTxn puts the events with the given sequence numbers (in no transaction, not set
// aside) into a new transaction, in order, and returns it. late is called, in the same database
// transaction, for each of them that still waits for its key: it goes on as it is.
func (db *Database) CreateGatewayTxn(ctx context.Context, seqs []int64, now int64, late func(ctx context.Context, e *GatewayEvent) error) (*GatewayTxn, error) {
	var txn *GatewayTxn
	err := db.doTxn(ctx, func(ctx context.Context) error {
		id, err := db.NextGatewayTxnID(ctx)
		if err != nil {
			return err
		}
		if _, err = db.own.Exec(ctx, `INSERT INTO gateway_txn (txn_id, created_at) VALUES ($1, $2)`, id, now); err != nil {
			return fmt.Errorf("failed to record the bridge transaction: %w", err)
		}
		txn = &GatewayTxn{ID: id}
		for _, seq := range seqs {
			e, err := scanGatewayEvent(db.own.QueryRow(ctx, `SELECT `+gatewayEventColumns+` FROM gateway_event
				WHERE seq=$1 AND txn_id=0 AND dead_at=0`, seq))
			if errors.Is(err, sql.ErrNoRows) {
				continue // resolved, delivered or set aside meanwhile
			} else if err != nil {
				return fmt.Errorf("failed to read an event for the bridge transaction: %w", err)
			}
			if e.Waiting && late != nil {
				if err = late(ctx, e); err != nil {
					return err
				}
			}
			if _, err = db.own.Exec(ctx, `UPDATE gateway_event SET txn_id=$2, waiting=false WHERE seq=$1`, seq, id); err != nil {
				return fmt.Errorf("failed to put an event into the bridge transaction: %w", err)
			}
			e.TxnID, e.Waiting = id, false
			txn.Events = append(txn.Events, e)
		}
		return nil
	})
	return txn, err
}

// FinishGatewayTxn forgets a transaction the bridge acknowledged, and its events' bodies (their
// keys stay until PruneGatewayDelivered).
func (db *Database) FinishGatewayTxn(ctx context.Context, txnID int64) error {
	return db.doTxn(ctx, func(ctx context.Context) error {
		if _, err := db.own.Exec(ctx, `UPDATE gateway_event SET body='', delivered_at=$2 WHERE txn_id=$1`, txnID, db.nowMillis()); err != nil {
			return fmt.Errorf("failed to forget delivered events: %w", err)
		}
		return db.deleteGatewayTxn(ctx, txnID)
	})
}

func (db *Database) deleteGatewayTxn(ctx context.Context, txnID int64) error {
	if _, err := db.own.Exec(ctx, `DELETE FROM gateway_txn WHERE txn_id=$1`, txnID); err != nil {
		return fmt.Errorf("failed to forget a bridge transaction: %w", err)
	}
	return nil
}

// RetryGatewayTxn records a failed delivery (a refusal of the bridge's, if refused) and when to
// try again.
func (db *Database) RetryGatewayTxn(ctx context.Context, txnID int64, nextAttempt int64, reason string, refused bool) error {
	refusal := 0
	if refused {
		refusal = 1
	}
	_, err := db.own.Exec(ctx, `UPDATE gateway_txn SET attempts=attempts+1, next_attempt=$2, last_error=$3, refusals=refusals+$4
		WHERE txn_id=$1`, txnID, nextAttempt, reason, refusal)
	if err != nil {
		return fmt.Errorf("failed to record a failed delivery: %w", err)
	}
	return nil
}

// SplitGatewayTxn dissolves a transaction the bridge refused: its events leave it, to go alone
// in transactions of their own (Solo).
func (db *Database) SplitGatewayTxn(ctx context.Context, txnID int64, reason string) error {
	return db.doTxn(ctx, func(ctx context.Context) error {
		if _, err := db.own.Exec(ctx, `UPDATE gateway_event SET txn_id=0, solo=true, last_error=$2 WHERE txn_id=$1`, txnID, reason); err != nil {
			return fmt.Errorf("failed to split a refused transaction: %w", err)
		}
		return db.deleteGatewayTxn(ctx, txnID)
	})
}

// FallBackGatewayEvent records that the bridge refused the decrypted copy of an event alone (in the
// transaction txnID, which is dissolved) every time: the event as it arrived goes next, alone, and
// the decrypted copy is kept for an operator's resend.
func (db *Database) FallBackGatewayEvent(ctx context.Context, txnID, seq int64, reason string) error {
	return db.doTxn(ctx, func(ctx context.Context) error {
		_, err := db.own.Exec(ctx, `UPDATE gateway_event SET txn_id=0, solo=true, refusals=refusals+1, retry_at=0, last_error=$2,
			body=original, original=body, fell_back=true WHERE seq=$1 AND original<>'' AND NOT fell_back`, seq, reason)
		if err != nil {
			return fmt.Errorf("failed to record a refused decrypted event: %w", err)
		}
		return db.deleteGatewayTxn(ctx, txnID)
	})
}

// RefuseGatewayEvent records that the bridge refused the event alone (in the transaction txnID,
// which is dissolved): it holds back its room until retryAt, or is set aside now (dead) if aside
// is set.
func (db *Database) RefuseGatewayEvent(ctx context.Context, txnID, seq, retryAt int64, reason string, aside bool) error {
	deadAt := int64(0)
	if aside {
		deadAt = db.nowMillis()
	}
	return db.doTxn(ctx, func(ctx context.Context) error {
		_, err := db.own.Exec(ctx, `UPDATE gateway_event SET txn_id=0, solo=true, refusals=refusals+1, retry_at=$2, last_error=$3, dead_at=$4
			WHERE seq=$1`, seq, retryAt, reason, deadAt)
		if err != nil {
			return fmt.Errorf("failed to record a refused event: %w", err)
		}
		return db.deleteGatewayTxn(ctx, txnID)
	})
}

// GatewayDeadLetters returns up to limit events set aside (most recent first), without their
// bodies, and how many there are.
func (db *Database) GatewayDeadLetters(ctx context.Context, limit int) ([]*GatewayEvent, int, error) {
	var n int
	if err := db.own.QueryRow(ctx, `SELECT COUNT(*) FROM gateway_event WHERE delivered_at=0 AND dead_at>0`).Scan(&n); err != nil {
		return nil, 0, fmt.Errorf("failed to count the events set aside: %w", err)
	}
	rows, err := db.own.Query(ctx, `SELECT `+gatewayEventHeadColumns+` FROM gateway_event
		WHERE delivered_at=0 AND dead_at>0 ORDER BY dead_at DESC, seq DESC LIMIT $1`, limit)
	out, err := listOf(rows, err, scanGatewayEvent, "read the events set aside")
	return out, n, err
}

// GatewayDeadLetterSize returns how many events are set aside, and their bytes.
func (db *Database) GatewayDeadLetterSize(ctx context.Context) (int, int64, error) {
	var n int
	var size int64
	err := db.own.QueryRow(ctx, `SELECT COUNT(*), COALESCE(SUM(size), 0) FROM gateway_event WHERE delivered_at=0 AND dead_at>0`).Scan(&n, &size)
	if err != nil {
		return 0, 0, fmt.Errorf("failed to measure the events set aside: %w", err)
	}
	return n, size, nil
}

// TrimGatewayDeadLetters forgets the events set aside longest ago until the others hold at most
// maxBytes, and returns them (without bodies).
func (db *Database) TrimGatewayDeadLetters(ctx context.Context, maxBytes int64) ([]*GatewayEvent, error) {
	var out []*GatewayEvent
	err := db.doTxn(ctx, func(ctx context.Context) error {
		rows, err := db.own.Query(ctx, `SELECT `+gatewayEventHeadColumns+` FROM gateway_event
			WHERE delivered_at=0 AND dead_at>0 ORDER BY dead_at DESC, seq DESC`)
		all, err := listOf(rows, err, scanGatewayEvent, "read the events set aside")
		if err != nil {
			return err
		}
		var kept int64
		for _, e := range all {
			if kept += e.Size; kept > maxBytes {
				out = append(out, e)
			}
		}
		for _, e := range out {
			if _, err = db.own.Exec(ctx, `DELETE FROM gateway_event WHERE seq=$1 AND dead_at>0 AND delivered_at=0`, e.Seq); err != nil {
				return fmt.Errorf("failed to forget an event set aside: %w", err)
			}
		}
		return nil
	})
	return out, err
}

// RequeueGatewayDeadLetters puts events set aside back in the outbox, each to go alone, in its
// place: the one with the event ID (or key) given, or all of them if it is "". An event that fell
// back to its form as it arrived goes decrypted again. It returns how many.
func (db *Database) RequeueGatewayDeadLetters(ctx context.Context, eventID string) (int, error) {
	res, err := db.own.Exec(ctx, `UPDATE gateway_event SET dead_at=0, refusals=0, retry_at=0, solo=true,
			body=CASE WHEN fell_back THEN original ELSE body END, original=CASE WHEN fell_back THEN body ELSE original END, fell_back=false
		WHERE delivered_at=0 AND dead_at>0 AND ($1='' OR event_id=$1 OR event_key=$1)`, eventID)
	if err != nil {
		return 0, fmt.Errorf("failed to requeue events set aside: %w", err)
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// PruneGatewayDeadLetters forgets events set aside before the given time (unix ms) and returns
// them (without bodies).
func (db *Database) PruneGatewayDeadLetters(ctx context.Context, before int64) ([]*GatewayEvent, error) {
	var out []*GatewayEvent
	err := db.doTxn(ctx, func(ctx context.Context) error {
		rows, err := db.own.Query(ctx, `SELECT `+gatewayEventHeadColumns+` FROM gateway_event
			WHERE delivered_at=0 AND dead_at>0 AND dead_at<$1`, before)
		if out, err = listOf(rows, err, scanGatewayEvent, "read expired events set aside"); err != nil {
			return err
		}
		if _, err = db.own.Exec(ctx, `DELETE FROM gateway_event WHERE delivered_at=0 AND dead_at>0 AND dead_at<$1`, before); err != nil {
			return fmt.Errorf("failed to prune events set aside: %w", err)
		}
		return nil
	})
	return out, err
}

// WaitingGatewayEvents returns the events not yet delivered that wait for a key of the session.
func (db *Database) WaitingGatewayEvents(ctx context.Context, sessionID id.SessionID) ([]*GatewayEvent, error) {
	rows, err := db.own.Query(ctx, `SELECT `+gatewayEventColumns+` FROM gateway_event WHERE session_id=$1 AND waiting AND txn_id=0 ORDER BY seq`,
		sessionID)
	return listOf(rows, err, scanGatewayEvent, "read events waiting for a key")
}

// ResolveGatewayEvent ends a waiting event's wait with body (its decrypted form, with original the
// event as it arrived; or the event as it is, with original ""): it goes on in order. It changes
// nothing if the event went into a transaction meanwhile.
func (db *Database) ResolveGatewayEvent(ctx context.Context, seq int64, body, original string) (bool, error) {
	res, err := db.own.Exec(ctx, `UPDATE gateway_event SET body=$2, original=$3, size=$4, waiting=false WHERE seq=$1 AND waiting AND txn_id=0`,
		seq, body, original, len(body)+len(original))
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

// GatewayOutboxSize returns how many events wait for delivery to the bridge (stored, not yet
// acknowledged, not set aside: the outbox depth), and their bytes.
func (db *Database) GatewayOutboxSize(ctx context.Context) (int, int64, error) {
	var n int
	var size int64
	err := db.own.QueryRow(ctx, `SELECT COUNT(*), COALESCE(SUM(size), 0) FROM gateway_event WHERE delivered_at=0 AND dead_at=0`).Scan(&n, &size)
	if err != nil {
		return 0, 0, fmt.Errorf("failed to measure the outbox: %w", err)
	}
	return n, size, nil
}

// GatewayRoomBytes returns the bytes of the room's events waiting for delivery to the bridge
// (stored, not yet acknowledged, not set aside): its part of the outbox.
func (db *Database) GatewayRoomBytes(ctx context.Context, roomID id.RoomID) (int64, error) {
	var size int64
	err := db.own.QueryRow(ctx, `SELECT COALESCE(SUM(size), 0) FROM gateway_event WHERE room_id=$1 AND delivered_at=0 AND dead_at=0`,
		roomID).Scan(&size)
	if err != nil {
		return 0, fmt.Errorf("failed to measure the room's part of the outbox: %w", err)
	}
	return size, nil
}

// GatewayOutboxExcess returns the bytes the rooms holding more than share bytes of the outbox
// hold beyond it.
func (db *Database) GatewayOutboxExcess(ctx context.Context, share int64) (int64, error) {
	var excess int64
	err := db.own.QueryRow(ctx, `SELECT COALESCE(SUM(held - $1), 0) FROM (SELECT SUM(size) AS held FROM gateway_event
		WHERE delivered_at=0 AND dead_at=0 GROUP BY room_id) AS rooms WHERE held > $1`, share).Scan(&excess)
	if err != nil {
		return 0, fmt.Errorf("failed to measure the rooms' parts of the outbox: %w", err)
	}
	return excess, nil
}

// GatewayRoomsSetAside returns the rooms with an event set aside since the given time (unix ms) and
// not delivered again.
func (db *Database) GatewayRoomsSetAside(ctx context.Context, since int64) (map[id.RoomID]bool, error) {
	rows, err := db.own.Query(ctx, `SELECT DISTINCT room_id FROM gateway_event WHERE delivered_at=0 AND dead_at>=$1 AND dead_at>0
		AND room_id<>''`, since)
	list, err := listOf(rows, err, func(row dbutil.Scannable) (id.RoomID, error) {
		var roomID id.RoomID
		return roomID, row.Scan(&roomID)
	}, "read the rooms with events set aside")
	if err != nil {
		return nil, err
	}
	out := make(map[id.RoomID]bool, len(list))
	for _, roomID := range list {
		out[roomID] = true
	}
	return out, nil
}

// CountGatewayEvents returns how many events wait for delivery to the bridge (the outbox depth).
func (db *Database) CountGatewayEvents(ctx context.Context) (int, error) {
	n, _, err := db.GatewayOutboxSize(ctx)
	return n, err
}
