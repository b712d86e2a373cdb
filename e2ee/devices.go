package e2ee

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"
)

// Device lists. heirloom keeps every user's device list in mautrix's shared device tables (one
// copy for all puppets, Manager.shared) and fetches it again (/keys/query) only when it may have
// changed, as mautrix's machine does for a syncing client:
//   - a user whose list was never fetched is fetched before a room key is first shared with them;
//   - the homeserver reports changes in each transaction's device_lists.changed (MSC3202), and
//     RouteDeviceListChanges marks those users outdated: fetched again before the next share;
//   - at startup every tracked user is marked outdated (MarkDeviceListsOutdated): a change
//     reported while heirloom was down or restarting may be lost (Synapse keeps only the events of
//     a transaction it could not deliver for its retries, and drops its device lists);
//   - when the homeserver sends its last transaction again, or heirloom answers one with an error
//     (and again at the first one taken after that), every list is marked outdated too: Synapse
//     then holds heirloom down and drops the device lists of the transactions it queues
//     (server.heldDown);
//   - invited members are fetched on every send (the homeserver reports changes only of users who
//     share a joined room with heirloom's users);
//   - and every list every deviceListMaxAge (RunMaintenance), as a bound on a change never
//     reported (a transaction lost before it reached heirloom, a fetch mautrix makes itself while
//     a change is reported).
// A send into a room whose members' lists are all current costs no key query.

// deviceListMaxAge is how long a device list is trusted without a reported change: one key query
// per member every quarter of an hour in a room that keeps sending.
const deviceListMaxAge = 15 * time.Minute

// deviceListChanges numbers the device-list changes reported per user, so a fetch that was in
// flight when one arrived can tell that its answer may predate it.
type deviceListChanges struct {
	mu      sync.Mutex
	changes map[id.UserID]uint64
}

// note records changes of the users' device lists.
func (c *deviceListChanges) note(users []id.UserID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.changes == nil {
		c.changes = make(map[id.UserID]uint64)
	}
	for _, u := range users {
		c.changes[u]++
	}
}

// snapshot returns the users' change counts now.
func (c *deviceListChanges) snapshot(users []id.UserID) map[id.UserID]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[id.UserID]uint64, len(users))
	for _, u := range users {
		out[u] = c.changes[u]
	}
	return out
}

// since returns the users of a snapshot with a change recorded after it.
func (c *deviceListChanges) since(before map[id.UserID]uint64) []id.UserID {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []id.UserID
	for u, n := range before {
		if c.changes[u] != n {
			out = append(out, u)
		}
	}
	return out
}

// memberDevices returns the devices of each user a room key is to be shared with: from the shared
// device tables where the user's list is current, and from one key query for the users whose list
// is outdated or was never fetched. If that query fails (or does not answer for some users), their
// last known devices are used and their lists stay outdated, so the next send tries again (after
// five failures in a row, with mautrix's backoff: cryptostore.DeviceListState.DueAt).
//
// Invited members (invited) are fetched on every send, within the same backoff: the homeserver
// reports device-list changes only of users who share a joined room with heirloom's users, so a
// device an invitee adds is never reported, and what is sent while they are invited is theirs to
// read.
func (p *Puppet) memberDevices(ctx context.Context, users []id.UserID, invited map[id.UserID]bool) (map[id.UserID]map[id.DeviceID]*id.Device, error) {
	log := zerolog.Ctx(ctx)
	states, err := p.mgr.deviceListStates(ctx, users)
	if err != nil {
		return nil, err
	}
	var fetch []id.UserID
	now := time.Now().Unix()
	for _, u := range users {
		if st, tracked := states[u]; !tracked || (st.Outdated || invited[u]) && st.DueAt() <= now {
			fetch = append(fetch, u)
		}
	}
	out := make(map[id.UserID]map[id.DeviceID]*id.Device, len(users))
	if len(fetch) > 0 {
		fetched, err := p.FetchDevices(ctx, fetch)
		if err != nil {
			log.Warn().Err(err).Int("users", len(fetch)).Msg("Failed to fetch device lists; using the last known devices")
		}
		for u, devices := range fetched {
			out[u] = devices
		}
	}
	var stored []id.UserID
	for _, u := range users {
		if _, ok := out[u]; !ok {
			stored = append(stored, u)
		}
	}
	if len(stored) > 0 {
		devices, err := p.mgr.storedDevices(ctx, stored)
		if err != nil {
			return nil, err
		}
		for u, d := range devices {
			out[u] = d
		}
	}
	return out, nil
}

// FetchDevices queries the homeserver for the users' devices and stores them in the shared tables
// (mautrix's FetchKeys), which marks their lists current. A change reported while the query was in
// flight may postdate the answer: those lists are marked outdated again. Every fetch heirloom makes
// itself goes through here.
func (p *Puppet) FetchDevices(ctx context.Context, users []id.UserID) (map[id.UserID]map[id.DeviceID]*id.Device, error) {
	before := p.mgr.deviceChanges.snapshot(users)
	fetched, err := p.Mach.FetchKeys(ctx, users, true)
	if changed := p.mgr.deviceChanges.since(before); len(changed) > 0 {
		if markErr := p.mgr.shared.MarkTrackedUsersOutdated(ctx, changed); markErr != nil {
			return fetched, fmt.Errorf("failed to mark device lists outdated: %w", markErr)
		}
	}
	return fetched, err
}
