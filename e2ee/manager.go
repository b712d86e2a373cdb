package e2ee

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"go.mau.fi/util/exsync"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee/cryptostore"
	"github.com/heirloom-matrix/heirloom/internal/tasks"
	"github.com/heirloom-matrix/heirloom/metrics"
)

// ErrNotProvisioned means the user is in the puppet namespace but was never provisioned.
var ErrNotProvisioned = errors.New("puppet is not provisioned")

// Manager owns the puppets' machines.
type Manager struct {
	cfg       *config.Config
	db        *database.Database
	log       zerolog.Logger
	hsURL     *mautrix.Client // template: homeserver URL, HTTP client
	requests  *requestCounter // counts what hsURL's client sends
	pickleKey []byte
	Sealer    *Sealer
	// Pickles reads and writes stored megolm sessions fast, in goolm's format.
	Pickles    *cryptostore.PickleCipher
	maxLoaded  int
	idleEvict  time.Duration
	provisions exsync.KeyedMutex[id.UserID]

	// shared reaches the tables mautrix's crypto store keeps for all accounts at once: tracked
	// users and their device lists, devices, cross-signing keys and signatures. Built once, with
	// no account; each puppet's own store holds its account's rows.
	shared *crypto.SQLCryptoStore

	// deviceChanges counts the device-list changes reported per user (devices.go).
	deviceChanges deviceListChanges
	// held keeps room keys until the puppet joins the room they are for (membership.go).
	held heldKeys
	// heldRetries asks again about held keys the homeserver did not answer for (heldretry.go).
	heldRetries heldRetries
	// plain remembers the rooms the homeserver just said are unencrypted (encryptionstate.go).
	plain plainRooms
	// accounts serializes, per puppet, what changes its device's Olm account: mautrix's one-time key
	// uploads and Olm decryption (each under its own lock in mautrix) and heirloom's fallback key.
	accounts exsync.KeyedMutex[id.UserID]
	// now is the clock fallback keys age by (tests move it).
	now func() time.Time

	lock     sync.Mutex
	machines map[id.UserID]*Puppet
	gates    sync.Map // id.UserID → *sessionGate

	// onSession, if set, hears of every megolm session a puppet stores (SetSessionHook).
	onSession func(ctx context.Context, p *Puppet, roomID id.RoomID, sessionID id.SessionID)

	// OnRoomKeyBundle is called with every Olm-decrypted room key bundle a puppet receives. The
	// daemon sets it to history.Service.ReceiveBundle; until then bundles are logged and dropped.
	OnRoomKeyBundle BundleHandler
	// Metrics counts what the inbox sweeps recover and the devices restored (nil: nothing).
	Metrics *metrics.Metrics

	// devices keeps the puppets' devices on the homeserver (restore.go).
	devices deviceKeeper
	// heldDownSweeps sweeps the loaded puppets' inboxes once the homeserver sends again after
	// holding heirloom down (sweep.go).
	heldDownSweeps heldDownSweeps
	// tasks tracks the work started in the background (device checks), for Shutdown.
	tasks *tasks.Group
}

// BundleHandler receives an Olm-decrypted room key bundle (MSC4268) with its Olm envelope.
type BundleHandler func(ctx context.Context, p *Puppet, evt *crypto.DecryptedOlmEvent, content *BundleContent)

// dropBundle is the BundleHandler of a manager nobody gave one.
func dropBundle(ctx context.Context, _ *Puppet, _ *crypto.DecryptedOlmEvent, content *BundleContent) {
	zerolog.Ctx(ctx).Warn().Stringer("room_id", content.RoomID).Msg("Dropping key bundle: history sharing is not wired")
}

