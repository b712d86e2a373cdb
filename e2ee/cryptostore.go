package e2ee

import (
	"context"
	"encoding/json"
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
// (all of them on crypto_megolm_inbound_session); everything else goes through mautrix's own
// crypto.SQLCryptoStore methods. The statements are written for the table as mautrix-go
// MautrixVersion creates it at crypto store schema CryptoStoreSchema (sql_store_upgrade); a test
// fails when that schema version changes, and round-trip tests read what these statements write
// back through mautrix's GetGroupSession. heirloom's own migration 03 adds an index to the table
// (account_id, room_id) for the room queries below.
//
// Why not mautrix's methods: GetGroupSessionsForRoom unpickles every session serially (a key
// derivation each), which makes a 10,000-session bundle four times slower than reading the pickles
// here and exporting them on every core with PickleCipher; it has no query for withheld entries
// by room, and PutGroupSession writes one row per statement where an import writes 500.
const (
	MautrixVersion    = "v0.32.0"
	CryptoStoreSchema = 22
)

// HeldSession is what a puppet's store holds under a session ID, whatever room it claims.
type HeldSession struct {
	RoomID id.RoomID
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

// HeldSessions returns the rows the puppet holds for the session IDs, keyed by session ID. The
// crypto store keys inbound sessions by account and session ID only, so one puppet can hold one
// room's copy of a session ID; GetGroupSession filters by room and cannot tell "not held" from
// "held for another room".
func (p *Puppet) HeldSessions(ctx context.Context, sessionIDs []id.SessionID) (map[id.SessionID]HeldSession, error) {
	out := make(map[id.SessionID]HeldSession, len(sessionIDs))
	for start := 0; start < len(sessionIDs); start += heldLookupChunk {
		chunk := sessionIDs[start:min(start+heldLookupChunk, len(sessionIDs))]
		args := make([]any, 0, len(chunk)+1)
		args = append(args, p.Store.AccountID)
		for _, sid := range chunk {
			args = append(args, sid)
		}
		rows, err := p.Store.DB.Query(ctx, `SELECT session_id, room_id, session IS NOT NULL, key_source FROM crypto_megolm_inbound_session
			WHERE account_id=$1 AND session_id IN (`+placeholderList(2, len(chunk))+`)`, args...)
		err = iterate(rows, err, func(row dbutil.Scannable) (h heldSessionRow, err error) {
			var source id.KeySource
			err = row.Scan(&h.sessionID, &h.RoomID, &h.HasKey, &source)
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

// StoredSession is one inbound session row of a room as a key bundle needs it.
type StoredSession struct {
	SessionID  id.SessionID
	SenderKey  id.SenderKey
	SigningKey id.Ed25519
	// Pickled is the session in goolm's pickle format (PickleCipher reads it); empty for
	// sessions read by EachUnsharedSession, whose keys are never decrypted.
	Pickled []byte
}

// EachUnsharedSession calls each for every session of the room the puppet holds a key for without
// shared history, with its IDs only.
func (p *Puppet) EachUnsharedSession(ctx context.Context, roomID id.RoomID, each func(StoredSession) error) error {
	rows, err := p.Store.DB.Query(ctx, `
		SELECT session_id, sender_key FROM crypto_megolm_inbound_session
		WHERE room_id=$1 AND account_id=$2 AND session IS NOT NULL AND shared_history IS NOT TRUE`, roomID, p.Store.AccountID)
	return iterate(rows, err, func(row dbutil.Scannable) (st StoredSession, err error) {
		err = row.Scan(&st.SessionID, &st.SenderKey)
		return
	}, each)
}

// EachSharedSession calls each for every session of the room the puppet holds with shared
// history, with its pickle.
func (p *Puppet) EachSharedSession(ctx context.Context, roomID id.RoomID, each func(StoredSession) error) error {
	rows, err := p.Store.DB.Query(ctx, `
		SELECT session_id, sender_key, signing_key, session FROM crypto_megolm_inbound_session
		WHERE room_id=$1 AND account_id=$2 AND session IS NOT NULL AND shared_history IS TRUE`, roomID, p.Store.AccountID)
	return iterate(rows, err, func(row dbutil.Scannable) (st StoredSession, err error) {
		err = row.Scan(&st.SessionID, &st.SenderKey, &st.SigningKey, &st.Pickled)
		return
	}, each)
}

// EachBundleWithheld calls each for every m.history_not_shared entry (either name) the puppet
// imported for the room from an accepted bundle (InsertBundleWithheld marks those with the
// bundle's sender as source_user). mautrix keeps withheld entries as inbound-session rows with a
// withheld code and no session, and has no query for them by room.
func (p *Puppet) EachBundleWithheld(ctx context.Context, roomID id.RoomID, each func(keybundle.Withheld) error) error {
	rows, err := p.Store.DB.Query(ctx, `
		SELECT session_id, sender_key, withheld_code, COALESCE(withheld_reason, '') FROM crypto_megolm_inbound_session
		WHERE account_id=$1 AND room_id=$2 AND session IS NULL AND withheld_code IN ($3, $4) AND source_user <> ''`,
		p.Store.AccountID, roomID, keybundle.CodeHistoryNotShared, keybundle.CodeHistoryNotSharedUnstable)
	return iterate(rows, err, func(row dbutil.Scannable) (w keybundle.Withheld, err error) {
		w.RoomID, w.Algorithm = roomID, id.AlgorithmMegolmV1
		err = row.Scan(&w.SessionID, &w.SenderKey, &w.Code, &w.Reason)
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

// inboundSessionColumns are the columns of a row InsertNewSessions writes, in the order
// mautrix's PutGroupSession writes them.
const inboundSessionColumns = `session_id, sender_key, signing_key, room_id, session, forwarding_chains, shared_history,
	ratchet_safety, received_at, max_age, max_messages, is_scheduled, key_backup_version, key_source, source_user, account_id`

// InsertNewSessions writes sessions the puppet holds no row for, with one statement, as mautrix's
// PutGroupSession would write each: pickles[i] is sessions[i] pickled with the store's pickle key
// (PickleCipher.Pickle). The caller holds LockSessionsExclusive and checked with HeldSessions, in
// the same transaction, that no row exists: a row that does is left as it is. It does not mark the
// sessions received on the machine.
func (p *Puppet) InsertNewSessions(ctx context.Context, sessions []*crypto.InboundGroupSession, pickles [][]byte) error {
	if len(sessions) == 0 {
		return nil
	}
	const cols = 16
	args := make([]any, 0, len(sessions)*cols)
	for i, igs := range sessions {
		ratchetSafety, err := json.Marshal(&igs.RatchetSafety)
		if err != nil {
			return fmt.Errorf("failed to encode ratchet safety: %w", err)
		}
		args = append(args, igs.ID(), igs.SenderKey, igs.SigningKey, igs.RoomID, pickles[i],
			strings.Join(igs.ForwardingChains, ","), igs.SharedHistory, ratchetSafety, igs.ReceivedAt,
			igs.MaxAge, igs.MaxMessages, igs.IsScheduled, igs.KeyBackupVersion, igs.KeySource, igs.SourceUser,
			p.Store.AccountID)
	}
	_, err := p.Store.DB.Exec(ctx, `INSERT INTO crypto_megolm_inbound_session (`+inboundSessionColumns+`)
		VALUES `+placeholderRows(len(sessions), cols)+` ON CONFLICT (session_id, account_id) DO NOTHING`, args...)
	if err != nil {
		return fmt.Errorf("failed to insert sessions: %w", err)
	}
	return nil
}

// InsertBundleWithheld writes withheld entries of a bundle from sender, as mautrix's
// PutWithheldGroupSession would but marked with sender as source_user, so that EachBundleWithheld
// finds these and never one that arrived over to-device. An entry for a session ID the puppet
// holds a row for changes nothing.
func (p *Puppet) InsertBundleWithheld(ctx context.Context, entries []keybundle.Withheld, sender id.UserID, receivedAt time.Time) error {
	if len(entries) == 0 {
		return nil
	}
	const cols = 9
	args := make([]any, 0, len(entries)*cols)
	for _, c := range entries {
		args = append(args, c.SessionID, c.SenderKey, c.RoomID, c.Code, c.Reason, receivedAt.UTC(), id.KeySourceForward, sender,
			p.Store.AccountID)
	}
	_, err := p.Store.DB.Exec(ctx, `INSERT INTO crypto_megolm_inbound_session
			(session_id, sender_key, room_id, withheld_code, withheld_reason, received_at, key_source, source_user, account_id)
		VALUES `+placeholderRows(len(entries), cols)+` ON CONFLICT (session_id, account_id) DO NOTHING`, args...)
	if err != nil {
		return fmt.Errorf("failed to insert withheld entries: %w", err)
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

// placeholderList returns "$first,…,$(first+n-1)".
func placeholderList(first, n int) string {
	buf := make([]byte, 0, n*5)
	for i := range n {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, '$')
		buf = strconv.AppendInt(buf, int64(first+i), 10)
	}
	return string(buf)
}

var placeholderCache sync.Map // [2]int{rows, cols} → string

// placeholderRows returns "($1,…,$cols),(…)" for rows rows, numbered on; built once per shape.
func placeholderRows(rows, cols int) string {
	key := [2]int{rows, cols}
	if cached, ok := placeholderCache.Load(key); ok {
		return cached.(string)
	}
	buf := make([]byte, 0, rows*cols*6)
	for r := range rows {
		if r > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, '(')
		buf = append(buf, placeholderList(r*cols+1, cols)...)
		buf = append(buf, ')')
	}
	placeholderCache.Store(key, string(buf))
	return string(buf)
}
