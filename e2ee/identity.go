package e2ee

import (
	"context"
	"errors"
	"fmt"

	"maunium.net/go/mautrix/id"
)

// ErrUnknownIdentity means heirloom has never seen a cross-signing identity for the user.
var ErrUnknownIdentity = errors.New("no cross-signing identity known for this user")

// ErrIdentityMismatch means the key an admin confirmed is not the user's current master key.
var ErrIdentityMismatch = errors.New("the confirmed key is not the user's current master key")

// IdentityStatus is what heirloom knows of a user's cross-signing identity. History is shared
// with the user, and accepted from them, only while Current equals FirstSeen.
type IdentityStatus struct {
	UserID    id.UserID  `json:"user_id"`
	Current   id.Ed25519 `json:"master_key"`
	FirstSeen id.Ed25519 `json:"first_seen_master_key"`
	Changed   bool       `json:"changed"`
}

// Identity returns what heirloom has recorded of the user's cross-signing identity.
func (m *Manager) Identity(ctx context.Context, userID id.UserID) (*IdentityStatus, error) {
	keys, err := m.shared.GetCrossSigningKeys(ctx, userID)
	if err != nil {
		return nil, fmt.Errorf("failed to read cross-signing keys: %w", err)
	}
	master, ok := keys[id.XSUsageMaster]
	if !ok {
		return nil, ErrUnknownIdentity
	}
	return &IdentityStatus{UserID: userID, Current: master.Key, FirstSeen: master.First, Changed: master.Key != master.First}, nil
}

// ConfirmIdentity records an admin's decision that the user's current master key, checked out of
// band to be key, is trusted from now on: history sharing with the user resumes.
func (m *Manager) ConfirmIdentity(ctx context.Context, userID id.UserID, key id.Ed25519) (*IdentityStatus, error) {
	status, err := m.Identity(ctx, userID)
	if err != nil {
		return nil, err
	}
	if status.Current != key {
		return nil, fmt.Errorf("%w (current: %s)", ErrIdentityMismatch, status.Current)
	}
	if err = m.shared.ResetMasterKeyTOFU(ctx, userID, key); err != nil {
		return nil, fmt.Errorf("failed to confirm identity: %w", err)
	}
	return m.Identity(ctx, userID)
}
