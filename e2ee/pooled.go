package e2ee

import (
	"context"

	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee/cryptostore"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// The reads of a bundle pooled from several accounts (history.Service builds one for a gateway's
// bridge users, who are one principal): what each account holds for one room, read by account ID
// whether or not its machine is loaded. The statements are cryptostore's (pooled.go).

// AccountsHolding returns those of the accounts that hold any row for the room, in the order given.
func (m *Manager) AccountsHolding(ctx context.Context, accounts []string, roomID id.RoomID) ([]string, error) {
	return cryptostore.AccountsHolding(ctx, m.shared.DB, accounts, roomID)
}

// EachRoomRow calls each with every row the accounts hold for the room, keys and withheld
// entries alike, in no particular order.
func (m *Manager) EachRoomRow(ctx context.Context, accounts []string, roomID id.RoomID, each func(cryptostore.RoomRow) error) error {
	return cryptostore.EachRoomRow(ctx, m.shared.DB, accounts, roomID, each)
}

// EachSharedSessionOf is cryptostore.EachSharedSession for an account, loaded or not.
func (m *Manager) EachSharedSessionOf(ctx context.Context, account string, roomID id.RoomID, each func(cryptostore.StoredSession) error) error {
	return cryptostore.EachSharedSession(ctx, m.shared.DB, []string{account}, roomID, each)
}

// EachWithheldEntryOf is cryptostore.EachWithheldEntry for an account, loaded or not.
func (m *Manager) EachWithheldEntryOf(ctx context.Context, account string, roomID id.RoomID, each func(keybundle.Held) error) error {
	return cryptostore.EachWithheldEntry(ctx, m.shared.DB, []string{account}, roomID, each)
}

// EachSharedCopy is cryptostore.EachSharedSession for an account, loaded or not, with each row's
// key source.
func (m *Manager) EachSharedCopy(ctx context.Context, account string, roomID id.RoomID, each func(cryptostore.SharedCopy) error) error {
	return cryptostore.EachSharedCopy(ctx, m.shared.DB, account, roomID, each)
}
