package database

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// Puppet is a provisioned puppet: its device and its cross-signing identity.
type Puppet struct {
	UserID      id.UserID
	DeviceID    id.DeviceID
	Displayname string
	// CrossSigningSeeds holds the three cross-signing seeds, encrypted with the pickle key.
	CrossSigningSeeds string
	MasterKey         id.Ed25519
	// Ready reports whether provisioning finished: keys uploaded, identity published, device signed.
	Ready     bool
	CreatedAt int64
	// LastActiveAt is when heirloom last acted as or for the puppet (TouchPuppet), 0 if never.
	LastActiveAt int64
}

const puppetColumns = `user_id, device_id, displayname, cross_signing_seeds, master_key, ready, created_at, last_active_at`

func scanPuppet(row dbutil.Scannable) (*Puppet, error) {
	var p Puppet
	err := row.Scan(&p.UserID, &p.DeviceID, &p.Displayname, &p.CrossSigningSeeds, &p.MasterKey, &p.Ready, &p.CreatedAt, &p.LastActiveAt)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return &p, err
}

// GetPuppet returns the puppet, or nil if it was never provisioned.
func (db *Database) GetPuppet(ctx context.Context, userID id.UserID) (*Puppet, error) {
	p, err := scanPuppet(db.own.QueryRow(ctx, `SELECT `+puppetColumns+` FROM puppet WHERE user_id=$1`, userID))
	if err != nil {
		return nil, fmt.Errorf("failed to get puppet: %w", err)
	}
	return p, nil
}

// PutPuppet inserts or updates a puppet.
func (db *Database) PutPuppet(ctx context.Context, p *Puppet) error {
	if p.CreatedAt == 0 {
		p.CreatedAt = db.nowMillis()
	}
	_, err := db.own.Exec(ctx, `
		INSERT INTO puppet (`+puppetColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (user_id) DO UPDATE SET device_id=excluded.device_id, displayname=excluded.displayname,
			cross_signing_seeds=excluded.cross_signing_seeds, master_key=excluded.master_key, ready=excluded.ready`,
		p.UserID, p.DeviceID, p.Displayname, p.CrossSigningSeeds, p.MasterKey, p.Ready, p.CreatedAt, p.LastActiveAt)
	if err != nil {
		return fmt.Errorf("failed to save puppet: %w", err)
	}
	return nil
}

// TouchPuppet records that heirloom acted as or for the puppet now.
func (db *Database) TouchPuppet(ctx context.Context, userID id.UserID) error {
	if _, err := db.own.Exec(ctx, `UPDATE puppet SET last_active_at=$2 WHERE user_id=$1`, userID, db.nowMillis()); err != nil {
		return fmt.Errorf("failed to record puppet activity: %w", err)
	}
	return nil
}

// CountPuppets returns how many puppets are provisioned and ready, leaving out the users in except
// (heirloom's bot has a device like a puppet, but is none).
func (db *Database) CountPuppets(ctx context.Context, except ...id.UserID) (int, error) {
	var n int
	if err := db.own.QueryRow(ctx, `SELECT COUNT(*) FROM puppet WHERE ready`).Scan(&n); err != nil {
		return 0, fmt.Errorf("failed to count puppets: %w", err)
	}
	for _, userID := range except {
		if p, err := db.GetPuppet(ctx, userID); err != nil {
			return 0, err
		} else if p != nil && p.Ready {
			n--
		}
	}
	return n, nil
}

// listPuppets returns every ready puppet, ordered by user ID.
func (db *Database) listPuppets(ctx context.Context) ([]*Puppet, error) {
	rows, err := db.own.Query(ctx, `SELECT `+puppetColumns+` FROM puppet WHERE ready ORDER BY user_id`)
	return listOf(rows, err, scanPuppet, "list puppets")
}

// listPuppetIDs returns the user IDs of every ready puppet.
func (db *Database) listPuppetIDs(ctx context.Context) ([]id.UserID, error) {
	rows, err := db.own.Query(ctx, `SELECT user_id FROM puppet WHERE ready ORDER BY user_id`)
	out, err := dbutil.NewRowIterWithError(rows, dbutil.ScanSingleColumn[id.UserID], err).AsList()
	if err != nil {
		return nil, fmt.Errorf("failed to list puppets: %w", err)
	}
	return out, nil
}

// ListPuppetsActiveSince returns the ready puppets heirloom acted as or for at or after since
// (Unix milliseconds), ordered by user ID: one scan of the table.
func (db *Database) ListPuppetsActiveSince(ctx context.Context, since int64) ([]*Puppet, error) {
	rows, err := db.own.Query(ctx, `SELECT `+puppetColumns+` FROM puppet WHERE ready AND last_active_at >= $1 ORDER BY user_id`, since)
	return listOf(rows, err, scanPuppet, "list active puppets")
}
