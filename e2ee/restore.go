package e2ee

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/exsync"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/metrics"
)

// The homeserver may delete a puppet's device: Synapse's delete_stale_devices_after prunes
// appservice devices, whose last_seen never moves (element-hq/synapse#18161), and an admin may
// delete one by mistake. Synapse then deletes the device's keys too. heirloom notices (a
// device-list change for the puppet itself, a request answered M_UNKNOWN_DEVICE, the check at
// startup) and puts the same device back: the same device ID (MSC4190), the same Olm account's
// device keys, the same cross-signing identity's signature. It never makes a new identity: a
// device it cannot restore is reported in GET /status and the log.

// DeviceProblem is a puppet device heirloom could not restore. Until it is fixed, the puppet can
// neither send nor receive encrypted messages.
type DeviceProblem struct {
	UserID   id.UserID   `json:"user_id"`
	DeviceID id.DeviceID `json:"device_id"`
	Error    string      `json:"error"`
	// Since is when the problem was first seen, in Unix milliseconds.
	Since int64 `json:"since"`
}

// deviceKeeper notices deleted devices and remembers the ones it could not restore.
type deviceKeeper struct {
	lock     sync.Mutex
	problems map[id.UserID]DeviceProblem
	queued   map[id.UserID]bool // a check after M_UNKNOWN_DEVICE is queued or running
	restores exsync.KeyedMutex[id.UserID]
	// checked holds the puppets checked since the process started (devicecheck.go); loadQueue
	// the loaded ones waiting for their check, which one background task drains.
	checked   map[id.UserID]struct{}
	loadQueue []id.UserID
	draining  bool
	// client asks the homeserver about the devices; its key queries are not the puppets' and are
	// not counted in KeyQueries.
	client *http.Client
}

// keysQueryBatch is how many users one startup key query asks about.
const keysQueryBatch = 100

// errUnknownDevice is what the homeserver answers a request made as a device it does not have.
var errUnknownDevice = []byte(`"M_UNKNOWN_DEVICE"`)

// watch returns a client that sends through base and calls gone when the homeserver answers
// M_UNKNOWN_DEVICE (Synapse: an appservice using a device that does not exist).
func (k *deviceKeeper) watch(base *http.Client, gone func()) *http.Client {
	if base == nil {
		base = http.DefaultClient
	}
	next := base.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	watched := *base
	watched.Transport = &unknownDeviceTransport{next: next, gone: gone}
	return &watched
}

type unknownDeviceTransport struct {
	next http.RoundTripper
	gone func()
}

// RoundTrip peeks into error answers for M_UNKNOWN_DEVICE and hands the body on unchanged.
func (t *unknownDeviceTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil || resp.StatusCode < 400 || resp.StatusCode >= 500 {
		return resp, err
	}
	head, readErr := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(head), resp.Body), resp.Body}
	if readErr == nil && bytes.Contains(head, errUnknownDevice) {
		t.gone()
	}
	return resp, nil
}

// deviceGone checks the puppet's device in the background after the homeserver answered
// M_UNKNOWN_DEVICE; a burst of such answers queues one check.
func (m *Manager) deviceGone(userID id.UserID) {
	m.devices.lock.Lock()
	if m.devices.queued == nil {
		m.devices.queued = map[id.UserID]bool{}
	}
	already := m.devices.queued[userID]
	m.devices.queued[userID] = true
	m.devices.lock.Unlock()
	if already {
		return
	}
	ctx := m.log.With().Stringer("puppet", userID).Logger().WithContext(context.Background())
	zerolog.Ctx(ctx).Warn().Msg("The homeserver does not know the puppet's device (M_UNKNOWN_DEVICE): checking it")
	m.tasks.Run(ctx, "check_device", func(ctx context.Context) {
		defer func() {
			m.devices.lock.Lock()
			delete(m.devices.queued, userID)
			m.devices.lock.Unlock()
		}()
		m.checkDevices(ctx, []id.UserID{userID}, metrics.TriggerUnknownDevice)
	})
}

// DeviceProblems lists the devices heirloom could not restore, by user ID.
func (m *Manager) DeviceProblems() []DeviceProblem {
	m.devices.lock.Lock()
	defer m.devices.lock.Unlock()
	out := make([]DeviceProblem, 0, len(m.devices.problems))
	for _, p := range m.devices.problems {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UserID < out[j].UserID })
	return out
}

