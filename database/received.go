package database

import (
	"context"
	"database/sql"
	"errors"
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
	Puppet       id.UserID    `json:"-"`
	RoomID       id.RoomID    `json:"room_id"`
	Sender       id.UserID    `json:"sender"`
	SenderDevice id.DeviceID  `json:"sender_device"`
	SenderKey    id.SenderKey `json:"-"`
	FileInfo     string       `json:"-"` // sealed with the pickle key
	State        string       `json:"state"`
	Imported     int          `json:"imported"`
	Withheld     int          `json:"withheld"`
	Skipped      int          `json:"skipped"`
	Error        string       `json:"error,omitempty"`
	Attempts     int          `json:"attempts"`
	NextAttempt  int64        `json:"-"`
	ReceivedAt   int64        `json:"received_at"`
	UpdatedAt    int64        `json:"updated_at"`
}

const receivedColumns = `puppet, room_id, sender, sender_device, sender_key, file_info, state, imported, withheld, skipped, error, attempts, next_attempt, received_at, updated_at`

func scanReceived(row dbutil.Scannable) (*ReceivedBundle, error) {
	var b ReceivedBundle
	err := row.Scan(&b.Puppet, &b.RoomID, &b.Sender, &b.SenderDevice, &b.SenderKey, &b.FileInfo, &b.State, &b.Imported,
		&b.Withheld, &b.Skipped, &b.Error, &b.Attempts, &b.NextAttempt, &b.ReceivedAt, &b.UpdatedAt)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return &b, err
}

