package e2ee

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heirloom-matrix/heirloom/metrics"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/goolm/account"
	"maunium.net/go/mautrix/crypto/goolm/crypto"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// fallbackKeyOf is the fallback key the homeserver holds for the puppet's device, checked as a
// claiming client checks it: one signed_curve25519 key, marked fallback, signed by the device.
func fallbackKeyOf(t *testing.T, hs *homeserver, p *Puppet) id.Curve25519 {
	t.Helper()
	var keys map[id.KeyID]mautrix.OneTimeKey
	hs.do(func(hs *homeserver) { keys = hs.Fallback[p.UserID][p.DeviceID] })
	require.Len(t, keys, 1, "%s's device has one fallback key on the homeserver", p.UserID)
	for keyID, key := range keys {
		algorithm, _ := keyID.Parse()
		require.Equal(t, id.KeyAlgorithmSignedCurve25519, algorithm)
		require.True(t, key.Fallback, "the key says it is a fallback key")
		raw, err := json.Marshal(key)
		require.NoError(t, err)
		ok, err := signatures.VerifySignatureJSON(json.RawMessage(raw), p.UserID, p.DeviceID.String(), p.Mach.OwnIdentity().SigningKey)
		require.NoError(t, err)
		require.True(t, ok, "the fallback key is signed by the device's Ed25519 key")
		return key.Key
	}
	return ""
}

// drainOneTimeKeys has someone claim every one-time key of the puppet's device.
func drainOneTimeKeys(hs *homeserver, p *Puppet) {
	hs.do(func(hs *homeserver) { clear(hs.OTKs[p.UserID][p.DeviceID]) })
}

// Anyone may claim a puppet's one-time keys, faster than heirloom replenishes them. A peer who
// then wants to send the puppet a room key claims the device's fallback key, and the puppet reads
// the peer's message: without it, the peer could open no Olm session and the puppet read nothing.
func TestFallbackKeyLetsAPeerInAfterTheOneTimeKeysRanOut(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	fallbackKeyOf(t, h.hs, h.bob)
	sendRoomOn(h.hs, event.HistoryVisibilityShared, h.alice.UserID, h.bob.UserID)
	drainOneTimeKeys(h.hs, h.bob)
	_, err := h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("after the drain"))
	require.NoError(t, err)
	require.Equal(t, 1, h.roomKeysTo(h.bob), "alice's device opened an Olm session with bob's fallback key")
	require.Equal(t, []string{"after the drain"}, read(t, h.bob))
}

// A used fallback key is replaced once it is a week old, not before (a transaction computed before
// an upload must not replace the key just uploaded), and not while the homeserver says it is
// unused. A peer who claimed the old key before the new one came still gets in.
func TestUsedFallbackKeyIsReplacedOnlyWhenAWeekOld(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	first := fallbackKeyOf(t, h.hs, h.bob)
	route := func(unused ...string) {
		h.theirs.RouteUnusedFallbackKeys(ctx, h.bob.UserID, h.bob.DeviceID, unused)
	}
	route()
	require.Equal(t, first, fallbackKeyOf(t, h.hs, h.bob), "handed out, but new: kept")

	sendRoomOn(h.hs, event.HistoryVisibilityShared, h.alice.UserID, h.bob.UserID)
	drainOneTimeKeys(h.hs, h.bob)
	_, err := h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("with the first fallback key"))
	require.NoError(t, err)

	h.theirs.now = func() time.Time { return time.Now().Add(fallbackKeyMaxAge + time.Hour) }
	route(string(id.KeyAlgorithmSignedCurve25519))
	require.Equal(t, first, fallbackKeyOf(t, h.hs, h.bob), "unused: kept, however old")
	route()
	second := fallbackKeyOf(t, h.hs, h.bob)
	require.NotEqual(t, first, second, "handed out and a week old: replaced")
	route()
	require.Equal(t, second, fallbackKeyOf(t, h.hs, h.bob), "the new key is new: a stale transaction keeps it")

	require.Equal(t, []string{"with the first fallback key"}, read(t, h.bob),
		"the message whose Olm session used the replaced key still reads")
}

// A device the homeserver lost is restored with its fallback key: the same one, uploaded again.
func TestRestoredDeviceGetsItsFallbackKeyAgain(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	before := fallbackKeyOf(t, h.hs, h.bob)
	h.hs.forgetDevice(h.bob.UserID, h.bob.DeviceID)
	h.theirs.checkDevices(ctx, []id.UserID{h.bob.UserID}, metrics.TriggerStartup)
	require.Equal(t, before, fallbackKeyOf(t, h.hs, h.bob))
}

// A device provisioned before heirloom uploaded fallback keys gets one from the maintenance loop.
func TestMaintenanceUploadsAMissingFallbackKey(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	acc := h.bob.Mach.GetAccount().Internal.(*account.Account)
	acc.NumFallbackKeys, acc.CurrentFallbackKey = 0, crypto.OneTimeKey{}
	h.hs.do(func(hs *homeserver) { delete(hs.Fallback[h.bob.UserID], h.bob.DeviceID) })
	h.theirs.replenishKeys(ctx)
	fallbackKeyOf(t, h.hs, h.bob)
}