// DeviceProblem returns the problem recorded for the user's device, if any.
func (m *Manager) DeviceProblem(userID id.UserID) (DeviceProblem, bool) {
	m.devices.lock.Lock()
	defer m.devices.lock.Unlock()
	p, ok := m.devices.problems[userID]
	return p, ok
}

// setProblem records that the device cannot be restored, and reports whether that is news: no
// problem was recorded for it, or another one.
func (m *Manager) setProblem(row *database.Puppet, err error) bool {
	m.devices.lock.Lock()
	defer m.devices.lock.Unlock()
	if m.devices.problems == nil {
		m.devices.problems = map[id.UserID]DeviceProblem{}
	}
	since := time.Now().UnixMilli()
	old, known := m.devices.problems[row.UserID]
	if known {
		since = old.Since
	}
	m.devices.problems[row.UserID] = DeviceProblem{UserID: row.UserID, DeviceID: row.DeviceID, Error: err.Error(), Since: since}
	return !known || old.Error != err.Error()
}

func (m *Manager) clearProblem(userID id.UserID) {
	m.devices.lock.Lock()
	defer m.devices.lock.Unlock()
	delete(m.devices.problems, userID)
}

// checkDevices checks that each user's device is still on the homeserver with its keys and its
// self-signing signature, and restores what is missing. Users heirloom has not provisioned are
// left out.
func (m *Manager) checkDevices(ctx context.Context, users []id.UserID, trigger string) {
	var rows []*database.Puppet
	for _, userID := range users {
		row, err := m.db.GetPuppet(ctx, userID)
		if err != nil {
			zerolog.Ctx(ctx).Err(err).Stringer("puppet", userID).Msg("Failed to load puppet to check its device")
		} else if row != nil && row.Ready {
			rows = append(rows, row)
		}
	}
	for start := 0; start < len(rows); start += keysQueryBatch {
		m.checkRows(ctx, rows[start:min(start+keysQueryBatch, len(rows))], trigger)
	}
}

// deviceState is what the homeserver holds of a puppet's device and identity.
type deviceState struct {
	keys    bool // the device's keys (Synapse deletes them with the device)
	signed  bool // the self-signing key's signature on them
	master  id.Ed25519
	missing string // what is missing, in words
}

func (m *Manager) checkRows(ctx context.Context, rows []*database.Puppet, trigger string) {
	states, err := m.queryDevices(ctx, rows)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Str("trigger", trigger).Int("puppets", len(rows)).
			Msg("Failed to check the puppets' devices on the homeserver")
		return
	}
	for _, row := range rows {
		if states[row.UserID].missing == "" {
			m.clearProblem(row.UserID)
			continue
		}
		m.restore(ctx, row, trigger)
	}
}

// queryDevices asks the homeserver for the rows' devices, keys and cross-signing keys.
func (m *Manager) queryDevices(ctx context.Context, rows []*database.Puppet) (map[id.UserID]deviceState, error) {
	req := &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{}}
	for _, row := range rows {
		req.DeviceKeys[row.UserID] = mautrix.DeviceIDList{row.DeviceID}
	}
	cli := m.Client(ctx, m.cfg.BotUserID())
	cli.Client = m.devices.client
	resp, err := cli.QueryKeys(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("failed to query the puppets' keys: %w", err)
	}
	out := make(map[id.UserID]deviceState, len(rows))
	for _, row := range rows {
		var st deviceState
		keys, ok := resp.DeviceKeys[row.UserID][row.DeviceID]
		st.keys = ok && keys.Keys.GetEd25519(row.DeviceID) != ""
		if master, ok := resp.MasterKeys[row.UserID]; ok {
			st.master = master.FirstKey()
		}
		if ssk, ok := resp.SelfSigningKeys[row.UserID]; ok && st.keys {
			_, st.signed = keys.Signatures[row.UserID][id.NewKeyID(id.KeyAlgorithmEd25519, ssk.FirstKey().String())]
		}
		switch {
		case !st.keys:
			st.missing = "the device and its keys"
		case st.master != row.MasterKey:
			st.missing = "the cross-signing identity"
		case !st.signed:
			st.missing = "the self-signing signature on the device"
		}
		out[row.UserID] = st
	}
	return out, nil
}

