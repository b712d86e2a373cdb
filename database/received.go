package database

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// States of a bundle a puppet received.
const (
	ReceivedPending  = "pending"  // stored; waiting for an accepted invite from its sender
	ReceivedRetry    = "retry"    // download failed for a passing reason; retried with backoff
	ReceivedImported = "imported" // imported: Imported keys, Withheld entries
	ReceivedRejected = "rejected" // never imported: Error says why
	ReceivedExpired  = "expired"  // the media is gone (M_NOT_FOUND) or the accept window passed
	ReceivedFailed   = "failed"   // gave up: Error says why
)

// ReceivedBundle is a key bundle a puppet received over Olm.
type ReceivedBundle struct {
	Puppet       id.UserID
	RoomID       id.RoomID
	Sender       id.UserID
	SenderDevice id.DeviceID
	SenderKey    id.SenderKey
	FileInfo     string // sealed with the pickle key
	State        string
	Imported     int
	Withheld     int
	Skipped      int
	Error        string
	Attempts     int
	NextAttempt  int64
	ReceivedAt   int64
	UpdatedAt    int64
	// Version is the row's version: 1 for the first bundle from the sender for the room, one more
	// for each newer bundle that replaced it. A save of an older one changes nothing.
	Version int64
	// ImportJoin is the join the bundle was imported under (Invite.JoinEventID).
	ImportJoin id.EventID
}

const receivedColumns = `puppet, room_id, sender, sender_device, sender_key, file_info, state, imported, withheld, skipped, error, attempts, next_attempt, received_at, updated_at, version, import_join`

func scanReceived(row dbutil.Scannable) (*ReceivedBundle, error) {
	var b ReceivedBundle
	err := row.Scan(&b.Puppet, &b.RoomID, &b.Sender, &b.SenderDevice, &b.SenderKey, &b.FileInfo, &b.State, &b.Imported,
		&b.Withheld, &b.Skipped, &b.Error, &b.Attempts, &b.NextAttempt, &b.ReceivedAt, &b.UpdatedAt, &b.Version, &b.ImportJoin)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return &b, err
}