// A fallback key whose upload failed is uploaded later, even when one-time keys were uploaded in
// between (mautrix's ShareKeys marks the account's fallback key published with its one-time
// keys), and the key the homeserver still hands out is never dropped: a peer who claims it just
// before the next replacement still gets in.
func TestFallbackKeyWhoseUploadFailedIsNotMarkedUploadedByShareKeys(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	first := fallbackKeyOf(t, h.hs, h.bob)
	start := time.Now()
	h.theirs.now = func() time.Time { return start.Add(fallbackKeyMaxAge + time.Hour) }

	// The first key was handed out and is a week old: heirloom makes a new one, but its upload fails.
	h.hs.do(func(hs *homeserver) { hs.fail["keys/upload"] = http.StatusInternalServerError })
	h.theirs.RouteUnusedFallbackKeys(ctx, h.bob.UserID, h.bob.DeviceID, nil)
	h.hs.do(func(hs *homeserver) { delete(hs.fail, "keys/upload") })

	// Someone claims a one-time key; the maintenance loop replenishes them and should upload the
	// fallback key that is still missing.
	h.hs.do(func(hs *homeserver) {
		for keyID := range hs.OTKs[h.bob.UserID][h.bob.DeviceID] {
			delete(hs.OTKs[h.bob.UserID][h.bob.DeviceID], keyID)
			break
		}
	})
	h.theirs.replenishKeys(ctx)
	h.theirs.replenishKeys(ctx)
	second := fallbackKeyOf(t, h.hs, h.bob)

	// A week later a peer claims whatever fallback key the homeserver hands out, and heirloom
	// replaces the used key: the peer's message still reads.
	sendRoomOn(h.hs, event.HistoryVisibilityShared, h.alice.UserID, h.bob.UserID)
	drainOneTimeKeys(h.hs, h.bob)
	_, err := h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("claimed just before the replacement"))
	require.NoError(t, err)
	h.theirs.now = func() time.Time { return start.Add(2*fallbackKeyMaxAge + 2*time.Hour) }
	h.theirs.RouteUnusedFallbackKeys(ctx, h.bob.UserID, h.bob.DeviceID, nil)
	require.Equal(t, []string{"claimed just before the replacement"}, read(t, h.bob),
		"the fallback key the homeserver handed out is one heirloom still holds")
	require.NotEqual(t, first, second, "the new fallback key reached the homeserver after its upload failed")
}

// failingFallbackUploads is the homeserver behind a front that, while fail is set, refuses every
// /keys/upload that carries a fallback key (and passes everything else, one-time keys included).
func failingFallbackUploads(t *testing.T, hs *homeserver, fail *atomic.Bool) string {
	t.Helper()
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if fail.Load() && strings.HasSuffix(r.URL.Path, "/keys/upload") && bytes.Contains(body, []byte(`"fallback_keys"`)) {
			writeError(w, http.StatusInternalServerError, "")
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		hs.serve(w, r)
	}))
	t.Cleanup(front.Close)
	return front.URL
}

// Provisioning whose fallback key upload failed uploads it when it resumes, even if someone
// claimed one of the half-made device's one-time keys in between (a claim needs nothing but the
// device ID): otherwise the device goes without a fallback key, and its one-time keys can be drained.
func TestResumedProvisioningUploadsTheFallbackKeyAfterAClaim(t *testing.T) {
	ctx := context.Background()
	hs := newHomeserver(t)
	var fail atomic.Bool
	fail.Store(true)
	mgr := testManagerAt(t, failingFallbackUploads(t, hs, &fail))
	const user id.UserID = "@heirloom_bob:localhost"
	_, err := mgr.Provision(ctx, user, "")
	require.Error(t, err, "the fallback key upload failed")
	fail.Store(false)

	hs.do(func(hs *homeserver) {
		for _, keys := range hs.OTKs[user] {
			for keyID := range keys {
				delete(keys, keyID)
				break
			}
		}
	})
	_, err = mgr.Provision(ctx, user, "")
	require.NoError(t, err)
	p, err := mgr.Get(ctx, user)
	require.NoError(t, err)
	mgr.replenishKeys(ctx)
	mgr.RouteUnusedFallbackKeys(ctx, p.UserID, p.DeviceID, nil)
	fallbackKeyOf(t, hs, p)
}

// The maintenance loop's one-time key upload and a transaction's fallback key replacement run at
// once, as they do when a transaction arrives during maintenance: the key the homeserver holds is
// always the account's current fallback key, the one the saved account holds.
func TestFallbackKeyReplacementConcurrentWithShareKeys(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	acc := h.bob.Mach.GetAccount().Internal.(*account.Account)
	var weeks atomic.Int64
	h.theirs.now = func() time.Time {
		return time.Now().Add(time.Duration(weeks.Load()) * (fallbackKeyMaxAge + time.Hour))
	}
	for i := range 30 {
		weeks.Store(int64(i + 1))
		drainOneTimeKeys(h.hs, h.bob)
		var wg sync.WaitGroup
		wg.Go(func() { h.theirs.replenishKeys(ctx) })
		wg.Go(func() { h.theirs.RouteUnusedFallbackKeys(ctx, h.bob.UserID, h.bob.DeviceID, nil) })
		wg.Wait()
		var current id.Curve25519
		for _, key := range acc.FallbackKey() {
			current = key
		}
		require.Equal(t, current, fallbackKeyOf(t, h.hs, h.bob), "round %d: the homeserver holds the current fallback key", i)
	}
}

