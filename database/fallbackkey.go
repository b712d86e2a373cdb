package database

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"maunium.net/go/mautrix/id"
)

// FallbackKey is what heirloom records of a device's fallback key (e2ee/fallbackkey.go).
type FallbackKey struct {
	AccountID string
	DeviceID  id.DeviceID
	// KeyID is the account's current fallback key, made at CreatedAt.
	KeyID     string
	CreatedAt time.Time
	// UploadedKeyID is the key the homeserver last accepted, "" if none.
	UploadedKeyID string
}

// GetFallbackKey returns the record of the account's fallback key, or nil if there is none.
func (db *Database) GetFallbackKey(ctx context.Context, accountID string) (*FallbackKey, error) {
	k := FallbackKey{AccountID: accountID}
	var created int64
	err := db.own.QueryRow(ctx, `SELECT device_id, key_id, created_at, uploaded_key_id FROM heirloom_fallback_key WHERE account_id=$1`,
		accountID).Scan(&k.DeviceID, &k.KeyID, &created, &k.UploadedKeyID)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("failed to read the fallback key record: %w", err)
	}
	k.CreatedAt = time.UnixMilli(created)
	return &k, nil
}

// PutFallbackKey records the account's fallback key, replacing the record it had.
func (db *Database) PutFallbackKey(ctx context.Context, k *FallbackKey) error {
	_, err := db.own.Exec(ctx, `
		INSERT INTO heirloom_fallback_key (account_id, device_id, key_id, created_at, uploaded_key_id) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (account_id) DO UPDATE SET device_id=excluded.device_id, key_id=excluded.key_id,
			created_at=excluded.created_at, uploaded_key_id=excluded.uploaded_key_id`,
		k.AccountID, k.DeviceID, k.KeyID, k.CreatedAt.UnixMilli(), k.UploadedKeyID)
	if err != nil {
		return fmt.Errorf("failed to record the fallback key: %w", err)
	}
	return nil
}
