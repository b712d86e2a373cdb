package e2ee

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/keybundle"
)

// This file holds every statement heirloom runs itself on a table of mautrix's SQL crypto store
// (on crypto_megolm_inbound_session, and on the device tables crypto_tracked_user and
// crypto_device); everything else goes through mautrix's own crypto.SQLCryptoStore methods. The
// statements are written for the tables as mautrix-go MautrixVersion creates them at crypto store
// schema CryptoStoreSchema (sql_store_upgrade); a test fails when that schema version changes, and
// round-trip tests read what these statements write back through mautrix's GetGroupSession.
//
// Since schema 23, crypto_megolm_inbound_session is keyed by (account_id, room_id, session_id):
// every copy of a session is held under the room it claims, and a copy claiming another room is
// another row. Every statement here names the room, so nothing a copy of one room claims can
// change, move, shadow or block a row of another. The room queries below read heirloom's own index
// on (account_id, room_id) (migrations 03 and 09), which gives a room's rows in the order they were
// written: through the primary key they would come in session ID order, from all over the table on
// SQLite, twice the time for a large bundle.
//
// Why not mautrix's methods: GetGroupSessionsForRoom unpickles every session serially (a key
// derivation each), which makes a 10,000-session bundle four times slower than reading the pickles
// here and exporting them on every core with PickleCipher; it has no query for withheld entries
// by room, and PutGroupSession writes one row per statement where an import writes 500.
//
// The statements of a bundle import (SessionInserter, InsertBundleWithheld) are written apart for
// SQLite and PostgreSQL; the round-trip tests run on both.
const (
	MautrixVersion    = "v0.33.0"
	CryptoStoreSchema = 23
)

// HeldSession is what a puppet's store holds for a session ID in a room.
type HeldSession struct {
	// HasKey is false for a withheld entry: a row that says the key was refused, with no key.
	HasKey bool
	// Direct is true for a key received from the session's own device (m.room_key, or the
	// puppet's own session), false for one imported on someone else's word.
	Direct bool
}

type heldSessionRow struct {
	sessionID id.SessionID
	HeldSession
}

// heldLookupChunk bounds the session IDs per HeldSessions statement.
const heldLookupChunk = 500

