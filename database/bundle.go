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

// States of a bundle a puppet sends.
const (
	SentBuilding  = "building"  // created; invitee keys, build and upload in progress
	SentUploaded  = "uploaded"  // uploaded; delivery to devices in progress
	SentDelivered = "delivered" // delivery finished (see per-device outcomes)
	SentNothing   = "nothing"   // nothing to share: no upload, no delivery
	SentSkipped   = "skipped"   // not delivered: reason says why (no cross-signing, identity change, …)
	SentFailed    = "failed"    // building or uploading failed: reason says why
)

// Kinds of sent bundle.
const (
	SentKindInvite  = "invite"  // built for a puppet's invite
	SentKindReshare = "reshare" // built on an admin's request for a member who is invited or joined
)

// SentBundle is a key bundle a puppet built for an invitee.
type SentBundle struct {
	BundleID      string
	Puppet        id.UserID
	RoomID        id.RoomID
	Invitee       id.UserID
	InviteEventID id.EventID
	State         string
	Sessions      int
	Withheld      int
	Size          int64
	MXC           string
	FileInfo      string // sealed with the pickle key: it holds the bundle's AES key
	Reason        string
	CreatedAt     int64
	UpdatedAt     int64
	Devices       []Delivery
	// InviteeMasterKey is the invitee's master key the devices were chosen under ("" if none).
	InviteeMasterKey id.Ed25519
	// Kind is SentKindInvite or SentKindReshare ("" saves as SentKindInvite).
	Kind string
}

// Delivery is the outcome of a bundle for one invitee device.
type Delivery struct {
	UserID    id.UserID
	DeviceID  id.DeviceID
	Delivered bool
	Reason    string
	// AddedLater: the device appeared after the bundle was first delivered (a redelivery).
	AddedLater bool
}

const sentColumns = `bundle_id, puppet, room_id, invitee, invite_event_id, state, sessions, withheld, size, mxc, file_info, reason, created_at, updated_at, invitee_master_key, kind`

func scanSent(row dbutil.Scannable) (*SentBundle, error) {
	var b SentBundle
	var inviteEvt sql.NullString
	err := row.Scan(&b.BundleID, &b.Puppet, &b.RoomID, &b.Invitee, &inviteEvt, &b.State, &b.Sessions, &b.Withheld,
		&b.Size, &b.MXC, &b.FileInfo, &b.Reason, &b.CreatedAt, &b.UpdatedAt, &b.InviteeMasterKey, &b.Kind)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	b.InviteEventID = id.EventID(inviteEvt.String)
	return &b, err
}

