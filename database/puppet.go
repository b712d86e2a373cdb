package database

import (
	"context"
	"database/sql"
	"errors"

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
}

const puppetColumns = `user_id, device_id, displayname, cross_signing_seeds, master_key, ready, created_at`

func scanPuppet(row interface{ Scan(...any) error }) (*Puppet, error) {
	var p Puppet
	err := row.Scan(&p.UserID, &p.DeviceID, &p.Displayname, &p.CrossSigningSeeds, &p.MasterKey, &p.Ready, &p.CreatedAt)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return &p, err
}

// GetPuppet returns the puppet, or nil if it was never provisioned.
func (db *Database) GetPuppet(ctx context.Context, userID id.UserID) (*Puppet, error) {
	return scanPuppet(db.QueryRow(ctx, `SELECT `+puppetColumns+` FROM puppet WHERE user_id=$1`, userID))
}

// PutPuppet inserts or updates a puppet.
func (db *Database) PutPuppet(ctx context.Context, p *Puppet) error {
	if p.CreatedAt == 0 {
		p.CreatedAt = nowMillis()
	}
	_, err := db.Exec(ctx, `
		INSERT INTO puppet (`+puppetColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (user_id) DO UPDATE SET device_id=excluded.device_id, displayname=excluded.displayname,
			cross_signing_seeds=excluded.cross_signing_seeds, master_key=excluded.master_key, ready=excluded.ready`,
		p.UserID, p.DeviceID, p.Displayname, p.CrossSigningSeeds, p.MasterKey, p.Ready, p.CreatedAt)
	return err
}

// CountPuppets returns how many puppets are provisioned and ready.
func (db *Database) CountPuppets(ctx context.Context) (int, error) {
	var n int
	err := db.QueryRow(ctx, `SELECT COUNT(*) FROM puppet WHERE ready`).Scan(&n)
	return n, err
}

// ListPuppetIDs returns the user IDs of every ready puppet.
func (db *Database) ListPuppetIDs(ctx context.Context) ([]id.UserID, error) {
	rows, err := db.Query(ctx, `SELECT user_id FROM puppet WHERE ready ORDER BY user_id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []id.UserID
	for rows.Next() {
		var u id.UserID
		if err = rows.Scan(&u); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}
