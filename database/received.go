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
	// ImportJoin is the join the bundle was imported under (Invite.JoinEventID).
	ImportJoin id.EventID `json:"-"`
}

const receivedColumns = `puppet, room_id, sender, sender_device, sender_key, file_info, state, imported, withheld, skipped, error, attempts, next_attempt, received_at, updated_at, import_join`

func scanReceived(row dbutil.Scannable) (*ReceivedBundle, error) {
	var b ReceivedBundle
	err := row.Scan(&b.Puppet, &b.RoomID, &b.Sender, &b.SenderDevice, &b.SenderKey, &b.FileInfo, &b.State, &b.Imported,
		&b.Withheld, &b.Skipped, &b.Error, &b.Attempts, &b.NextAttempt, &b.ReceivedAt, &b.UpdatedAt, &b.ImportJoin)
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
		INSERT INTO bundle_received (`+receivedColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, '')
		ON CONFLICT (puppet, room_id, sender) DO UPDATE SET sender_device=excluded.sender_device,
			sender_key=excluded.sender_key, file_info=excluded.file_info, state=excluded.state, imported=0, withheld=0,
			skipped=0, error='', attempts=0, next_attempt=0, received_at=excluded.received_at, updated_at=excluded.updated_at,
			import_join=''`,
		b.Puppet, b.RoomID, b.Sender, b.SenderDevice, b.SenderKey, b.FileInfo, b.State, b.Imported, b.Withheld,
		b.Skipped, b.Error, b.Attempts, b.NextAttempt, b.ReceivedAt, b.UpdatedAt)
	return err
}

// UpdateReceivedBundle saves the state of a received bundle. It changes nothing if a newer bundle
// from the same sender replaced this one meanwhile (its received_at differs): that one is pending.
func (db *Database) UpdateReceivedBundle(ctx context.Context, b *ReceivedBundle) error {
	_, err := db.updateReceived(ctx, b)
	return err
}

// updateReceived saves b's state if b is still the stored bundle, and returns how many rows changed.
func (db *Database) updateReceived(ctx context.Context, b *ReceivedBundle) (int64, error) {
	b.UpdatedAt = nowMillis()
	res, err := db.Exec(ctx, `
		UPDATE bundle_received SET state=$4, imported=$5, withheld=$6, skipped=$7, error=$8, attempts=$9,
			next_attempt=$10, updated_at=$11, import_join=$13
		WHERE puppet=$1 AND room_id=$2 AND sender=$3 AND received_at=$12`,
		b.Puppet, b.RoomID, b.Sender, b.State, b.Imported, b.Withheld, b.Skipped, b.Error, b.Attempts, b.NextAttempt, b.UpdatedAt,
		b.ReceivedAt, b.ImportJoin)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// ErrBundleSuperseded means a newer bundle from the same sender replaced the one being saved.
var ErrBundleSuperseded = errors.New("a newer bundle from the same sender replaced this one")

// SaveImportedBundle saves an imported bundle's final state, inside the import's transaction so
// that the keys and the state commit together. It fails with ErrBundleSuperseded if a newer bundle
// from the same sender replaced this one meanwhile: the import is then rolled back, and the newer
// bundle, pending, is imported instead.
func (db *Database) SaveImportedBundle(ctx context.Context, b *ReceivedBundle) error {
	n, err := db.updateReceived(ctx, b)
	if err == nil && n == 0 {
		err = ErrBundleSuperseded
	}
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

// RejectBundlesNotFrom marks the puppet's pending bundles for the room from anyone but sender as
// rejected, for the given reason.
func (db *Database) RejectBundlesNotFrom(ctx context.Context, puppet id.UserID, roomID id.RoomID, sender id.UserID, reason string) error {
	_, err := db.Exec(ctx, `UPDATE bundle_received SET state=$4, error=$5, updated_at=$6
		WHERE puppet=$1 AND room_id=$2 AND sender<>$3 AND state IN ($7, $8)`,
		puppet, roomID, sender, ReceivedRejected, reason, nowMillis(), ReceivedPending, ReceivedRetry)
	return err
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
	_, err := db.Exec(ctx, `
		INSERT INTO puppet_invite (`+inviteColumns+`) VALUES ($1, $2, $3, $4, $5, 0, '')
		ON CONFLICT (puppet, room_id) DO UPDATE SET inviter=excluded.inviter, invite_event_id=excluded.invite_event_id,
			invited_at=excluded.invited_at,
			accepted_at=CASE WHEN puppet_invite.invite_event_id=excluded.invite_event_id THEN puppet_invite.accepted_at ELSE 0 END,
			join_event_id=CASE WHEN puppet_invite.invite_event_id=excluded.invite_event_id THEN puppet_invite.join_event_id ELSE '' END`,
		inv.Puppet, inv.RoomID, inv.Inviter, inv.InviteEventID, inv.InvitedAt)
	return err
}

// MarkInviteAccepted records durably, before the join is sent, that the puppet is joining from
// this very invite. It changes nothing if the stored invite is another one by now.
func (db *Database) MarkInviteAccepted(ctx context.Context, puppet id.UserID, roomID id.RoomID, inviteEventID id.EventID) error {
	_, err := db.Exec(ctx, `UPDATE puppet_invite SET accepted_at=$4 WHERE puppet=$1 AND room_id=$2 AND invite_event_id=$3 AND accepted_at=0`,
		puppet, roomID, inviteEventID, nowMillis())
	return err
}

// ConfirmJoin records that the join joinEventID replaced the puppet's stored invite to the room,
// accepting it if it was not yet (a join made outside heirloom's API). It changes nothing if the
// stored invite is another one by now.
func (db *Database) ConfirmJoin(ctx context.Context, puppet id.UserID, roomID id.RoomID, inviteEventID, joinEventID id.EventID) error {
	_, err := db.Exec(ctx, `
		UPDATE puppet_invite SET join_event_id=$4, accepted_at=CASE WHEN accepted_at=0 THEN $5 ELSE accepted_at END
		WHERE puppet=$1 AND room_id=$2 AND invite_event_id=$3`,
		puppet, roomID, inviteEventID, joinEventID, nowMillis())
	return err
}

// GetInvite returns the puppet's invite to the room, or nil.
func (db *Database) GetInvite(ctx context.Context, puppet id.UserID, roomID id.RoomID) (*Invite, error) {
	return scanInvite(db.QueryRow(ctx, `SELECT `+inviteColumns+` FROM puppet_invite WHERE puppet=$1 AND room_id=$2`, puppet, roomID))
}

// ListAcceptedInvites returns invites accepted since the given time, confirmed by their join or not.
func (db *Database) ListAcceptedInvites(ctx context.Context, since time.Time) ([]*Invite, error) {
	rows, err := db.Query(ctx, `SELECT `+inviteColumns+` FROM puppet_invite WHERE accepted_at >= $1 AND accepted_at > 0`,
		since.UnixMilli())
	return dbutil.NewRowIterWithError(rows, scanInvite, err).AsList()
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
	// Bundles arrive before their invite (MSC4268), so any sender can leave one for any room:
	// one no invite came for within the window is dropped.
	_, err = db.Exec(ctx, `
		DELETE FROM bundle_received WHERE state=$1 AND received_at < $2 AND NOT EXISTS (
			SELECT 1 FROM puppet_invite i WHERE i.puppet=bundle_received.puppet AND i.room_id=bundle_received.room_id)`,
		ReceivedPending, cutoff)
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