// NewManager creates a manager. httpClient is shared by every puppet's client; log is what each
// puppet's machine logs to (with the puppet and its device), whatever request first loaded it.
// RegisterContentTypes must have run.
func NewManager(cfg *config.Config, db *database.Database, httpClient *http.Client, log zerolog.Logger) (*Manager, error) {
	if !contentTypes.registered.Load() {
		return nil, errContentTypesUnregistered
	}
	hsURL, err := mautrix.ParseAndNormalizeBaseURL(cfg.Homeserver.Address)
	if err != nil {
		return nil, fmt.Errorf("failed to parse homeserver address: %w", err)
	}
	pickleKey := []byte(cfg.Encryption.PickleKey)
	sealer, err := NewSealer(pickleKey)
	if err != nil {
		return nil, err
	}
	pickles, err := cryptostore.NewPickleCipher(pickleKey)
	if err != nil {
		return nil, err
	}
	counted, requests := countRequests(httpClient)
	return &Manager{
		cfg:       cfg,
		db:        db,
		log:       log,
		hsURL:     &mautrix.Client{HomeserverURL: hsURL, Client: counted},
		requests:  requests,
		pickleKey: pickleKey,
		Sealer:    sealer,
		Pickles:   pickles,
		shared:    crypto.NewSQLCryptoStore(db.Raw, dbutil.ZeroLogger(zerolog.Nop()), "", "", pickleKey),
		maxLoaded: 2000,
		idleEvict: 30 * time.Minute,
		machines:  make(map[id.UserID]*Puppet),
		tasks:     &tasks.Group{Work: "puppet device work"},
		devices:   deviceKeeper{client: httpClient},
		now:       time.Now,

		heldDownSweeps: heldDownSweeps{gather: heldDownGather, maxDelay: heldDownMaxDelay, gap: heldDownGap},

		OnRoomKeyBundle: dropBundle,
	}, nil
}

// Puppet is one loaded puppet: its client (masquerading as the puppet and its device) and its OlmMachine.
type Puppet struct {
	UserID   id.UserID
	DeviceID id.DeviceID
	Client   *mautrix.Client
	Mach     *crypto.OlmMachine
	Store    *crypto.SQLCryptoStore

	mgr      *Manager
	roomLock exsync.KeyedMutex[id.RoomID]
	lastUsed time.Time
	// lastTouched is when the puppet's activity was last recorded in the database.
	lastTouched time.Time

	// evicted is set when the machine is unloaded: one loaded later holds the account from then.
	evicted atomic.Bool

	sweepLock sync.Mutex
	lastSweep time.Time
	// seenToDevice remembers the last encrypted to-device messages handled, so one that arrives
	// twice (pushed in a transaction, then read again by a sweep) is not decrypted twice.
	seenToDevice recentSet
	// asked holds the key requests the bot or the appservice's sender sent, until answered.
	asked askedKeys

	// departuresSeen holds, per outbound session, the leave and ban events already in the member
	// list it was created from: those members never held it, so they do not rotate it.
	departuresLock sync.Mutex
	departuresSeen map[id.SessionID]map[id.EventID]struct{}
}

// client returns a client acting as userID (and deviceID, if set) through the appservice token.
func (m *Manager) client(userID id.UserID, deviceID id.DeviceID, log zerolog.Logger) *mautrix.Client {
	cli := &mautrix.Client{
		HomeserverURL:       m.hsURL.HomeserverURL,
		UserID:              userID,
		DeviceID:            deviceID,
		AccessToken:         m.cfg.AppService.ASToken,
		SetAppServiceUserID: true,
		UserAgent:           "heirloom",
		StateStore:          m.db.StateStore,
		Client:              m.hsURL.Client,
		Log:                 log,
		DefaultHTTPRetries:  2,
	}
	cli.SetAppServiceDeviceID = deviceID != ""
	return cli
}

// Client returns a client acting as userID without a device, for calls that need none.
func (m *Manager) Client(ctx context.Context, userID id.UserID) *mautrix.Client {
	return m.client(userID, "", zerolog.Ctx(ctx).With().Stringer("as_user_id", userID).Logger())
}

