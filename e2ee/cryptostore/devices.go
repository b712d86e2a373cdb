package cryptostore

import (
	"context"
	"fmt"
	"strconv"
	"sync"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// DeviceListState is what the shared device tables say of a user's device list.
type DeviceListState struct {
	// Outdated is true once a device-list change was reported (or heirloom restarted) since the
	// list was last fetched.
	Outdated bool
	// Failures counts the fetches in a row that got no answer for the user (mautrix's
	// IncrementTrackedUsersErrorCount), the last at LastAttempt (Unix seconds).
	Failures    int
	LastAttempt int64
}

// DueAt returns when an outdated list is to be fetched again (Unix seconds): at once, unless five
// fetches in a row got no answer, then after failures³ seconds (at most three hours) from the
// last, as mautrix's GetOutdatedTrackedUsers waits.
func (st DeviceListState) DueAt() int64 {
	if st.Failures < 5 {
		return 0
	}
	return st.LastAttempt + int64(min(st.Failures*st.Failures*st.Failures, 10800))
}

// DeviceListStates returns the device-list state of each user heirloom tracks (has fetched the
// device list of: mautrix's crypto_tracked_user); users missing from the map were never fetched.
func DeviceListStates(ctx context.Context, db *dbutil.Database, users []id.UserID) (map[id.UserID]DeviceListState, error) {
	states, err := queryMap(ctx, db, `SELECT user_id, devices_outdated, COALESCE(error_count, 0), COALESCE(last_attempt, 0)
		FROM crypto_tracked_user WHERE user_id IN (`+inList+`)`, nil, users,
		func(row dbutil.Scannable) (user id.UserID, st DeviceListState, err error) {
			err = row.Scan(&user, &st.Outdated, &st.Failures, &st.LastAttempt)
			return
		})
	if err != nil {
		return nil, fmt.Errorf("failed to read device list states: %w", err)
	}
	return states, nil
}

// StoredDevices returns the devices the shared tables hold for the users (those not deleted), as
// mautrix's GetDevices returns them, with one statement per 500 users instead of two per user.
// A user without a device has no entry.
func StoredDevices(ctx context.Context, db *dbutil.Database, users []id.UserID) (map[id.UserID]map[id.DeviceID]*id.Device, error) {
	out := make(map[id.UserID]map[id.DeviceID]*id.Device, len(users))
	// As GetDevices: the devices of users whose list heirloom tracks (a puppet's own device is
	// stored untracked, and mautrix stops tracking a user after a hundred failed fetches).
	err := queryIn(ctx, db, `SELECT d.user_id, d.device_id, d.identity_key, d.signing_key, d.trust, d.deleted, d.name
		FROM crypto_device d JOIN crypto_tracked_user t ON t.user_id=d.user_id
		WHERE d.user_id IN (`+inList+`) AND d.deleted=false`, nil, users,
		func(row dbutil.Scannable) (*id.Device, error) {
			var d id.Device
			err := row.Scan(&d.UserID, &d.DeviceID, &d.IdentityKey, &d.SigningKey, &d.Trust, &d.Deleted, &d.Name)
			return &d, err
		}, func(d *id.Device) error {
			if out[d.UserID] == nil {
				out[d.UserID] = make(map[id.DeviceID]*id.Device)
			}
			out[d.UserID][d.DeviceID] = d
			return nil
		})
	if err != nil {
		return nil, fmt.Errorf("failed to read devices: %w", err)
	}
	return out, nil
}

// Recipient is a device an outbound session may have been shared with, as mautrix records it.
type Recipient struct {
	UserID      id.UserID
	IdentityKey id.IdentityKey
}

// SharedWith returns which of the devices the outbound session was shared with: what mautrix's
// IsOutboundGroupSessionShared answers for each, in one statement per 100 devices instead of one
// per device. Each device is still a lookup of the primary key (user_id, identity_key,
// session_id): written as ORs of equalities, which SQLite and PostgreSQL answer from the index
// (SQLite 3.40, Debian 12's, scans the whole table for a row-value IN list instead, and the table
// grows with every session shared).
func SharedWith(ctx context.Context, db *dbutil.Database, sessionID id.SessionID, devices []Recipient) (map[Recipient]bool, error) {
	const perStatement = 100 // SQLite's expression depth limit is 1,000
	out := make(map[Recipient]bool, len(devices))
	for start := 0; start < len(devices); start += perStatement {
		chunk := devices[start:min(start+perStatement, len(devices))]
		args := make([]any, 0, 1+2*len(chunk))
		args = append(args, sessionID)
		for _, d := range chunk {
			args = append(args, d.UserID, d.IdentityKey)
		}
		rows, err := db.Query(ctx, sharedWithQuery(len(chunk)), args...)
		err = iterate(rows, err, func(row dbutil.Scannable) (r Recipient, err error) {
			err = row.Scan(&r.UserID, &r.IdentityKey)
			return
		}, addTo(out))
		if err != nil {
			return nil, fmt.Errorf("failed to read the session's recipients: %w", err)
		}
	}
	return out, nil
}

// sharedWithQuery is SharedWith's statement for n devices: the session ID, then each device's
// user ID and identity key. identity_key is CHAR(43): PostgreSQL pads a shorter value with spaces
// on the way out.
func sharedWithQuery(n int) string {
	return `SELECT user_id, RTRIM(identity_key) FROM crypto_megolm_outbound_session_shared
		WHERE session_id=$1 AND (` + recipientConditions(n) + `)`
}

var recipientConditionsCache sync.Map // n → string

// recipientConditions returns "(user_id=$2 AND identity_key=$3) OR …" for n devices.
func recipientConditions(n int) string {
	if cached, ok := recipientConditionsCache.Load(n); ok {
		return cached.(string)
	}
	buf := make([]byte, 0, n*44)
	for i := range n {
		if i > 0 {
			buf = append(buf, " OR "...)
		}
		buf = append(buf, "(user_id=$"...)
		buf = strconv.AppendInt(buf, int64(2+2*i), 10)
		buf = append(buf, " AND identity_key=$"...)
		buf = strconv.AppendInt(buf, int64(3+2*i), 10)
		buf = append(buf, ')')
	}
	recipientConditionsCache.Store(n, string(buf))
	return string(buf)
}

// MarkDeviceListsOutdated marks the device list of every user heirloom tracks outdated, so that
// each is fetched again before a room key is next shared with them.
func MarkDeviceListsOutdated(ctx context.Context, db *dbutil.Database) error {
	if _, err := db.Exec(ctx, `UPDATE crypto_tracked_user SET devices_outdated=true`); err != nil {
		return fmt.Errorf("failed to mark device lists outdated: %w", err)
	}
	return nil
}
