package cryptostore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/keybundle"
)

// NewSessionRow is one new inbound session for a SessionInserter: its keys and its pickle.
type NewSessionRow struct {
	SessionID  id.SessionID
	SenderKey  id.SenderKey
	SigningKey id.Ed25519
	// Pickle is the session pickled with the store's pickle key (PickleCipher.Pickle).
	Pickle []byte
}

// SessionInserter writes new inbound sessions that share every column but their keys and pickle
// (a bundle import's: room, forwarding chain, history flag, time received, limits, source), each row
// as mautrix's PutGroupSession would write the session, one statement per batch. It runs inside the
// caller's transaction, whose statements it prepares once (NewSessionInserter), and under
// e2ee's Puppet.LockSessionsExclusive. A session ID the account holds a row for already in the same
// room (a key or a withheld entry) is left alone and reported, for the caller to merge by the rules
// of e2ee's Puppet.StoreSessionInTxn; a row of another room is another key, never in the way.
// It does not mark the sessions received on the machine.
//
// On SQLite the shared columns are bound once per statement and each row binds its four own
// (INSERT … SELECT … FROM (VALUES …)), and the statement is INSERT OR IGNORE: its only constraint
// that can fail is the primary key (no value it writes is NULL), which ON CONFLICT DO NOTHING
// would skip alike, but a statement that may abort on a constraint keeps a statement journal (a
// copy of every page it changes, for a rollback of the statement alone), which is a third of a
// large import's SQLite time.
type SessionInserter struct {
	db     *dbutil.Database
	shared []any // the shared columns' values, in sharedSessionColumns' order
	tx     preparer
	stmts  map[int]*sql.Stmt // by rows per statement
	ids    []byte            // the session IDs a statement returned, one after the other
	ends   []int
	args   []any // a statement's arguments, reused
}

// preparer is what prepares the inserter's statements: the transaction, or the database outside one.
type preparer interface {
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
}

// sharedSessionColumns are the columns every row of a SessionInserter has in common, in order.
const sharedSessionColumns = `room_id, forwarding_chains, shared_history, ratchet_safety, received_at, max_age,
	max_messages, is_scheduled, key_backup_version, key_source, source_user, account_id`

// NewSessionInserter starts writing new sessions whose columns, but for their keys and pickle, are
// like's (its Internal, ID and keys are ignored), as the account's, in the transaction of ctx.
func NewSessionInserter(ctx context.Context, db *dbutil.Database, account string, like *crypto.InboundGroupSession) (*SessionInserter, error) {
	forwardingChains := like.ForwardingChains
	if forwardingChains == nil {
		forwardingChains = []string{}
	}
	ratchetSafety, err := json.Marshal(&like.RatchetSafety)
	if err != nil {
		return nil, fmt.Errorf("failed to encode ratchet safety: %w", err)
	}
	// The values, and NULLs, PutGroupSession writes.
	var receivedAt *time.Time
	if !like.ReceivedAt.IsZero() {
		receivedAt = &like.ReceivedAt
	}
	si := &SessionInserter{db: db, stmts: make(map[int]*sql.Stmt), shared: []any{
		string(like.RoomID), strings.Join(forwardingChains, ","), like.SharedHistory, ratchetSafety, receivedAt,
		dbutil.NumPtr(like.MaxAge), dbutil.NumPtr(like.MaxMessages), like.IsScheduled, string(like.KeyBackupVersion),
		string(like.KeySource), string(like.SourceUser), account,
	}}
	// Only inside a transaction: a batch that fails halfway must take the others with it.
	txn, ok := db.Execable(ctx).(*dbutil.LoggingTxn)
	if !ok {
		return nil, errors.New("the session inserter needs a database transaction in its context")
	}
	si.tx = txn.UnderlyingTx
	return si, nil
}

// statement returns the prepared statement for n rows.
func (si *SessionInserter) statement(ctx context.Context, n int) (*sql.Stmt, error) {
	if stmt := si.stmts[n]; stmt != nil {
		return stmt, nil
	}
	var query string
	if si.db.Dialect == dbutil.SQLite {
		const perRow, shared = 4, 12
		query = `INSERT OR IGNORE INTO crypto_megolm_inbound_session (session_id, sender_key, signing_key, session,
			` + sharedSessionColumns + `)
			SELECT column1, column2, column3, column4, ` + placeholderList(1, shared, '?') + `
			FROM (VALUES ` + placeholderRowsFrom(n, perRow, shared+1, '?') + `) RETURNING session_id`
	} else {
		const cols = 16
		query = `INSERT INTO crypto_megolm_inbound_session (session_id, sender_key, signing_key, session,
			` + sharedSessionColumns + `)
			VALUES ` + placeholderRowsFrom(n, cols, 1, '$') + `
			ON CONFLICT (account_id, room_id, session_id) DO NOTHING RETURNING session_id`
	}
	stmt, err := si.tx.PrepareContext(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("failed to prepare session insert: %w", err)
	}
	si.stmts[n] = stmt
	return stmt, nil
}

