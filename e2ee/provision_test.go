package e2ee

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

// provisioned provisions the puppet on the manager's homeserver and returns it loaded, asking the
// homeserver once per request.
func provisioned(t *testing.T, mgr *Manager, userID id.UserID) *Puppet {
	t.Helper()
	_, err := mgr.Provision(context.Background(), userID, "")
	require.NoError(t, err)
	p, err := mgr.Get(context.Background(), userID)
	require.NoError(t, err)
	p.Client.DefaultHTTPRetries = 0
	return p
}

// A new puppet device uploads 50 one-time keys, as Element does (vodozemac keeps 50 on the
// homeserver): not 51, one row more for the homeserver to store.
func TestProvisionUploadsFiftyOneTimeKeys(t *testing.T) {
	hs := newHomeserver(t)
	mgr := testManagerAt(t, hs.URL)
	_, err := mgr.Provision(context.Background(), id.UserID("@heirloom_new:localhost"), "")
	require.NoError(t, err)
	hs.do(func(hs *homeserver) {
		require.Equal(t, []int{50}, hs.uploads, "one upload of the device keys with 50 one-time keys")
	})
}

// A provisioned puppet is a full E2EE user on the homeserver: its device's keys, a cross-signing
// identity, and that identity's signature on the device, which others check. What the API reports
// is what the homeserver publishes; asking again changes nothing.
func TestProvisionedPuppetIsCrossSignedOnTheHomeserver(t *testing.T) {
	ctx := context.Background()
	hs := newHomeserver(t)
	mgr := testManagerAt(t, hs.URL)
	const user id.UserID = "@heirloom_alice:localhost"
	identity, err := mgr.Provision(ctx, user, "Alice")
	require.NoError(t, err)
	unloaded, err := mgr.ProvisionedIdentity(ctx, user)
	require.NoError(t, err)
	require.Equal(t, identity.DeviceID, unloaded.DeviceID)
	require.Equal(t, identity.MasterKey, unloaded.MasterKey)
	none, err := mgr.ProvisionedIdentity(ctx, "@heirloom_nobody:localhost")
	require.NoError(t, err)
	require.Nil(t, none)

	// Another user's client sees the device signed by the identity the API reported.
	observer := testPuppet(t, mgr, "observer")
	observer.Client.HomeserverURL = mustParse(t, hs.URL)
	devices, err := observer.FetchDevices(ctx, []id.UserID{user})
	require.NoError(t, err)
	device := devices[user][identity.DeviceID]
	require.NotNil(t, device)
	require.Equal(t, identity.Ed25519, device.SigningKey)
	require.Equal(t, identity.Curve25519, device.IdentityKey)
	trust, err := observer.Mach.ResolveTrustContext(ctx, device)
	require.NoError(t, err)
	require.Equal(t, id.TrustStateCrossSignedTOFU, trust, "the device is signed by the published identity")
	p, err := mgr.Get(ctx, user)
	require.NoError(t, err)
	signed, err := p.OwnDeviceSigned(ctx)
	require.NoError(t, err)
	require.True(t, signed)

	again, err := mgr.Provision(ctx, user, "Alice")
	require.NoError(t, err)
	require.Equal(t, identity, again)
	hs.do(func(hs *homeserver) { require.Equal(t, []id.DeviceID{identity.DeviceID}, hs.created, "one device") })
}

// Provisioning that fails half-way resumes with the device ID and the cross-signing identity it
// saved: a retry never makes a second device or a second identity.
func TestProvisioningResumesWithTheSameDeviceAndIdentity(t *testing.T) {
	ctx := context.Background()
	for _, failing := range []string{"device", "keys/upload", "keys/device_signing/upload", "keys/signatures/upload"} {
		t.Run(failing, func(t *testing.T) {
			hs := newHomeserver(t)
			mgr := testManagerAt(t, hs.URL)
			const user id.UserID = "@heirloom_bob:localhost"
			hs.do(func(hs *homeserver) { hs.fail[failing] = http.StatusInternalServerError })
			_, err := mgr.Provision(ctx, user, "")
			require.Error(t, err)
			_, err = mgr.Get(ctx, user)
			require.ErrorIs(t, err, ErrNotProvisioned, "a puppet is not used before its provisioning finished")
			first, err := mgr.db.GetPuppet(ctx, user)
			require.NoError(t, err)

			hs.do(func(hs *homeserver) { delete(hs.fail, failing) })
			identity, err := mgr.Provision(ctx, user, "")
			require.NoError(t, err)
			require.Equal(t, first.DeviceID, identity.DeviceID, "the device ID saved before the failure")
			if first.MasterKey != "" {
				require.Equal(t, first.MasterKey, identity.MasterKey, "the identity saved before the failure")
			}
			hs.do(func(hs *homeserver) {
				for _, d := range hs.created {
					require.Equal(t, identity.DeviceID, d)
				}
				master := hs.Parts[user].MasterKeys[user]
				require.Equal(t, identity.MasterKey, master.FirstKey(), "one identity published")
			})
		})
	}
}