// Get returns the loaded puppet, loading its machine from the store if needed.
func (m *Manager) Get(ctx context.Context, userID id.UserID) (*Puppet, error) {
	m.lock.Lock()
	p, ok := m.machines[userID]
	if ok {
		p.lastUsed = time.Now()
		touch := p.lastUsed.Sub(p.lastTouched) > activityResolution
		if touch {
			p.lastTouched = p.lastUsed
		}
		m.lock.Unlock()
		if touch {
			m.touch(ctx, userID)
		}
		return p, nil
	}
	m.lock.Unlock()
	row, err := m.db.GetPuppet(ctx, userID)
	if err != nil {
		return nil, fmt.Errorf("failed to get puppet: %w", err)
	} else if row == nil || !row.Ready {
		return nil, ErrNotProvisioned
	}
	return m.load(ctx, row)
}

// loaded returns the machines currently in memory.
func (m *Manager) loaded() []*Puppet {
	m.lock.Lock()
	defer m.lock.Unlock()
	out := make([]*Puppet, 0, len(m.machines))
	for _, p := range m.machines {
		out = append(out, p)
	}
	return out
}

// LoadedCount returns how many machines are in memory.
func (m *Manager) LoadedCount() int {
	m.lock.Lock()
	defer m.lock.Unlock()
	return len(m.machines)
}

func (m *Manager) load(ctx context.Context, row *database.Puppet) (*Puppet, error) {
	defer m.provisions.WithLock(row.UserID)()
	m.lock.Lock()
	if p, ok := m.machines[row.UserID]; ok {
		m.lock.Unlock()
		return p, nil
	}
	m.lock.Unlock()
	p, err := m.newMachine(ctx, row.UserID, row.DeviceID)
	if err != nil {
		return nil, err
	}
	if row.CrossSigningSeeds != "" {
		seeds, err := m.Sealer.openSeeds(string(row.UserID), row.CrossSigningSeeds)
		if err != nil {
			return nil, err
		}
		if err = p.Mach.ImportCrossSigningKeys(seeds); err != nil {
			return nil, fmt.Errorf("failed to import cross-signing keys: %w", err)
		}
	}
	p.lastTouched = time.Now()
	m.remember(p)
	m.touch(ctx, row.UserID)
	m.checkOnLoad(ctx, row.UserID)
	return p, nil
}

// activityResolution is how finely a puppet's last activity is recorded: one write a minute at most.
const activityResolution = time.Minute

// touch records that heirloom acted as or for the puppet now.
func (m *Manager) touch(ctx context.Context, userID id.UserID) {
	if err := m.db.TouchPuppet(ctx, userID); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Stringer("puppet", userID).Msg("Failed to record puppet activity")
	}
}

func (m *Manager) remember(p *Puppet) {
	m.lock.Lock()
	defer m.lock.Unlock()
	p.lastUsed = time.Now()
	m.machines[p.UserID] = p
	if len(m.machines) > m.maxLoaded {
		m.evictLocked(len(m.machines) - m.maxLoaded)
	}
}

// evictLocked drops up to n least recently used machines. Their state is all in the database.
// A machine used within the last minute stays even over the cap: a caller may still hold it, and
// a second machine for the same device would keep its own in-memory Olm state.
func (m *Manager) evictLocked(n int) {
	byAge := make([]*Puppet, 0, len(m.machines))
	for _, p := range m.machines {
		byAge = append(byAge, p)
	}
	slices.SortFunc(byAge, func(a, b *Puppet) int { return a.lastUsed.Compare(b.lastUsed) })
	for _, p := range byAge {
		if n == 0 || time.Since(p.lastUsed) < time.Minute {
			return
		}
		if m.unloadLocked(p) {
			n--
		}
	}
}

// evictIdle unloads machines unused for longer than the idle limit.
func (m *Manager) evictIdle() int {
	m.lock.Lock()
	defer m.lock.Unlock()
	n := 0
	for _, p := range m.machines {
		if time.Since(p.lastUsed) > m.idleEvict && m.unloadLocked(p) {
			n++
		}
	}
	return n
}

