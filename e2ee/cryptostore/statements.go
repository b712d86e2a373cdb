package cryptostore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/keybundle"
)

// statements.go, inserter.go and devices.go hold every statement heirloom runs itself on a table of
// mautrix's SQL crypto store (on crypto_megolm_inbound_session, on
// crypto_megolm_outbound_session_shared, and on the device tables crypto_tracked_user and
// crypto_device); everything else goes through mautrix's own crypto.SQLCryptoStore methods. The
// statements are written for the tables as mautrix-go mautrixVersion creates them at crypto store
// schema CryptoStoreSchema (sql_store_upgrade); a test fails when that schema version changes, and
// round-trip tests (package e2ee) read what these statements write back through mautrix's
// GetGroupSession.
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
	mautrixVersion    = "v0.33.0"
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

// heldLookupChunk bounds the session IDs, users or accounts per statement.
const heldLookupChunk = 500

// HeldSessions returns the rows the account holds for the session IDs in the room, keyed by
// session ID. (GetGroupSession reads one, and cannot tell "not held" from a withheld entry
// without an error to unwrap.)
func HeldSessions(ctx context.Context, db *dbutil.Database, account string, roomID id.RoomID, sessionIDs []id.SessionID) (map[id.SessionID]HeldSession, error) {
	held, err := queryMap(ctx, db, `SELECT session_id, session IS NOT NULL, key_source FROM crypto_megolm_inbound_session
		WHERE account_id=$1 AND room_id=$2 AND session_id IN (`+inList+`)`, []any{account, roomID}, sessionIDs,
		func(row dbutil.Scannable) (sessionID id.SessionID, h HeldSession, err error) {
			var source id.KeySource
			err = row.Scan(&sessionID, &h.HasKey, &source)
			h.Direct = source == id.KeySourceDirect || source == ""
			return
		})
	if err != nil {
		return nil, fmt.Errorf("failed to look up held sessions: %w", err)
	}
	return held, nil
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

// EachWithheldEntry calls each, for the room, with every session the accounts hold a key for
// without shared history (its key is never read) and every m.history_not_shared entry (either
// name) they imported from an accepted bundle (InsertBundleWithheld marks those as forwarded, with
// the bundle's sender as source_user; PutDeviceWithheld marks a device's own as direct): what keybundle.Place may put into a bundle's withheld list,
// read in one pass. mautrix keeps withheld entries as inbound-session rows with a withheld code and
// no session, and has no query for them by room.
func EachWithheldEntry(ctx context.Context, db *dbutil.Database, accounts []string, roomID id.RoomID, each func(keybundle.Held) error) error {
	where, args := roomRows(3, accounts, roomID)
	args = append([]any{keybundle.CodeHistoryNotShared, keybundle.CodeHistoryNotSharedUnstable}, args...)
	rows, err := db.Query(ctx, `
		SELECT session_id, sender_key, session IS NOT NULL, COALESCE(withheld_code, ''), COALESCE(withheld_reason, ''),
			key_source = 'forward' AND source_user <> ''
		FROM crypto_megolm_inbound_session
		WHERE `+where+` AND (session IS NOT NULL AND shared_history IS NOT TRUE
			OR session IS NULL AND withheld_code IN ($1, $2) AND key_source = 'forward' AND source_user <> '')`, args...)
	return iterate(rows, err, func(row dbutil.Scannable) (h keybundle.Held, err error) {
		var sessionID, senderKey string
		err = row.Scan(&sessionID, &senderKey, &h.HasKey, &h.Code, &h.Reason, &h.FromBundle)
		h.RoomID, h.SessionID, h.SenderKey = roomID, id.SessionID(sessionID), id.SenderKey(senderKey)
		return
	}, each)
}

// EachSharedSession calls each for every session of the room the accounts hold with shared
// history, with its pickle.
func EachSharedSession(ctx context.Context, db *dbutil.Database, accounts []string, roomID id.RoomID, each func(StoredSession) error) error {
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

// CountRoomSessions counts the rows the account holds for the room, keys and withheld entries.
func CountRoomSessions(ctx context.Context, db *dbutil.Database, account string, roomID id.RoomID) (int, error) {
	var n int
	err := db.QueryRow(ctx, `SELECT COUNT(*) FROM crypto_megolm_inbound_session WHERE account_id=$1 AND room_id=$2`,
		account, roomID).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("failed to count sessions: %w", err)
	}
	return n, nil
}

// PutDeviceWithheld stores a withheld entry a device sent over to-device, as mautrix's
// PutWithheldGroupSession would but marked as received directly from sender (source_user), so
// that an entry answers only for that user's events and is never taken for a bundle's. An entry for
// a session ID the account holds a row for changes nothing.
func PutDeviceWithheld(ctx context.Context, db *dbutil.Database, account string, roomID id.RoomID, sessionID id.SessionID,
	senderKey id.SenderKey, code, reason string, sender id.UserID) error {
	_, err := db.Exec(ctx, `INSERT INTO crypto_megolm_inbound_session
			(session_id, sender_key, room_id, withheld_code, withheld_reason, received_at, key_source, source_user, account_id)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (account_id, room_id, session_id) DO NOTHING`,
		sessionID, senderKey, roomID, code, reason, time.Now().UTC(), id.KeySourceDirect, sender, account)
	if err != nil {
		return fmt.Errorf("failed to store a withheld entry: %w", err)
	}
	return nil
}

// WithheldRow is a withheld entry as the account holds it for a session ID of a room.
type WithheldRow struct {
	SenderKey id.SenderKey
	Code      string
	// FromBundle is true for an entry imported from an accepted key bundle (InsertBundleWithheld),
	// false for one a device sent over to-device.
	FromBundle bool
	// Sender is who sent a device's entry (PutDeviceWithheld; "" for one stored before heirloom
	// recorded it), or the bundle's sender.
	Sender id.UserID
	// ReceivedAt is when the entry was received: for a bundle's entry, when the bundle was.
	ReceivedAt time.Time
}

// WithheldEntry returns the withheld entry the account holds for the session ID in the room, or nil
// if it holds none (no row, or a key).
func WithheldEntry(ctx context.Context, db *dbutil.Database, account string, roomID id.RoomID, sessionID id.SessionID) (*WithheldRow, error) {
	var w WithheldRow
	var senderKey, source, sourceUser string
	var receivedAt sql.NullTime
	err := db.QueryRow(ctx, `SELECT sender_key, withheld_code, key_source, source_user, received_at
		FROM crypto_megolm_inbound_session
		WHERE account_id=$1 AND room_id=$2 AND session_id=$3 AND session IS NULL AND withheld_code IS NOT NULL`,
		account, roomID, sessionID).Scan(&senderKey, &w.Code, &source, &sourceUser, &receivedAt)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("failed to read a withheld entry: %w", err)
	}
	w.SenderKey, w.ReceivedAt, w.Sender = id.SenderKey(senderKey), receivedAt.Time, id.UserID(sourceUser)
	w.FromBundle = id.KeySource(source) == id.KeySourceForward && sourceUser != ""
	return &w, nil
}