// errOtherIdentity means the homeserver holds another master key for the puppet than heirloom's.
var errOtherIdentity = errors.New("the homeserver holds another cross-signing identity for the puppet than heirloom's: " +
	"heirloom will not replace it (check the puppet's account on the homeserver)")

// restore puts back what the homeserver lost of the puppet's device, with the same device ID,
// keys and identity, and records the outcome. One restore of a puppet runs at a time, and each
// looks again at what is missing: another may have done the work meanwhile.
func (m *Manager) restore(ctx context.Context, row *database.Puppet, trigger string) {
	defer m.devices.restores.WithLock(row.UserID)()
	log := zerolog.Ctx(ctx).With().Stringer("puppet", row.UserID).Stringer("device_id", row.DeviceID).
		Str("trigger", trigger).Logger()
	states, err := m.queryDevices(ctx, []*database.Puppet{row})
	if err != nil {
		log.Warn().Err(err).Msg("Failed to check the puppet's device on the homeserver")
		return
	}
	state := states[row.UserID]
	if state.missing == "" {
		m.clearProblem(row.UserID)
		return
	}
	log = log.With().Str("missing", state.missing).Logger()
	ctx = log.WithContext(ctx)
	if err = m.restoreDevice(ctx, row, state); err != nil {
		if m.setProblem(row, err) {
			m.Metrics.DeviceRestoreFailed(trigger)
			log.Error().Err(err).Stringer("master_key", row.MasterKey).
				Msg("Cannot restore the puppet's device: it can neither send nor read encrypted messages until this is fixed")
		} else {
			log.Debug().Err(err).Msg("The puppet's device still cannot be restored")
		}
		return
	}
	m.clearProblem(row.UserID)
	m.Metrics.DeviceRestored(trigger)
	log.Warn().Stringer("master_key", row.MasterKey).
		Msg("Restored the puppet's device the homeserver had lost, with the same device ID, keys and identity")
}

func (m *Manager) restoreDevice(ctx context.Context, row *database.Puppet, state deviceState) error {
	if state.master != "" && state.master != row.MasterKey {
		return errOtherIdentity
	}
	p, err := m.Get(ctx, row.UserID)
	if err != nil {
		return fmt.Errorf("failed to load the puppet's keys: %w", err)
	}
	if p.Mach.CrossSigningKeys == nil || p.Mach.CrossSigningKeys.MasterKey.PublicKey() != row.MasterKey {
		return fmt.Errorf("failed to restore: the stored cross-signing keys are not the puppet's identity %s", row.MasterKey)
	}
	if !state.keys {
		if err = m.client(row.UserID, "", *zerolog.Ctx(ctx)).CreateDeviceMSC4190(ctx, row.DeviceID, "heirloom"); err != nil {
			return fmt.Errorf("failed to recreate device %s: %w", row.DeviceID, err)
		}
		// The Olm account is the same: its device keys are uploaded again as they were, and the
		// fallback key, which went with the device, is the same one uploaded again.
		current, unlock, err := m.lockCurrent(ctx, p)
		if err != nil {
			return fmt.Errorf("failed to load the puppet's keys: %w", err)
		}
		current.Mach.GetAccount().Shared = false
		err = current.Mach.ShareKeys(ctx, 0)
		unlock()
		if err != nil {
			return fmt.Errorf("failed to upload the device keys again: %w", err)
		}
		if err = m.ensureFallbackKey(ctx, p, fallbackLost); err != nil {
			return err
		}
	}
	if state.master == "" {
		if err = p.Mach.PublishCrossSigningKeys(ctx, p.Mach.CrossSigningKeys, nil); err != nil {
			return fmt.Errorf("failed to publish the cross-signing keys again: %w", err)
		}
	}
	if err = p.Mach.SignOwnDevice(ctx, p.Mach.OwnIdentity()); err != nil {
		return fmt.Errorf("failed to sign the device again: %w", err)
	}
	after, err := m.queryDevices(ctx, []*database.Puppet{row})
	if err != nil {
		return err
	} else if missing := after[row.UserID].missing; missing != "" {
		return fmt.Errorf("failed to restore: the homeserver still lacks %s", missing)
	}
	return nil
}