// Registration of a user the homeserver already has is no error; any other refusal is.
func TestEnsureRegistered(t *testing.T) {
	hs := newHomeserver(t)
	mgr := testManagerAt(t, hs.URL)
	ctx := context.Background()
	require.NoError(t, mgr.EnsureRegistered(ctx, "@heirloom_bot:localhost"))
	hs.do(func(hs *homeserver) {
		hs.fail["register"], hs.failCode["register"] = http.StatusBadRequest, "M_USER_IN_USE"
	})
	require.NoError(t, mgr.EnsureRegistered(ctx, "@heirloom_bot:localhost"))
	hs.do(func(hs *homeserver) { hs.failCode["register"] = "M_EXCLUSIVE" })
	require.ErrorIs(t, mgr.EnsureRegistered(ctx, "@heirloom_bot:localhost"), mautrix.MExclusive)
}

// A machine is loaded once and shared; the same device's keys come back after it is evicted or
// the process restarts, with its cross-signing identity; machines idle past the limit are unloaded.
func TestMachinesLoadOnceAndComeBackTheSame(t *testing.T) {
	ctx := context.Background()
	hs := newHomeserver(t)
	mgr := testManagerAt(t, hs.URL)
	const user id.UserID = "@heirloom_carol:localhost"
	identity, err := mgr.Provision(ctx, user, "")
	require.NoError(t, err)
	p, err := mgr.Get(ctx, user)
	require.NoError(t, err)
	again, err := mgr.Get(ctx, user)
	require.NoError(t, err)
	require.Same(t, p, again, "one machine per device")
	require.Equal(t, 1, mgr.LoadedCount())
	require.Equal(t, []*Puppet{p}, mgr.loaded())

	mgr.idleEvict = time.Nanosecond
	require.Equal(t, 1, mgr.evictIdle())
	require.Zero(t, mgr.LoadedCount())
	reloaded, err := mgr.Get(ctx, user)
	require.NoError(t, err)
	require.NotSame(t, p, reloaded)
	require.Equal(t, identity.Ed25519, reloaded.Mach.OwnIdentity().SigningKey, "the same Olm account")
	require.Equal(t, identity.MasterKey, reloaded.Mach.CrossSigningKeys.MasterKey.PublicKey(), "the same identity")

	restarted, err := NewManager(mgr.cfg, mgr.db, http.DefaultClient, mgr.log)
	require.NoError(t, err)
	fresh, err := restarted.Get(ctx, user)
	require.NoError(t, err)
	require.Equal(t, identity.Curve25519, fresh.Mach.OwnIdentity().IdentityKey)
	signed, err := fresh.OwnDeviceSigned(ctx)
	require.NoError(t, err)
	require.True(t, signed)
	_, err = restarted.Get(ctx, "@heirloom_never:localhost")
	require.ErrorIs(t, err, ErrNotProvisioned)
	require.NoError(t, restarted.Shutdown(ctx))
}

// Over the cap of loaded machines, the least recently used one is unloaded, but never one used
// within the last minute (a caller may still hold it).
func TestLoadedMachinesAreCapped(t *testing.T) {
	ctx := context.Background()
	hs := newHomeserver(t)
	mgr := testManagerAt(t, hs.URL)
	var users []id.UserID
	for _, name := range []string{"a", "b", "c"} {
		users = append(users, id.UserID("@heirloom_"+name+":localhost"))
		_, err := mgr.Provision(ctx, users[len(users)-1], "")
		require.NoError(t, err)
	}
	mgr.maxLoaded = 2
	mgr.evictIdle() // nothing is idle
	require.Equal(t, 3, mgr.LoadedCount(), "all used within the last minute: kept over the cap")
	mgr.lock.Lock()
	mgr.machines[users[0]].lastUsed = time.Now().Add(-2 * time.Minute)
	mgr.machines[users[1]].lastUsed = time.Now().Add(-time.Hour)
	mgr.evictLocked(len(mgr.machines) - mgr.maxLoaded)
	_, kept := mgr.machines[users[0]]
	_, evicted := mgr.machines[users[1]]
	mgr.lock.Unlock()
	require.True(t, kept)
	require.False(t, evicted, "the least recently used one goes")
	require.Equal(t, 2, mgr.LoadedCount())
}

// The puppets' activity is recorded as they are used, at most once a minute, for the startup
// check of recently active puppets' devices.
func TestPuppetActivityIsRecorded(t *testing.T) {
	ctx := context.Background()
	hs := newHomeserver(t)
	mgr := testManagerAt(t, hs.URL)
	start := time.Now().Add(-time.Second).UnixMilli()
	_, err := mgr.Provision(ctx, "@heirloom_active:localhost", "")
	require.NoError(t, err)
	require.NoError(t, mgr.db.PutPuppet(ctx, &database.Puppet{UserID: "@heirloom_idle:localhost", DeviceID: "IDLE", Ready: true}))
	restarted, err := NewManager(mgr.cfg, mgr.db, http.DefaultClient, mgr.log)
	require.NoError(t, err)
	_, err = restarted.Get(ctx, "@heirloom_active:localhost")
	require.NoError(t, err)
	active, err := mgr.db.ListPuppetsActiveSince(ctx, start)
	require.NoError(t, err)
	var names []id.UserID
	for _, row := range active {
		names = append(names, row.UserID)
	}
	require.Contains(t, names, id.UserID("@heirloom_active:localhost"))
	require.NotContains(t, names, id.UserID("@heirloom_idle:localhost"))
	require.NoError(t, restarted.Shutdown(ctx))
}