// HeldSessions returns the rows the puppet holds for the session IDs in the room, keyed by
// session ID. (GetGroupSession reads one, and cannot tell "not held" from a withheld entry
// without an error to unwrap.)
func (p *Puppet) HeldSessions(ctx context.Context, roomID id.RoomID, sessionIDs []id.SessionID) (map[id.SessionID]HeldSession, error) {
	out := make(map[id.SessionID]HeldSession, len(sessionIDs))
	for start := 0; start < len(sessionIDs); start += heldLookupChunk {
		chunk := sessionIDs[start:min(start+heldLookupChunk, len(sessionIDs))]
		args := make([]any, 0, len(chunk)+2)
		args = append(args, p.Store.AccountID, roomID)
		for _, sid := range chunk {
			args = append(args, sid)
		}
		rows, err := p.Store.DB.Query(ctx, `SELECT session_id, session IS NOT NULL, key_source FROM crypto_megolm_inbound_session
			WHERE account_id=$1 AND room_id=$2 AND session_id IN (`+placeholderList(3, len(chunk), '$')+`)`, args...)
		err = iterate(rows, err, func(row dbutil.Scannable) (h heldSessionRow, err error) {
			var source id.KeySource
			err = row.Scan(&h.sessionID, &h.HasKey, &source)
			h.Direct = source == id.KeySourceDirect || source == ""
			return
		}, func(h heldSessionRow) error {
			out[h.sessionID] = h.HeldSession
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("failed to look up held sessions: %w", err)
		}
	}
	return out, nil
}

// StoredSession is one inbound session row of a room as a key bundle needs it: what keybundle.Place
// decides on, and the session's pickle.
type StoredSession struct {
	keybundle.Held
	// Pickled is the session in goolm's pickle format (PickleCipher reads it).
	Pickled []byte
}

// roomRows selects the rows that the accounts hold for a room: the placeholders and arguments of
// "account_id IN (…) AND room_id=…", numbered from $first. A puppet's own bundle reads one account;
// a bundle pooled from a gateway's bridge users (pooled.go) plans with several at once, then reads
// account by account. Rows come in no particular order: a caller that merges several accounts'
// copies of a session must gather them itself.
func roomRows(first int, accounts []string, roomID id.RoomID) (string, []any) {
	args := make([]any, 0, len(accounts)+1)
	for _, a := range accounts {
		args = append(args, a)
	}
	args = append(args, roomID)
	return `account_id IN (` + placeholderList(first, len(accounts), '$') + `) AND room_id=$` + strconv.Itoa(first+len(accounts)), args
}

// EachWithheldEntry calls each, for the room, with every session the puppet holds a key for
// without shared history (its key is never read) and every m.history_not_shared entry (either
// name) the puppet imported from an accepted bundle (InsertBundleWithheld marks those with the
// bundle's sender as source_user): what keybundle.Place may put into a bundle's withheld list,
// read in one pass. mautrix keeps withheld entries as inbound-session rows with a withheld code and
// no session, and has no query for them by room.
func (p *Puppet) EachWithheldEntry(ctx context.Context, roomID id.RoomID, each func(keybundle.Held) error) error {
	return eachWithheldEntry(ctx, p.Store.DB, []string{p.Store.AccountID}, roomID, each)
}

func eachWithheldEntry(ctx context.Context, db *dbutil.Database, accounts []string, roomID id.RoomID, each func(keybundle.Held) error) error {
	where, args := roomRows(3, accounts, roomID)
	args = append([]any{keybundle.CodeHistoryNotShared, keybundle.CodeHistoryNotSharedUnstable}, args...)
	rows, err := db.Query(ctx, `
		SELECT session_id, sender_key, session IS NOT NULL, COALESCE(withheld_code, ''), COALESCE(withheld_reason, ''),
			source_user <> ''
		FROM crypto_megolm_inbound_session
		WHERE `+where+` AND (session IS NOT NULL AND shared_history IS NOT TRUE
			OR session IS NULL AND withheld_code IN ($1, $2) AND source_user <> '')`, args...)
	return iterate(rows, err, func(row dbutil.Scannable) (h keybundle.Held, err error) {
		var sessionID, senderKey string
		err = row.Scan(&sessionID, &senderKey, &h.HasKey, &h.Code, &h.Reason, &h.FromBundle)
		h.RoomID, h.SessionID, h.SenderKey = roomID, id.SessionID(sessionID), id.SenderKey(senderKey)
		return
	}, each)
}

// EachSharedSession calls each for every session of the room the puppet holds with shared
// history, with its pickle.
func (p *Puppet) EachSharedSession(ctx context.Context, roomID id.RoomID, each func(StoredSession) error) error {
	return eachSharedSession(ctx, p.Store.DB, []string{p.Store.AccountID}, roomID, each)
}

func eachSharedSession(ctx context.Context, db *dbutil.Database, accounts []string, roomID id.RoomID, each func(StoredSession) error) error {
	where, args := roomRows(1, accounts, roomID)
	rows, err := db.Query(ctx, `
		SELECT session_id, sender_key, COALESCE(signing_key, ''), session FROM crypto_megolm_inbound_session
		WHERE `+where+` AND session IS NOT NULL AND shared_history IS TRUE`, args...)
	return iterate(rows, err, func(row dbutil.Scannable) (st StoredSession, err error) {
		// Plain strings scan without reflection; the ID types are strings.
		var sessionID, senderKey, signingKey string
		err = row.Scan(&sessionID, &senderKey, &signingKey, &st.Pickled)
		st.Held = keybundle.Held{RoomID: roomID, SessionID: id.SessionID(sessionID), SenderKey: id.SenderKey(senderKey),
			SigningKey: id.Ed25519(signingKey), HasKey: true, SharedHistory: true}
		return
	}, each)
}

// CountRoomSessions counts the rows the puppet holds for the room, keys and withheld entries.
func (p *Puppet) CountRoomSessions(ctx context.Context, roomID id.RoomID) (int, error) {
	var n int
	err := p.Store.DB.QueryRow(ctx, `SELECT COUNT(*) FROM crypto_megolm_inbound_session WHERE account_id=$1 AND room_id=$2`,
		p.Store.AccountID, roomID).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("failed to count sessions: %w", err)
	}
	return n, nil
}

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
// LockSessionsExclusive. A session ID the puppet holds a row for already in the same room (a key
// or a withheld entry) is left alone and reported, for the caller to merge by the rules of
// StoreSessionInTxn; a row of another room is another key, never in the way. It does not mark the
// sessions received on the machine.
//
// On SQLite the shared columns are bound once per statement and each row binds its four own
// (INSERT … SELECT … FROM (VALUES …)), and the statement is INSERT OR IGNORE: its only constraint
// that can fail is the primary key (no value it writes is NULL), which ON CONFLICT DO NOTHING
// would skip alike, but a statement that may abort on a constraint keeps a statement journal (a
// copy of every page it changes, for a rollback of the statement alone), which is a third of a
// large import's SQLite time.
type SessionInserter struct {
	p      *Puppet
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
// like's (its Internal, ID and keys are ignored) in the transaction of ctx.
func (p *Puppet) NewSessionInserter(ctx context.Context, like *crypto.InboundGroupSession) (*SessionInserter, error) {
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
	si := &SessionInserter{p: p, stmts: make(map[int]*sql.Stmt), shared: []any{
		string(like.RoomID), strings.Join(forwardingChains, ","), like.SharedHistory, ratchetSafety, receivedAt,
		dbutil.NumPtr(like.MaxAge), dbutil.NumPtr(like.MaxMessages), like.IsScheduled, string(like.KeyBackupVersion),
		string(like.KeySource), string(like.SourceUser), p.Store.AccountID,
	}}
	// Only inside a transaction: a batch that fails halfway must take the others with it.
	txn, ok := p.Store.DB.Execable(ctx).(*dbutil.LoggingTxn)
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
	if si.p.Store.DB.Dialect == dbutil.SQLite {
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
// write, because the puppet holds a row for their session ID in the room.
func (si *SessionInserter) Insert(ctx context.Context, rows []NewSessionRow) (held []int, err error) {
	if len(rows) == 0 {
		return nil, nil
	}
	stmt, err := si.statement(ctx, len(rows))
	if err != nil {
		return nil, err
	}
	args := si.args[:0]
	if si.p.Store.DB.Dialect == dbutil.SQLite {
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
// finds these and never one that arrived over to-device. An entry for a session ID the puppet
// holds a row for changes nothing. (On SQLite as SessionInserter's statements: the shared columns
// bound once, and INSERT OR IGNORE.)
func (p *Puppet) InsertBundleWithheld(ctx context.Context, entries []keybundle.Withheld, sender id.UserID, receivedAt time.Time) error {
	if len(entries) == 0 {
		return nil
	}
	var query string
	var args []any
	if p.Store.DB.Dialect == dbutil.SQLite {
		const perRow, shared = 4, 5
		args = make([]any, 0, shared+perRow*len(entries))
		args = append(args, string(entries[0].RoomID), receivedAt.UTC(), string(id.KeySourceForward), string(sender), p.Store.AccountID)
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
				p.Store.AccountID)
		}
		query = `INSERT INTO crypto_megolm_inbound_session
				(session_id, sender_key, room_id, withheld_code, withheld_reason, received_at, key_source, source_user, account_id)
			VALUES ` + placeholderRowsFrom(len(entries), cols, 1, '$') + ` ON CONFLICT (account_id, room_id, session_id) DO NOTHING`
	}
	if _, err := p.Store.DB.Exec(ctx, query, args...); err != nil {
		return fmt.Errorf("failed to insert withheld entries: %w", err)
	}
	return nil
}

// deviceListState is what the shared device tables say of a user's device list.
type deviceListState struct {
	// Outdated is true once a device-list change was reported (or heirloom restarted) since the
	// list was last fetched.
	Outdated bool
	// Failures counts the fetches in a row that got no answer for the user (mautrix's
	// IncrementTrackedUsersErrorCount), the last at LastAttempt (Unix seconds).
	Failures    int
	LastAttempt int64
}

// dueAt returns when an outdated list is to be fetched again (Unix seconds): at once, unless five
// fetches in a row got no answer, then after failures³ seconds (at most three hours) from the
// last, as mautrix's GetOutdatedTrackedUsers waits.
func (st deviceListState) dueAt() int64 {
	if st.Failures < 5 {
		return 0
	}
	return st.LastAttempt + int64(min(st.Failures*st.Failures*st.Failures, 10800))
}

// deviceListStates returns the device-list state of each user heirloom tracks (has fetched the
// device list of: mautrix's crypto_tracked_user); users missing from the map were never fetched.
func (m *Manager) deviceListStates(ctx context.Context, users []id.UserID) (map[id.UserID]deviceListState, error) {
	out := make(map[id.UserID]deviceListState, len(users))
	for start := 0; start < len(users); start += heldLookupChunk {
		chunk := users[start:min(start+heldLookupChunk, len(users))]
		args := make([]any, len(chunk))
		for i, u := range chunk {
			args[i] = u
		}
		rows, err := m.shared.DB.Query(ctx, `SELECT user_id, devices_outdated, COALESCE(error_count, 0), COALESCE(last_attempt, 0)
			FROM crypto_tracked_user WHERE user_id IN (`+placeholderList(1, len(chunk), '$')+`)`, args...)
		err = iterate(rows, err, func(row dbutil.Scannable) (u trackedUser, err error) {
			err = row.Scan(&u.userID, &u.Outdated, &u.Failures, &u.LastAttempt)
			return
		}, func(u trackedUser) error {
			out[u.userID] = u.deviceListState
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("failed to read device list states: %w", err)
		}
	}
	return out, nil
}

type trackedUser struct {
	userID id.UserID
	deviceListState
}

// storedDevices returns the devices the shared tables hold for the users (those not deleted), as
// mautrix's GetDevices returns them, with one statement per 500 users instead of two per user.
// A user without a device has no entry.
func (m *Manager) storedDevices(ctx context.Context, users []id.UserID) (map[id.UserID]map[id.DeviceID]*id.Device, error) {
	out := make(map[id.UserID]map[id.DeviceID]*id.Device, len(users))
	for start := 0; start < len(users); start += heldLookupChunk {
		chunk := users[start:min(start+heldLookupChunk, len(users))]
		args := make([]any, len(chunk))
		for i, u := range chunk {
			args[i] = u
		}
		// As GetDevices: the devices of users whose list heirloom tracks (a puppet's own device is
		// stored untracked, and mautrix stops tracking a user after a hundred failed fetches).
		rows, err := m.shared.DB.Query(ctx, `SELECT d.user_id, d.device_id, d.identity_key, d.signing_key, d.trust, d.deleted, d.name
			FROM crypto_device d JOIN crypto_tracked_user t ON t.user_id=d.user_id
			WHERE d.user_id IN (`+placeholderList(1, len(chunk), '$')+`) AND d.deleted=false`, args...)
		err = iterate(rows, err, func(row dbutil.Scannable) (*id.Device, error) {
			var d id.Device
			err := row.Scan(&d.UserID, &d.DeviceID, &d.IdentityKey, &d.SigningKey, &d.Trust, &d.Deleted, &d.Name)
			return &d, err
		}, func(d *id.Device) error {
			if out[d.UserID] == nil {
				out[d.UserID] = make(map[id.DeviceID]*id.Device)
			}
			out[d.UserID][d.DeviceID] = d
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("failed to read devices: %w", err)
		}
	}
	return out, nil
}

// recipient is a device an outbound session may have been shared with, as mautrix records it.
type recipient struct {
	userID      id.UserID
	identityKey id.IdentityKey
}

// sharedWith returns which of the devices the outbound session was shared with: what mautrix's
// IsOutboundGroupSessionShared answers for each, in one statement per 100 devices instead of one
// per device. Each device is still a lookup of the primary key (user_id, identity_key,
// session_id): written as ORs of equalities, which SQLite and PostgreSQL answer from the index
// (SQLite 3.40, Debian 12's, scans the whole table for a row-value IN list instead, and the table
// grows with every session shared).
func (p *Puppet) sharedWith(ctx context.Context, sessionID id.SessionID, devices []recipient) (map[recipient]bool, error) {
	const perStatement = 100 // SQLite's expression depth limit is 1,000
	out := make(map[recipient]bool, len(devices))
	for start := 0; start < len(devices); start += perStatement {
		chunk := devices[start:min(start+perStatement, len(devices))]
		args := make([]any, 0, 1+2*len(chunk))
		args = append(args, sessionID)
		for _, d := range chunk {
			args = append(args, d.userID, d.identityKey)
		}
		rows, err := p.Store.DB.Query(ctx, sharedWithQuery(len(chunk)), args...)
		err = iterate(rows, err, func(row dbutil.Scannable) (r recipient, err error) {
			err = row.Scan(&r.userID, &r.identityKey)
			return
		}, func(r recipient) error {
			out[r] = true
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("failed to read the session's recipients: %w", err)
		}
	}
	return out, nil
}

// sharedWithQuery is sharedWith's statement for n devices: the session ID, then each device's
// user ID and identity key. identity_key is CHAR(43): PostgreSQL pads a shorter value with spaces
// on the way out.
func sharedWithQuery(n int) string {
	return `SELECT user_id, RTRIM(identity_key) FROM crypto_megolm_outbound_session_shared
		WHERE session_id=$1 AND (` + recipientConditions(n) + `)`
}

var recipientConditionsCache sync.Map // n → string

// recipientConditions returns "(user_id=$2 AND identity_key=$3) OR …" for n devices.
func recipientConditions(n int) string {
	if cached, ok := recipientConditionsCache.Load(n); ok {
		return cached.(string)
	}
	buf := make([]byte, 0, n*44)
	for i := range n {
		if i > 0 {
			buf = append(buf, " OR "...)
		}
		buf = append(buf, "(user_id=$"...)
		buf = strconv.AppendInt(buf, int64(2+2*i), 10)
		buf = append(buf, " AND identity_key=$"...)
		buf = strconv.AppendInt(buf, int64(3+2*i), 10)
		buf = append(buf, ')')
	}
	recipientConditionsCache.Store(n, string(buf))
	return string(buf)
}

// MarkDeviceListsOutdated marks the device list of every user heirloom tracks outdated, so that
// each is fetched again before a room key is next shared with them.
func (m *Manager) MarkDeviceListsOutdated(ctx context.Context) error {
	if _, err := m.shared.DB.Exec(ctx, `UPDATE crypto_tracked_user SET devices_outdated=true`); err != nil {
		return fmt.Errorf("failed to mark device lists outdated: %w", err)
	}
	return nil
}

// iterate scans each row with scan and hands it to each, closing the rows whatever happens.
func iterate[T any](rows dbutil.Rows, err error, scan dbutil.ConvertRowFn[T], each func(T) error) error {
	return dbutil.NewRowIterWithError(rows, scan, err).Iter(func(item T) (bool, error) {
		if err := each(item); err != nil {
			return false, err
		}
		return true, nil
	})
}

// placeholderList returns "$first,…,$(first+n-1)", with mark for '$'.
func placeholderList(first, n int, mark byte) string {
	return string(appendPlaceholders(make([]byte, 0, n*5), first, n, mark))
}

func appendPlaceholders(buf []byte, first, n int, mark byte) []byte {
	for i := range n {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, mark)
		buf = strconv.AppendInt(buf, int64(first+i), 10)
	}
	return buf
}

var placeholderCache sync.Map // placeholderShape → string

type placeholderShape struct {
	rows, cols, first int
	mark              byte
}

// placeholderRowsFrom returns "($first,…),(…)" for rows rows of cols placeholders, numbered on
// from first, with mark for '$'; built once per shape.
func placeholderRowsFrom(rows, cols, first int, mark byte) string {
	key := placeholderShape{rows, cols, first, mark}
	if cached, ok := placeholderCache.Load(key); ok {
		return cached.(string)
	}
	buf := make([]byte, 0, rows*cols*6)
	for r := range rows {
		if r > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, '(')
		buf = appendPlaceholders(buf, first+r*cols, cols, mark)
		buf = append(buf, ')')
	}
	placeholderCache.Store(key, string(buf))
	return string(buf)
}