// A handed-out fallback key is replaced within two weeks however often heirloom restarts: the
// time a key was made is not forgotten with the process (a restart is modelled by unloading every
// machine: the manager keeps nothing else of the keys), or a deployment every few days keeps one
// key in use for good.
func TestUsedFallbackKeyIsReplacedDespiteRestarts(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	first := fallbackKeyOf(t, h.hs, h.bob)
	start := time.Now()
	for day := 0; day <= 28; day += 4 {
		restart(h.theirs)
		h.theirs.now = func() time.Time { return start.Add(time.Duration(day) * 24 * time.Hour) }
		h.theirs.replenishKeys(ctx)
		h.theirs.RouteUnusedFallbackKeys(ctx, h.bob.UserID, h.bob.DeviceID, nil)
	}
	require.NotEqual(t, first, fallbackKeyOf(t, h.hs, h.bob), "handed out for four weeks: replaced")
}

// restart unloads every machine of the manager, as a restart would: they load again from the store.
func restart(m *Manager) {
	m.lock.Lock()
	defer m.lock.Unlock()
	for _, p := range m.machines {
		m.unloadLocked(p)
	}
}

// A machine evicted while a caller still holds it (maintenance's snapshot, a transaction in
// flight) and the machine loaded after it hold one account twice. The newer one replaces the used
// fallback key and uploads it; the older one then saves its own copy of the account (mautrix's
// one-time key upload does). After the next load, a peer who claims the fallback key the
// homeserver hands out must still get in.
func TestStaleMachineDoesNotLoseTheUploadedFallbackKey(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	stale := h.bob
	restart(h.theirs) // unloaded while still held
	fresh, err := h.theirs.Get(ctx, h.bob.UserID)
	require.NoError(t, err)
	require.NotSame(t, stale, fresh)

	h.theirs.now = func() time.Time { return time.Now().Add(fallbackKeyMaxAge + time.Hour) }
	h.theirs.RouteUnusedFallbackKeys(ctx, fresh.UserID, fresh.DeviceID, nil)
	second := fallbackKeyOf(t, h.hs, fresh)

	// The maintenance loop, with the stale machine in its list, tops up the one-time keys.
	drainOneTimeKeys(h.hs, stale)
	h.theirs.replenishKeysOf(ctx, stale)

	restart(h.theirs)
	reloaded, err := h.theirs.Get(ctx, h.bob.UserID)
	require.NoError(t, err)
	require.Equal(t, second, fallbackKeyOf(t, h.hs, reloaded), "the homeserver still hands out the second key")
	sendRoomOn(h.hs, event.HistoryVisibilityShared, h.alice.UserID, h.bob.UserID)
	drainOneTimeKeys(h.hs, reloaded)
	_, err = h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("with the second fallback key"))
	require.NoError(t, err)
	require.Equal(t, []string{"with the second fallback key"}, read(t, reloaded),
		"the fallback key the homeserver hands out is one the saved account holds")
}

// A new fallback key whose upload kept failing for over a week reaches the homeserver at last;
// the homeserver handed out the old key until that moment. A transaction saying the new key was
// handed out (a peer claimed it at once, or one computed before the upload) must not replace it
// at once: that drops the old key, and a peer's message made with it and not yet read with it.
func TestFallbackKeyAgesFromItsUploadNotItsMaking(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	start := time.Now()
	h.theirs.now = func() time.Time { return start.Add(fallbackKeyMaxAge + time.Hour) }
	h.hs.do(func(hs *homeserver) { hs.fail["keys/upload"] = http.StatusInternalServerError })
	h.theirs.RouteUnusedFallbackKeys(ctx, h.bob.UserID, h.bob.DeviceID, nil) // second key made, not uploaded

	sendRoomOn(h.hs, event.HistoryVisibilityShared, h.alice.UserID, h.bob.UserID)
	drainOneTimeKeys(h.hs, h.bob)
	_, err := h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("with the first fallback key"))
	require.NoError(t, err)
	require.Equal(t, 1, h.roomKeysTo(h.bob))

	h.theirs.now = func() time.Time { return start.Add(2*fallbackKeyMaxAge + 2*time.Hour) }
	h.hs.do(func(hs *homeserver) { delete(hs.fail, "keys/upload") })
	h.theirs.replenishKeys(ctx) // the second key is uploaded at last
	h.theirs.RouteUnusedFallbackKeys(ctx, h.bob.UserID, h.bob.DeviceID, nil)
	require.Equal(t, []string{"with the first fallback key"}, read(t, h.bob),
		"the key the homeserver handed out until a moment ago is still held")
}