// PutReceivedBundle stores a newly received bundle; a newer one from the same sender for the same
// room replaces the older (whatever its state), as the reference implementation does, and gets the
// next row version.
func (db *Database) PutReceivedBundle(ctx context.Context, b *ReceivedBundle) error {
	now := db.nowMillis()
	b.ReceivedAt, b.UpdatedAt = now, now
	err := db.own.QueryRow(ctx, `
		INSERT INTO bundle_received (`+receivedColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 1, '')
		ON CONFLICT (puppet, room_id, sender) DO UPDATE SET sender_device=excluded.sender_device,
			sender_key=excluded.sender_key, file_info=excluded.file_info, state=excluded.state, imported=0, withheld=0,
			skipped=0, error='', attempts=0, next_attempt=0, received_at=excluded.received_at, updated_at=excluded.updated_at,
			version=bundle_received.version+1, import_join=''
		RETURNING version`,
		b.Puppet, b.RoomID, b.Sender, b.SenderDevice, b.SenderKey, b.FileInfo, b.State, b.Imported, b.Withheld,
		b.Skipped, b.Error, b.Attempts, b.NextAttempt, b.ReceivedAt, b.UpdatedAt).Scan(&b.Version)
	if err != nil {
		return fmt.Errorf("failed to store received bundle: %w", err)
	}
	return nil
}

// UpdateReceivedBundle saves the state of a received bundle. It changes nothing if a newer bundle
// from the same sender replaced this one meanwhile (its version differs): that one is pending.
func (db *Database) UpdateReceivedBundle(ctx context.Context, b *ReceivedBundle) error {
	_, err := db.updateReceived(ctx, b)
	return err // wrapped by updateReceived
}

// updateReceived saves b's state if b is still the stored bundle, and returns how many rows changed.
func (db *Database) updateReceived(ctx context.Context, b *ReceivedBundle) (int64, error) {
	b.UpdatedAt = db.nowMillis()
	res, err := db.own.Exec(ctx, `
		UPDATE bundle_received SET state=$4, imported=$5, withheld=$6, skipped=$7, error=$8, attempts=$9,
			next_attempt=$10, updated_at=$11, import_join=$13
		WHERE puppet=$1 AND room_id=$2 AND sender=$3 AND version=$12`,
		b.Puppet, b.RoomID, b.Sender, b.State, b.Imported, b.Withheld, b.Skipped, b.Error, b.Attempts, b.NextAttempt, b.UpdatedAt,
		b.Version, b.ImportJoin)
	if err != nil {
		return 0, fmt.Errorf("failed to save received bundle: %w", err)
	}
	return res.RowsAffected()
}

// errBundleSuperseded means a newer bundle from the same sender replaced the one being saved.
var errBundleSuperseded = errors.New("a newer bundle from the same sender replaced this one")

// SaveImportedBundle saves an imported bundle's final state, inside the import's transaction so
// that the keys and the state commit together. It fails with errBundleSuperseded if a newer bundle
// from the same sender replaced this one meanwhile: the import is then rolled back, and the newer
// bundle, pending, is imported instead.
func (db *Database) SaveImportedBundle(ctx context.Context, b *ReceivedBundle) error {
	n, err := db.updateReceived(ctx, b)
	if err == nil && n == 0 {
		err = errBundleSuperseded
	}
	return err
}

// GetReceivedBundle returns the bundle a sender sent the puppet for a room, or nil.
func (db *Database) GetReceivedBundle(ctx context.Context, puppet id.UserID, roomID id.RoomID, sender id.UserID) (*ReceivedBundle, error) {
	b, err := scanReceived(db.own.QueryRow(ctx, `SELECT `+receivedColumns+` FROM bundle_received WHERE puppet=$1 AND room_id=$2 AND sender=$3`,
		puppet, roomID, sender))
	if err != nil {
		return nil, fmt.Errorf("failed to get received bundle: %w", err)
	}
	return b, nil
}

// ListReceivedBundles returns every bundle a puppet received, newest first.
func (db *Database) ListReceivedBundles(ctx context.Context, puppet id.UserID) ([]*ReceivedBundle, error) {
	rows, err := db.own.Query(ctx, `SELECT `+receivedColumns+` FROM bundle_received WHERE puppet=$1 ORDER BY received_at DESC`, puppet)
	return listOf(rows, err, scanReceived, "list received bundles")
}

// ListReceivedBundlesInRoom returns every bundle puppets received for the room, newest first.
func (db *Database) ListReceivedBundlesInRoom(ctx context.Context, roomID id.RoomID) ([]*ReceivedBundle, error) {
	rows, err := db.own.Query(ctx, `SELECT `+receivedColumns+` FROM bundle_received WHERE room_id=$1 ORDER BY received_at DESC`, roomID)
	return listOf(rows, err, scanReceived, "list received bundles")
}

// ListRetryable returns the bundles for the room that failed or wait for a retry, of every
// puppet, oldest first.
func (db *Database) ListRetryable(ctx context.Context, roomID id.RoomID) ([]*ReceivedBundle, error) {
	rows, err := db.own.Query(ctx, `SELECT `+receivedColumns+` FROM bundle_received WHERE room_id=$1 AND state IN ($2, $3)
		ORDER BY received_at`, roomID, ReceivedFailed, ReceivedRetry)
	return listOf(rows, err, scanReceived, "list retryable bundles")
}

// RetryNow makes the puppet's failed or retrying bundles for the room due for a download at once,
// with their attempts counted from zero. It returns how many it changed.
func (db *Database) RetryNow(ctx context.Context, puppet id.UserID, roomID id.RoomID) (int64, error) {
	res, err := db.own.Exec(ctx, `UPDATE bundle_received SET state=$3, attempts=0, next_attempt=$4, updated_at=$4
		WHERE puppet=$1 AND room_id=$2 AND state IN ($5, $3)`,
		puppet, roomID, ReceivedRetry, db.nowMillis(), ReceivedFailed)
	if err != nil {
		return 0, fmt.Errorf("failed to mark bundles for retry: %w", err)
	}
	return res.RowsAffected()
}

// ListDueRetries returns bundles whose retry time has come.
func (db *Database) ListDueRetries(ctx context.Context) ([]*ReceivedBundle, error) {
	rows, err := db.own.Query(ctx, `SELECT `+receivedColumns+` FROM bundle_received WHERE state=$1 AND next_attempt <= $2`,
		ReceivedRetry, db.nowMillis())
	return listOf(rows, err, scanReceived, "list due retries")
}

// RejectBundlesNotFrom marks the puppet's pending bundles for the room from anyone but sender as
// rejected, for the given reason. It returns how many it rejected.
func (db *Database) RejectBundlesNotFrom(ctx context.Context, puppet id.UserID, roomID id.RoomID, sender id.UserID, reason string) (int64, error) {
	res, err := db.own.Exec(ctx, `UPDATE bundle_received SET state=$4, error=$5, updated_at=$6
		WHERE puppet=$1 AND room_id=$2 AND sender<>$3 AND state IN ($7, $8)`,
		puppet, roomID, sender, ReceivedRejected, reason, db.nowMillis(), ReceivedPending, ReceivedRetry)
	if err != nil {
		return 0, fmt.Errorf("failed to reject bundles: %w", err)
	}
	return res.RowsAffected()
}

// Invite is an invite a puppet received and perhaps accepted.
type Invite struct {
	Puppet        id.UserID
	RoomID        id.RoomID
	Inviter       id.UserID
	InviteEventID id.EventID
	InvitedAt     int64
	// AcceptedAt is when the puppet set out to join from this invite (0: it has not).
	AcceptedAt int64
	// JoinEventID is the puppet's join that replaced this invite ("" until it is known). Only then
	// does the acceptance count.
	JoinEventID id.EventID
}

// Confirmed reports whether the puppet joined from this invite: a bundle from the inviter may be
// imported (within the accept window).
func (inv *Invite) Confirmed() bool {
	return inv != nil && inv.AcceptedAt > 0 && inv.JoinEventID != ""
}

const inviteColumns = `puppet, room_id, inviter, invite_event_id, invited_at, accepted_at, join_event_id`

func scanInvite(row dbutil.Scannable) (*Invite, error) {
	var inv Invite
	err := row.Scan(&inv.Puppet, &inv.RoomID, &inv.Inviter, &inv.InviteEventID, &inv.InvitedAt, &inv.AcceptedAt, &inv.JoinEventID)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return &inv, err
}

// PutInvite records an invite a puppet received. Seeing the same invite again keeps its
// acceptance; another invite event replaces it, acceptance and all.
func (db *Database) PutInvite(ctx context.Context, inv *Invite) error {
	_, err := db.own.Exec(ctx, `
		INSERT INTO puppet_invite (`+inviteColumns+`) VALUES ($1, $2, $3, $4, $5, 0, '')
		ON CONFLICT (puppet, room_id) DO UPDATE SET inviter=excluded.inviter, invite_event_id=excluded.invite_event_id,
			invited_at=excluded.invited_at,
			accepted_at=CASE WHEN puppet_invite.invite_event_id=excluded.invite_event_id THEN puppet_invite.accepted_at ELSE 0 END,
			join_event_id=CASE WHEN puppet_invite.invite_event_id=excluded.invite_event_id THEN puppet_invite.join_event_id ELSE '' END`,
		inv.Puppet, inv.RoomID, inv.Inviter, inv.InviteEventID, inv.InvitedAt)
	if err != nil {
		return fmt.Errorf("failed to save invite: %w", err)
	}
	return nil
}

// MarkInviteAccepted records durably, before the join is sent, that the puppet is joining from
// this very invite. It changes nothing if the stored invite is another one by now.
func (db *Database) MarkInviteAccepted(ctx context.Context, puppet id.UserID, roomID id.RoomID, inviteEventID id.EventID) error {
	_, err := db.own.Exec(ctx, `UPDATE puppet_invite SET accepted_at=$4 WHERE puppet=$1 AND room_id=$2 AND invite_event_id=$3 AND accepted_at=0`,
		puppet, roomID, inviteEventID, db.nowMillis())
	if err != nil {
		return fmt.Errorf("failed to mark invite accepted: %w", err)
	}
	return nil
}

// ConfirmJoin records that the join joinEventID replaced the puppet's stored invite to the room,
// accepting it if it was not yet (a join made outside heirloom's API). It changes nothing if the
// stored invite is another one by now.
func (db *Database) ConfirmJoin(ctx context.Context, puppet id.UserID, roomID id.RoomID, inviteEventID, joinEventID id.EventID) error {
	_, err := db.own.Exec(ctx, `
		UPDATE puppet_invite SET join_event_id=$4, accepted_at=CASE WHEN accepted_at=0 THEN $5 ELSE accepted_at END
		WHERE puppet=$1 AND room_id=$2 AND invite_event_id=$3`,
		puppet, roomID, inviteEventID, joinEventID, db.nowMillis())
	if err != nil {
		return fmt.Errorf("failed to confirm join: %w", err)
	}
	return nil
}

// GetInvite returns the puppet's invite to the room, or nil.
func (db *Database) GetInvite(ctx context.Context, puppet id.UserID, roomID id.RoomID) (*Invite, error) {
	inv, err := scanInvite(db.own.QueryRow(ctx, `SELECT `+inviteColumns+` FROM puppet_invite WHERE puppet=$1 AND room_id=$2`, puppet, roomID))
	if err != nil {
		return nil, fmt.Errorf("failed to get invite: %w", err)
	}
	return inv, nil
}

// ListAcceptedInvites returns invites accepted since the given time, confirmed by their join or not.
func (db *Database) ListAcceptedInvites(ctx context.Context, since time.Time) ([]*Invite, error) {
	rows, err := db.own.Query(ctx, `SELECT `+inviteColumns+` FROM puppet_invite WHERE accepted_at >= $1 AND accepted_at > 0`,
		since.UnixMilli())
	return listOf(rows, err, scanInvite, "list accepted invites")
}

// ExpireAcceptWindow drops acceptance records older than the window and marks their pending
// bundles expired. It returns how many records it dropped.
func (db *Database) ExpireAcceptWindow(ctx context.Context, window time.Duration) (int64, error) {
	cutoff := db.Now().Add(-window).UnixMilli()
	_, err := db.own.Exec(ctx, `
		UPDATE bundle_received SET state=$1, error='accept window passed before the bundle could be imported', updated_at=$2
		WHERE state IN ($3, $4) AND EXISTS (
			SELECT 1 FROM puppet_invite i WHERE i.puppet=bundle_received.puppet AND i.room_id=bundle_received.room_id
			AND i.accepted_at > 0 AND i.accepted_at < $5)`,
		ReceivedExpired, db.nowMillis(), ReceivedPending, ReceivedRetry, cutoff)
	if err != nil {
		return 0, fmt.Errorf("failed to expire pending bundles: %w", err)
	}
	// Bundles arrive before their invite (MSC4268), so any sender can leave one for any room:
	// one no invite came for within the window is dropped.
	_, err = db.own.Exec(ctx, `
		DELETE FROM bundle_received WHERE state=$1 AND received_at < $2 AND NOT EXISTS (
			SELECT 1 FROM puppet_invite i WHERE i.puppet=bundle_received.puppet AND i.room_id=bundle_received.room_id)`,
		ReceivedPending, cutoff)
	if err != nil {
		return 0, fmt.Errorf("failed to drop bundles no invite came for: %w", err)
	}
	res, err := db.own.Exec(ctx, `DELETE FROM puppet_invite WHERE accepted_at > 0 AND accepted_at < $1`, cutoff)
	if err != nil {
		return 0, fmt.Errorf("failed to expire acceptances: %w", err)
	}
	return res.RowsAffected()
}

// DeleteInvite forgets the puppet's invite to the room (it left, rejected it or was removed).
func (db *Database) DeleteInvite(ctx context.Context, puppet id.UserID, roomID id.RoomID) error {
	_, err := db.own.Exec(ctx, `DELETE FROM puppet_invite WHERE puppet=$1 AND room_id=$2`, puppet, roomID)
	if err != nil {
		return fmt.Errorf("failed to delete invite: %w", err)
	}
	return nil
}