// PutReceivedBundle stores a newly received bundle; a newer one from the same sender for the same
// room replaces the older (whatever its state), as the reference implementation does.
func (db *Database) PutReceivedBundle(ctx context.Context, b *ReceivedBundle) error {
	now := nowMillis()
	b.ReceivedAt, b.UpdatedAt = now, now
	_, err := db.Exec(ctx, `
		INSERT INTO bundle_received (`+receivedColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
		ON CONFLICT (puppet, room_id, sender) DO UPDATE SET sender_device=excluded.sender_device,
			sender_key=excluded.sender_key, file_info=excluded.file_info, state=excluded.state, imported=0, withheld=0,
			skipped=0, error='', attempts=0, next_attempt=0, received_at=excluded.received_at, updated_at=excluded.updated_at`,
		b.Puppet, b.RoomID, b.Sender, b.SenderDevice, b.SenderKey, b.FileInfo, b.State, b.Imported, b.Withheld,
		b.Skipped, b.Error, b.Attempts, b.NextAttempt, b.ReceivedAt, b.UpdatedAt)
	return err
}

// UpdateReceivedBundle saves the state of a received bundle. It changes nothing if a newer bundle
// from the same sender replaced this one meanwhile (its received_at differs): that one is pending.
func (db *Database) UpdateReceivedBundle(ctx context.Context, b *ReceivedBundle) error {
	b.UpdatedAt = nowMillis()
	_, err := db.Exec(ctx, `
		UPDATE bundle_received SET state=$4, imported=$5, withheld=$6, skipped=$7, error=$8, attempts=$9,
			next_attempt=$10, updated_at=$11
		WHERE puppet=$1 AND room_id=$2 AND sender=$3 AND received_at=$12`,
		b.Puppet, b.RoomID, b.Sender, b.State, b.Imported, b.Withheld, b.Skipped, b.Error, b.Attempts, b.NextAttempt, b.UpdatedAt,
		b.ReceivedAt)
	return err
}

// GetReceivedBundle returns the bundle a sender sent the puppet for a room, or nil.
func (db *Database) GetReceivedBundle(ctx context.Context, puppet id.UserID, roomID id.RoomID, sender id.UserID) (*ReceivedBundle, error) {
	return scanReceived(db.QueryRow(ctx, `SELECT `+receivedColumns+` FROM bundle_received WHERE puppet=$1 AND room_id=$2 AND sender=$3`,
		puppet, roomID, sender))
}

// ListReceivedBundles returns every bundle a puppet received, newest first.
func (db *Database) ListReceivedBundles(ctx context.Context, puppet id.UserID) ([]*ReceivedBundle, error) {
	rows, err := db.Query(ctx, `SELECT `+receivedColumns+` FROM bundle_received WHERE puppet=$1 ORDER BY received_at DESC`, puppet)
	return dbutil.NewRowIterWithError(rows, scanReceived, err).AsList()
}

// ListDueRetries returns bundles whose retry time has come.
func (db *Database) ListDueRetries(ctx context.Context) ([]*ReceivedBundle, error) {
	rows, err := db.Query(ctx, `SELECT `+receivedColumns+` FROM bundle_received WHERE state=$1 AND next_attempt <= $2`,
		ReceivedRetry, nowMillis())
	return dbutil.NewRowIterWithError(rows, scanReceived, err).AsList()
}

// Invite is an invite a puppet received and perhaps accepted.
type Invite struct {
	Puppet        id.UserID
	RoomID        id.RoomID
	Inviter       id.UserID
	InviteEventID id.EventID
	InvitedAt     int64
	AcceptedAt    int64
}

// PutInvite records an invite a puppet received (keeping an earlier acceptance of the same invite).
func (db *Database) PutInvite(ctx context.Context, inv *Invite) error {
	_, err := db.Exec(ctx, `
		INSERT INTO puppet_invite (puppet, room_id, inviter, invite_event_id, invited_at, accepted_at) VALUES ($1, $2, $3, $4, $5, 0)
		ON CONFLICT (puppet, room_id) DO UPDATE SET inviter=excluded.inviter, invite_event_id=excluded.invite_event_id,
			invited_at=excluded.invited_at, accepted_at=CASE WHEN puppet_invite.invite_event_id=excluded.invite_event_id
			OR puppet_invite.invite_event_id='' OR excluded.invite_event_id='' THEN puppet_invite.accepted_at ELSE 0 END`,
		inv.Puppet, inv.RoomID, inv.Inviter, inv.InviteEventID, inv.InvitedAt)
	return err
}

// MarkInviteAccepted records durably that the puppet joined the room from the invite.
func (db *Database) MarkInviteAccepted(ctx context.Context, puppet id.UserID, roomID id.RoomID) (*Invite, error) {
	_, err := db.Exec(ctx, `UPDATE puppet_invite SET accepted_at=$3 WHERE puppet=$1 AND room_id=$2 AND accepted_at=0`,
		puppet, roomID, nowMillis())
	if err != nil {
		return nil, err
	}
	return db.GetInvite(ctx, puppet, roomID)
}

// GetInvite returns the puppet's invite to the room, or nil.
func (db *Database) GetInvite(ctx context.Context, puppet id.UserID, roomID id.RoomID) (*Invite, error) {
	var inv Invite
	err := db.QueryRow(ctx, `SELECT puppet, room_id, inviter, invite_event_id, invited_at, accepted_at FROM puppet_invite WHERE puppet=$1 AND room_id=$2`,
		puppet, roomID).Scan(&inv.Puppet, &inv.RoomID, &inv.Inviter, &inv.InviteEventID, &inv.InvitedAt, &inv.AcceptedAt)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return &inv, err
}

// ListAcceptedInvites returns invites accepted since the given time.
func (db *Database) ListAcceptedInvites(ctx context.Context, since time.Time) ([]*Invite, error) {
	rows, err := db.Query(ctx, `SELECT puppet, room_id, inviter, invite_event_id, invited_at, accepted_at FROM puppet_invite WHERE accepted_at >= $1 AND accepted_at > 0`,
		since.UnixMilli())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*Invite
	for rows.Next() {
		var inv Invite
		if err = rows.Scan(&inv.Puppet, &inv.RoomID, &inv.Inviter, &inv.InviteEventID, &inv.InvitedAt, &inv.AcceptedAt); err != nil {
			return nil, err
		}
		out = append(out, &inv)
	}
	return out, rows.Err()
}

// ExpireAcceptWindow drops acceptance records older than the window and marks their pending
// bundles expired. It returns how many records it dropped.
func (db *Database) ExpireAcceptWindow(ctx context.Context, window time.Duration) (int64, error) {
	cutoff := time.Now().Add(-window).UnixMilli()
	_, err := db.Exec(ctx, `
		UPDATE bundle_received SET state=$1, error='accept window passed before the bundle could be imported', updated_at=$2
		WHERE state IN ($3, $4) AND EXISTS (
			SELECT 1 FROM puppet_invite i WHERE i.puppet=bundle_received.puppet AND i.room_id=bundle_received.room_id
			AND i.accepted_at > 0 AND i.accepted_at < $5)`,
		ReceivedExpired, nowMillis(), ReceivedPending, ReceivedRetry, cutoff)
	if err != nil {
		return 0, err
	}
	res, err := db.Exec(ctx, `DELETE FROM puppet_invite WHERE accepted_at > 0 AND accepted_at < $1`, cutoff)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// DeleteInvite forgets the puppet's invite to the room (it left, rejected it or was removed).
func (db *Database) DeleteInvite(ctx context.Context, puppet id.UserID, roomID id.RoomID) error {
	_, err := db.Exec(ctx, `DELETE FROM puppet_invite WHERE puppet=$1 AND room_id=$2`, puppet, roomID)
	return err
}
