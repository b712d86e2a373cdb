package e2ee

import (
	"context"
	"time"

	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee/cryptostore"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// The puppet's and the manager's reads and writes of mautrix's crypto tables, run by the
// statements of package cryptostore on the puppet's account (or on the shared device tables).

// HeldSessions returns the rows the puppet holds for the session IDs in the room, keyed by
// session ID (cryptostore.HeldSessions).
func (p *Puppet) HeldSessions(ctx context.Context, roomID id.RoomID, sessionIDs []id.SessionID) (map[id.SessionID]cryptostore.HeldSession, error) {
	return cryptostore.HeldSessions(ctx, p.Store.DB, p.Store.AccountID, roomID, sessionIDs)
}

// eachWithheldEntry calls each, for the room, with every session the puppet holds a key for
// without shared history and every m.history_not_shared entry it imported from an accepted bundle
// (cryptostore.EachWithheldEntry).
func (p *Puppet) eachWithheldEntry(ctx context.Context, roomID id.RoomID, each func(keybundle.Held) error) error {
	return cryptostore.EachWithheldEntry(ctx, p.Store.DB, []string{p.Store.AccountID}, roomID, each)
}

// CountRoomSessions counts the rows the puppet holds for the room, keys and withheld entries.
func (p *Puppet) CountRoomSessions(ctx context.Context, roomID id.RoomID) (int, error) {
	return cryptostore.CountRoomSessions(ctx, p.Store.DB, p.Store.AccountID, roomID)
}

// NewSessionInserter starts writing new sessions of the puppet whose columns, but for their keys
// and pickle, are like's, in the transaction of ctx and under LockSessionsExclusive
// (cryptostore.SessionInserter).
func (p *Puppet) NewSessionInserter(ctx context.Context, like *crypto.InboundGroupSession) (*cryptostore.SessionInserter, error) {
	return cryptostore.NewSessionInserter(ctx, p.Store.DB, p.Store.AccountID, like)
}

// InsertBundleWithheld writes withheld entries of a bundle from sender for the puppet
// (cryptostore.InsertBundleWithheld).
func (p *Puppet) InsertBundleWithheld(ctx context.Context, entries []keybundle.Withheld, sender id.UserID, receivedAt time.Time) error {
	return cryptostore.InsertBundleWithheld(ctx, p.Store.DB, p.Store.AccountID, entries, sender, receivedAt)
}

// sharedWith returns which of the devices the puppet's outbound session was shared with
// (cryptostore.SharedWith).
func (p *Puppet) sharedWith(ctx context.Context, sessionID id.SessionID, devices []cryptostore.Recipient) (map[cryptostore.Recipient]bool, error) {
	return cryptostore.SharedWith(ctx, p.Store.DB, sessionID, devices)
}

// deviceListStates returns the device-list state of each user heirloom tracks
// (cryptostore.DeviceListStates).
func (m *Manager) deviceListStates(ctx context.Context, users []id.UserID) (map[id.UserID]cryptostore.DeviceListState, error) {
	return cryptostore.DeviceListStates(ctx, m.shared.DB, users)
}

// storedDevices returns the devices the shared tables hold for the users, as mautrix's GetDevices
// returns them (cryptostore.StoredDevices).
func (m *Manager) storedDevices(ctx context.Context, users []id.UserID) (map[id.UserID]map[id.DeviceID]*id.Device, error) {
	return cryptostore.StoredDevices(ctx, m.shared.DB, users)
}

// MarkDeviceListsOutdated marks the device list of every user heirloom tracks outdated, so that
// each is fetched again before a room key is next shared with them.
func (m *Manager) MarkDeviceListsOutdated(ctx context.Context) error {
	return cryptostore.MarkDeviceListsOutdated(ctx, m.shared.DB)
}