// Insert writes the rows (of distinct session IDs) and returns the indexes of those it did not
// write, because the account holds a row for their session ID in the room.
func (si *SessionInserter) Insert(ctx context.Context, rows []NewSessionRow) (held []int, err error) {
	if len(rows) == 0 {
		return nil, nil
	}
	stmt, err := si.statement(ctx, len(rows))
	if err != nil {
		return nil, err
	}
	args := si.args[:0]
	if si.db.Dialect == dbutil.SQLite {
		args = append(args, si.shared...)
		for _, r := range rows {
			args = append(args, string(r.SessionID), string(r.SenderKey), string(r.SigningKey), r.Pickle)
		}
	} else {
		for _, r := range rows {
			args = append(args, string(r.SessionID), string(r.SenderKey), string(r.SigningKey), r.Pickle)
			args = append(args, si.shared...)
		}
	}
	defer func() { clear(args); si.args = args[:0] }() // reused, without holding on to the pickles
	result, err := stmt.QueryContext(ctx, args...)
	if err != nil {
		return nil, fmt.Errorf("failed to insert sessions: %w", err)
	}
	// The IDs written, one after the other, ends[i] where the i-th ends: a batch's rows are
	// nearly always all written, and then no ID needs a string of its own.
	si.ids, si.ends = si.ids[:0], si.ends[:0]
	for result.Next() {
		var sessionID sql.RawBytes
		if err = result.Scan(&sessionID); err != nil {
			break
		}
		si.ids = append(si.ids, sessionID...)
		si.ends = append(si.ends, len(si.ids))
	}
	if err == nil {
		err = result.Err()
	}
	if closeErr := result.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return nil, fmt.Errorf("failed to insert sessions: %w", err)
	}
	if len(si.ends) == len(rows) {
		return nil, nil
	}
	written := make(map[string]struct{}, len(si.ends))
	start := 0
	for _, end := range si.ends {
		written[string(si.ids[start:end])] = struct{}{}
		start = end
	}
	for i, r := range rows {
		if _, ok := written[string(r.SessionID)]; !ok {
			held = append(held, i)
		}
	}
	return held, nil
}

// Close releases the prepared statements.
func (si *SessionInserter) Close() {
	for _, stmt := range si.stmts {
		_ = stmt.Close()
	}
	clear(si.stmts)
}

// InsertBundleWithheld writes withheld entries of a bundle from sender, as mautrix's
// PutWithheldGroupSession would but marked with sender as source_user, so that EachWithheldEntry
// finds these and never one that arrived over to-device. An entry for a session ID the account
// holds a row for changes nothing. (On SQLite as SessionInserter's statements: the shared columns
// bound once, and INSERT OR IGNORE.)
func InsertBundleWithheld(ctx context.Context, db *dbutil.Database, account string, entries []keybundle.Withheld, sender id.UserID, receivedAt time.Time) error {
	if len(entries) == 0 {
		return nil
	}
	var query string
	var args []any
	if db.Dialect == dbutil.SQLite {
		const perRow, shared = 4, 5
		args = make([]any, 0, shared+perRow*len(entries))
		args = append(args, string(entries[0].RoomID), receivedAt.UTC(), string(id.KeySourceForward), string(sender), account)
		for _, c := range entries {
			if c.RoomID != entries[0].RoomID {
				return errors.New("withheld entries of more than one room")
			}
			args = append(args, string(c.SessionID), string(c.SenderKey), c.Code, c.Reason)
		}
		query = `INSERT OR IGNORE INTO crypto_megolm_inbound_session
				(session_id, sender_key, withheld_code, withheld_reason, room_id, received_at, key_source, source_user, account_id)
			SELECT column1, column2, column3, column4, $1, $2, $3, $4, $5
			FROM (VALUES ` + placeholderRowsFrom(len(entries), perRow, shared+1, '$') + `)`
	} else {
		const cols = 9
		args = make([]any, 0, len(entries)*cols)
		for _, c := range entries {
			args = append(args, c.SessionID, c.SenderKey, c.RoomID, c.Code, c.Reason, receivedAt.UTC(), id.KeySourceForward, sender,
				account)
		}
		query = `INSERT INTO crypto_megolm_inbound_session
				(session_id, sender_key, room_id, withheld_code, withheld_reason, received_at, key_source, source_user, account_id)
			VALUES ` + placeholderRowsFrom(len(entries), cols, 1, '$') + ` ON CONFLICT (account_id, room_id, session_id) DO NOTHING`
	}
	if _, err := db.Exec(ctx, query, args...); err != nil {
		return fmt.Errorf("failed to insert withheld entries: %w", err)
	}
	return nil
}
