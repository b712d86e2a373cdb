package cryptostore

import (
	"context"
	"fmt"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/keybundle"
)

// The reads of a bundle pooled from several accounts (history.Service builds one for a gateway's
// bridge users, who are one principal): what each account holds for one room, read by account ID
// whether or not its machine is loaded. Like every statement of statements.go, each names the
// room: a copy held for another room is never read.

// AccountsHolding returns those of the accounts that hold any row for the room, in the order given.
func AccountsHolding(ctx context.Context, db *dbutil.Database, accounts []string, roomID id.RoomID) ([]string, error) {
	holding := make(map[string]bool, len(accounts))
	for start := 0; start < len(accounts); start += heldLookupChunk {
		chunk := accounts[start:min(start+heldLookupChunk, len(accounts))]
		args := make([]any, 0, len(chunk)+1)
		values := make([]byte, 0, len(chunk)*24)
		for i, a := range chunk {
			if i > 0 {
				values = append(values, ',')
			}
			values = fmt.Appendf(values, "(CAST($%d AS TEXT))", i+1)
			args = append(args, a)
		}
		args = append(args, roomID)
		// One index probe per account (heirloom_megolm_inbound_room_idx), however many rows it holds.
		rows, err := db.Query(ctx, `SELECT v.column1 FROM (VALUES `+string(values)+`) AS v WHERE EXISTS (
			SELECT 1 FROM crypto_megolm_inbound_session s WHERE s.account_id=v.column1 AND s.room_id=$`+fmt.Sprint(len(chunk)+1)+`)`, args...)
		err = iterate(rows, err, func(row dbutil.Scannable) (a string, err error) {
			err = row.Scan(&a)
			return
		}, addTo(holding))
		if err != nil {
			return nil, fmt.Errorf("failed to find the accounts holding the room's sessions: %w", err)
		}
	}
	out := make([]string, 0, len(holding))
	for _, a := range accounts {
		if holding[a] {
			out = append(out, a)
		}
	}
	return out, nil
}

// RoomRow is one row an account holds for a room, as a pooled bundle plans it: no key material.
type RoomRow struct {
	Account   string
	SessionID id.SessionID
	// HasKey is false for a withheld entry; Shared is true for a key whose shared_history is true.
	HasKey, Shared bool
}

// EachRoomRow calls each with every row the accounts hold for the room, keys and withheld
// entries alike, in no particular order.
func EachRoomRow(ctx context.Context, db *dbutil.Database, accounts []string, roomID id.RoomID, each func(RoomRow) error) error {
	for start := 0; start < len(accounts); start += heldLookupChunk {
		where, args := roomRows(1, accounts[start:min(start+heldLookupChunk, len(accounts))], roomID)
		rows, err := db.Query(ctx, `SELECT account_id, session_id, session IS NOT NULL, shared_history IS TRUE
			FROM crypto_megolm_inbound_session WHERE `+where, args...)
		err = iterate(rows, err, func(row dbutil.Scannable) (r RoomRow, err error) {
			var sessionID string
			err = row.Scan(&r.Account, &sessionID, &r.HasKey, &r.Shared)
			r.SessionID = id.SessionID(sessionID)
			r.Shared = r.Shared && r.HasKey
			return
		}, each)
		if err != nil {
			return fmt.Errorf("failed to read the room's sessions: %w", err)
		}
	}
	return nil
}

// SharedCopy is one account's copy of a session with shared history, and how it came: Direct for
// a key from the session's own device (or the account's own session), as MergeSessions weighs it.
type SharedCopy struct {
	StoredSession
	Direct bool
}

// EachSharedCopy is EachSharedSession for one account, with each row's key source.
func EachSharedCopy(ctx context.Context, db *dbutil.Database, account string, roomID id.RoomID, each func(SharedCopy) error) error {
	where, args := roomRows(1, []string{account}, roomID)
	rows, err := db.Query(ctx, `
		SELECT session_id, sender_key, COALESCE(signing_key, ''), session, key_source FROM crypto_megolm_inbound_session
		WHERE `+where+` AND session IS NOT NULL AND shared_history IS TRUE`, args...)
	return iterate(rows, err, func(row dbutil.Scannable) (c SharedCopy, err error) {
		var sessionID, senderKey, signingKey, source string
		err = row.Scan(&sessionID, &senderKey, &signingKey, &c.Pickled, &source)
		c.Held = keybundle.Held{RoomID: roomID, SessionID: id.SessionID(sessionID), SenderKey: id.SenderKey(senderKey),
			SigningKey: id.Ed25519(signingKey), HasKey: true, SharedHistory: true}
		c.Direct = source == string(id.KeySourceDirect) || source == ""
		return
	}, each)
}

// Session unpickles a copy into the session MergeSessions merges: its ratchet, claims, history
// flag and key source (what a bundle's entry and the merge rules need).
func (pc *PickleCipher) Session(c SharedCopy) (*crypto.InboundGroupSession, error) {
	internal, err := pc.Unpickle(c.Pickled)
	if err != nil {
		return nil, err
	}
	shared, source := c.SharedHistory, id.KeySourceDirect
	if !c.Direct {
		source = id.KeySourceForward
	}
	return &crypto.InboundGroupSession{Internal: internal, SenderKey: c.SenderKey, SigningKey: c.SigningKey,
		RoomID: c.RoomID, SharedHistory: &shared, KeySource: source}, nil
}