// PutSentBundle inserts or updates a sent bundle (not its deliveries).
func (db *Database) PutSentBundle(ctx context.Context, b *SentBundle) error {
	now := db.nowMillis()
	if b.CreatedAt == 0 {
		b.CreatedAt = now
	}
	b.UpdatedAt = now
	var inviteEvt any
	if b.InviteEventID != "" {
		inviteEvt = b.InviteEventID
	}
	if b.Kind == "" {
		b.Kind = SentKindInvite
	}
	_, err := db.own.Exec(ctx, `
		INSERT INTO bundle_sent (`+sentColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
		ON CONFLICT (bundle_id) DO UPDATE SET invite_event_id=excluded.invite_event_id, state=excluded.state,
			sessions=excluded.sessions, withheld=excluded.withheld, size=excluded.size, mxc=excluded.mxc,
			file_info=excluded.file_info, reason=excluded.reason, updated_at=excluded.updated_at,
			invitee_master_key=excluded.invitee_master_key`,
		b.BundleID, b.Puppet, b.RoomID, b.Invitee, inviteEvt, b.State, b.Sessions, b.Withheld, b.Size, b.MXC,
		b.FileInfo, b.Reason, b.CreatedAt, b.UpdatedAt, b.InviteeMasterKey, b.Kind)
	if err != nil {
		return fmt.Errorf("failed to save sent bundle: %w", err)
	}
	return nil
}

// ClaimSentBundleForInvite links the newest bundle the API built for this invite (no invite event
// recorded yet) to the invite event seen in a transaction, however late that echo is, and returns
// it; nil if there is none: then the transaction path may build one. A bundle whose invite failed
// is never claimed (SetInviteFailed).
func (db *Database) ClaimSentBundleForInvite(ctx context.Context, puppet id.UserID, roomID id.RoomID, invitee id.UserID, eventID id.EventID) (*SentBundle, error) {
	var bundleID string
	err := db.own.QueryRow(ctx, `
		UPDATE bundle_sent SET invite_event_id=$4, updated_at=$5
		WHERE invite_event_id IS NULL AND bundle_id = (
			SELECT bundle_id FROM bundle_sent
			WHERE puppet=$1 AND room_id=$2 AND invitee=$3 AND invite_event_id IS NULL
			ORDER BY created_at DESC LIMIT 1
		) RETURNING bundle_id`, puppet, roomID, invitee, eventID, db.nowMillis()).Scan(&bundleID)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("failed to claim sent bundle: %w", err)
	}
	return db.GetSentBundle(ctx, bundleID)
}

// inviteFailedPrefix marks, in invite_event_id, a bundle whose invite the homeserver refused:
// never an event ID, unique per bundle, and never NULL, so no later invite's echo claims it.
const inviteFailedPrefix = "invite-failed:"

// SetInviteFailed records that the invite a bundle was built for was never sent.
func (db *Database) SetInviteFailed(ctx context.Context, bundleID string) error {
	_, err := db.own.Exec(ctx, `UPDATE bundle_sent SET invite_event_id=$2, updated_at=$3 WHERE bundle_id=$1 AND invite_event_id IS NULL`,
		bundleID, inviteFailedPrefix+bundleID, db.nowMillis())
	if err != nil {
		return fmt.Errorf("failed to record failed invite: %w", err)
	}
	return nil
}

// SetInviteEvent records the invite event a bundle was built for, once the homeserver names it. It
// changes nothing if the echo claimed the bundle first.
func (db *Database) SetInviteEvent(ctx context.Context, bundleID string, eventID id.EventID) error {
	_, err := db.own.Exec(ctx, `UPDATE bundle_sent SET invite_event_id=$2, updated_at=$3 WHERE bundle_id=$1 AND invite_event_id IS NULL`,
		bundleID, eventID, db.nowMillis())
	if err != nil {
		return fmt.Errorf("failed to record invite event: %w", err)
	}
	return nil
}

// HasSentBundleForInvite reports whether a bundle already exists for the invite event.
func (db *Database) HasSentBundleForInvite(ctx context.Context, puppet id.UserID, roomID id.RoomID, eventID id.EventID) (bool, error) {
	var n int
	err := db.own.QueryRow(ctx, `SELECT COUNT(*) FROM bundle_sent WHERE puppet=$1 AND room_id=$2 AND invite_event_id=$3`,
		puppet, roomID, eventID).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("failed to look up sent bundle: %w", err)
	}
	return n > 0, nil
}

// GetSentBundle returns a sent bundle with its deliveries.
func (db *Database) GetSentBundle(ctx context.Context, bundleID string) (*SentBundle, error) {
	b, err := scanSent(db.own.QueryRow(ctx, `SELECT `+sentColumns+` FROM bundle_sent WHERE bundle_id=$1`, bundleID))
	if err != nil {
		return nil, fmt.Errorf("failed to get sent bundle: %w", err)
	} else if b == nil {
		return nil, nil
	}
	if b.Devices, err = db.GetDeliveries(ctx, bundleID); err != nil {
		return nil, err
	}
	return b, nil
}

func (db *Database) querySent(ctx context.Context, query string, args ...any) ([]*SentBundle, error) {
	rows, err := db.own.Query(ctx, `SELECT `+sentColumns+` FROM bundle_sent `+query, args...)
	out, err := dbutil.NewRowIterWithError(rows, scanSent, err).AsList()
	if err != nil {
		return nil, fmt.Errorf("failed to list sent bundles: %w", err)
	}
	for _, b := range out {
		if b.Devices, err = db.GetDeliveries(ctx, b.BundleID); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ListSentBundles returns the bundles a puppet built, newest first.
func (db *Database) ListSentBundles(ctx context.Context, puppet id.UserID) ([]*SentBundle, error) {
	return db.querySent(ctx, `WHERE puppet=$1 ORDER BY created_at DESC`, puppet)
}

// ListUnfinishedSentBundles returns bundles whose building or delivery a restart interrupted.
func (db *Database) ListUnfinishedSentBundles(ctx context.Context) ([]*SentBundle, error) {
	return db.querySent(ctx, `WHERE state IN ($1, $2) ORDER BY created_at`, SentBuilding, SentUploaded)
}

// PutDelivery records the outcome for one device.
func (db *Database) PutDelivery(ctx context.Context, bundleID string, d Delivery) error {
	_, err := db.own.Exec(ctx, `
		INSERT INTO bundle_delivery (bundle_id, user_id, device_id, delivered, reason, added_later) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (bundle_id, user_id, device_id) DO UPDATE SET delivered=excluded.delivered, reason=excluded.reason,
			added_later=bundle_delivery.added_later OR excluded.added_later`,
		bundleID, d.UserID, d.DeviceID, d.Delivered, d.Reason, d.AddedLater)
	if err != nil {
		return fmt.Errorf("failed to save delivery: %w", err)
	}
	return nil
}

// GetDeliveries returns a bundle's per-device outcomes.
func (db *Database) GetDeliveries(ctx context.Context, bundleID string) ([]Delivery, error) {
	rows, err := db.own.Query(ctx, `SELECT user_id, device_id, delivered, reason, added_later FROM bundle_delivery WHERE bundle_id=$1 ORDER BY user_id, device_id`, bundleID)
	out, err := dbutil.NewRowIterWithError(rows, func(row dbutil.Scannable) (d Delivery, err error) {
		err = row.Scan(&d.UserID, &d.DeviceID, &d.Delivered, &d.Reason, &d.AddedLater)
		return
	}, err).AsList()
	if err != nil {
		return nil, fmt.Errorf("failed to get deliveries: %w", err)
	}
	if out == nil {
		out = []Delivery{}
	}
	return out, nil
}

// FailStaleSentBundles marks bundles still waiting to be delivered that were built before the
// given time as failed, for the given reason. It returns how many it marked.
func (db *Database) FailStaleSentBundles(ctx context.Context, builtBefore time.Time, reason string) (int64, error) {
	res, err := db.own.Exec(ctx, `UPDATE bundle_sent SET state=$1, reason=$2, updated_at=$3 WHERE state=$4 AND created_at < $5`,
		SentFailed, reason, db.nowMillis(), SentUploaded, builtBefore.UnixMilli())
	if err != nil {
		return 0, fmt.Errorf("failed to fail stale bundles: %w", err)
	}
	return res.RowsAffected()
}

// ListRedeliverable returns the delivered bundles puppets built for their invites of invitee since
// builtAfter, with the invite recorded and the invitee's identity known: the ones a device the
// invitee added since may still get (history.Service checks the invite still stands).
func (db *Database) ListRedeliverable(ctx context.Context, invitee id.UserID, builtAfter time.Time) ([]*SentBundle, error) {
	return db.querySent(ctx, `WHERE invitee=$1 AND state=$2 AND kind=$3 AND created_at >= $4 AND invite_event_id IS NOT NULL
		AND invite_event_id NOT LIKE $5 AND invitee_master_key <> '' AND file_info <> '' ORDER BY created_at`,
		invitee, SentDelivered, SentKindInvite, builtAfter.UnixMilli(), inviteFailedPrefix+"%")
}

// ListSentBundlesInRoom returns the bundles every puppet built for the room, newest first.
func (db *Database) ListSentBundlesInRoom(ctx context.Context, roomID id.RoomID) ([]*SentBundle, error) {
	return db.querySent(ctx, `WHERE room_id=$1 ORDER BY created_at DESC`, roomID)
}

// LatestSentTo returns the newest bundle a puppet built for user in the room, or nil.
func (db *Database) LatestSentTo(ctx context.Context, roomID id.RoomID, user id.UserID) (*SentBundle, error) {
	b, err := scanSent(db.own.QueryRow(ctx, `SELECT `+sentColumns+` FROM bundle_sent WHERE room_id=$1 AND invitee=$2
		ORDER BY created_at DESC LIMIT 1`, roomID, user))
	if err != nil {
		return nil, fmt.Errorf("failed to get sent bundle: %w", err)
	}
	return b, nil
}

// BundleCounts is how many bundles wait or went wrong, for GET /status and the bot's status.
type BundleCounts struct {
	// Sending: built or uploaded, delivery not finished. SendFailed: sent bundles that failed.
	Sending, SendFailed int
	// Pending: received, waiting for an accepted invite. Retrying: download retried with backoff.
	// Failed: received bundles heirloom gave up on.
	Pending, Retrying, Failed int
}

// CountBundles counts the bundles in each state that an admin watches.
func (db *Database) CountBundles(ctx context.Context) (*BundleCounts, error) {
	var c BundleCounts
	err := db.own.QueryRow(ctx, `SELECT
		(SELECT COUNT(*) FROM bundle_sent WHERE state IN ($1, $2)),
		(SELECT COUNT(*) FROM bundle_sent WHERE state=$3),
		(SELECT COUNT(*) FROM bundle_received WHERE state=$4),
		(SELECT COUNT(*) FROM bundle_received WHERE state=$5),
		(SELECT COUNT(*) FROM bundle_received WHERE state=$6)`,
		SentBuilding, SentUploaded, SentFailed, ReceivedPending, ReceivedRetry, ReceivedFailed).
		Scan(&c.Sending, &c.SendFailed, &c.Pending, &c.Retrying, &c.Failed)
	if err != nil {
		return nil, fmt.Errorf("failed to count bundles: %w", err)
	}
	return &c, nil
}