// unloadLocked drops the machine unless its account is in use (its account lock held): a machine
// is never dropped in the middle of changing its account. A caller who still holds it finds it
// marked evicted at its next account lock (lockCurrent), and works on the machine loaded then.
func (m *Manager) unloadLocked(p *Puppet) bool {
	if !m.accounts.TryLock(p.UserID) {
		return false
	}
	defer m.accounts.Unlock(p.UserID)
	p.evicted.Store(true)
	p.Mach.Destroy()
	delete(m.machines, p.UserID)
	return true
}

// newMachine builds the client, store and OlmMachine of a puppet device and loads its Olm account.
func (m *Manager) newMachine(ctx context.Context, userID id.UserID, deviceID id.DeviceID) (*Puppet, error) {
	// The machine outlives the request that loads it: its log carries the puppet, not the request.
	log := m.log.With().Stringer("puppet", userID).Stringer("device_id", deviceID).Logger()
	cli := m.client(userID, deviceID, log)
	// A request the homeserver refuses with M_UNKNOWN_DEVICE means the device is gone: restore it.
	cli.Client = m.devices.watch(cli.Client, func() { m.deviceGone(userID) })
	store := crypto.NewSQLCryptoStore(m.db.Raw, dbutil.ZeroLogger(log), userID.String(), deviceID, m.pickleKey)
	mach := crypto.NewOlmMachine(cli, &log, machineStore{store}, m.db.StateStore)
	// heirloom shares room keys itself (sharing.go); mautrix must not rotate behind its back.
	mach.DisableDeviceChangeKeyRotation = true
	mach.SetMegolmDecryptLock(m.gate(userID).megolmLock)
	mach.AllowKeyShare = refuseOtherUsersKeyRequests(mach)
	if err := mach.Load(ctx); err != nil {
		return nil, fmt.Errorf("failed to load olm account: %w", err)
	}
	p := &Puppet{UserID: userID, DeviceID: deviceID, Client: cli, Mach: mach, Store: store, mgr: m}
	mach.SessionReceived = func(ctx context.Context, roomID id.RoomID, sessionID id.SessionID, _ uint32) {
		if m.onSession != nil {
			m.onSession(ctx, p, roomID, sessionID)
		}
	}
	mach.SetBackgroundCtx(context.WithoutCancel(log.WithContext(ctx)))
	return p, nil
}

// SetSessionHook makes fn hear of every megolm session a puppet stores (a room key, a bundle's
// keys), so that events waiting for their key can be decrypted. Set it before machines load.
func (m *Manager) SetSessionHook(fn func(ctx context.Context, p *Puppet, roomID id.RoomID, sessionID id.SessionID)) {
	m.onSession = fn
}

// LockRoom serializes the puppet's encryption work in a room (sending, sharing a bundle).
func (p *Puppet) LockRoom(roomID id.RoomID) func() {
	return p.roomLock.WithLock(roomID)
}

// lockAccount holds the puppet's account lock (Manager.accounts) until the returned function runs.
func (m *Manager) lockAccount(userID id.UserID) func() {
	return m.accounts.WithLock(userID)
}

// lockCurrent holds the puppet's account lock and returns the machine loaded for it now: p, or, if
// p was unloaded since its caller got it, the one loaded after it. A machine unloaded while a
// caller still held it must not change or save an account the loaded one has moved past (it would
// save a pickle without the fallback key the other uploaded).
func (m *Manager) lockCurrent(ctx context.Context, p *Puppet) (*Puppet, func(), error) {
	unlock := m.lockAccount(p.UserID)
	if !p.evicted.Load() {
		return p, unlock, nil
	}
	current, err := m.Get(ctx, p.UserID)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return current, unlock, nil
}

// Manager returns the manager that loaded the puppet.
func (p *Puppet) Manager() *Manager { return p.mgr }

// LocalPuppet loads (or creates) the Olm machine of a puppet device from the store without
// touching the homeserver: for tools, tests and benchmarks that work on stored keys only.
func (m *Manager) LocalPuppet(ctx context.Context, userID id.UserID, deviceID id.DeviceID) (*Puppet, error) {
	return m.newMachine(ctx, userID, deviceID)
}
