package e2ee

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/e2ee/cryptostore"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
)

// signedDevice is the device keys a real device of user uploads, signed by the device.
func signedDevice(t testing.TB, user id.UserID, device id.DeviceID) mautrix.DeviceKeys {
	t.Helper()
	account := crypto.NewOlmAccount()
	keys := mautrix.DeviceKeys{
		UserID: user, DeviceID: device, Algorithms: []id.Algorithm{id.AlgorithmMegolmV1, id.AlgorithmOlmV1},
		Keys: map[id.DeviceKeyID]string{
			id.NewDeviceKeyID(id.KeyAlgorithmCurve25519, device): string(account.IdentityKey()),
			id.NewDeviceKeyID(id.KeyAlgorithmEd25519, device):    string(account.SigningKey()),
		},
	}
	sig, err := account.SignJSON(keys)
	require.NoError(t, err)
	keys.Signatures = signatures.NewSingleSignature(user, id.KeyAlgorithmEd25519, device.String(), sig)
	return keys
}

// keyServer is a homeserver's /keys/query: it answers with the devices it holds and records every
// query's users.
type keyServer struct {
	mu      sync.Mutex
	devices map[id.UserID]map[id.DeviceID]mautrix.DeviceKeys
	queries [][]id.UserID
	fail    bool
	// during runs while a query is answered, before the answer leaves.
	during func()
}

func newKeyServer(t *testing.T) (*keyServer, *url.URL) {
	ks := &keyServer{devices: map[id.UserID]map[id.DeviceID]mautrix.DeviceKeys{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/_matrix/client/v3/keys/query" {
			http.NotFound(w, r)
			return
		}
		var req mautrix.ReqQueryKeys
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ks.mu.Lock()
		var users []id.UserID
		for u := range req.DeviceKeys {
			users = append(users, u)
		}
		sort.Slice(users, func(i, j int) bool { return users[i] < users[j] })
		ks.queries = append(ks.queries, users)
		fail, during := ks.fail, ks.during
		resp := mautrix.RespQueryKeys{DeviceKeys: map[id.UserID]map[id.DeviceID]mautrix.DeviceKeys{}}
		for _, u := range users {
			resp.DeviceKeys[u] = map[id.DeviceID]mautrix.DeviceKeys{}
			for d, k := range ks.devices[u] {
				resp.DeviceKeys[u][d] = k
			}
		}
		ks.mu.Unlock()
		if during != nil {
			during()
		}
		if fail {
			w.WriteHeader(http.StatusBadGateway)
			_, _ = w.Write([]byte(`{"errcode":"M_UNKNOWN","error":"down"}`))
			return
		}
		_ = json.NewEncoder(w).Encode(resp)
	}))
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	require.NoError(t, err)
	return ks, u
}

func (ks *keyServer) add(t *testing.T, user id.UserID, device id.DeviceID) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.devices[user] == nil {
		ks.devices[user] = map[id.DeviceID]mautrix.DeviceKeys{}
	}
	ks.devices[user][device] = signedDevice(t, user, device)
}

// set changes the server's behaviour.
func (ks *keyServer) set(change func()) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	change()
}

// takeQueries returns the queries answered since the last call.
func (ks *keyServer) takeQueries() [][]id.UserID {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	q := ks.queries
	ks.queries = nil
	return q
}

// keyServerPuppet is a manager and a puppet of it whose homeserver is a fresh keyServer.
func keyServerPuppet(t *testing.T) (*Manager, *keyServer, *Puppet) {
	t.Helper()
	mgr, _ := testManager(t)
	ks, hsURL := newKeyServer(t)
	p := testPuppet(t, mgr, "sender")
	p.Client.HomeserverURL = hsURL
	return mgr, ks, p
}

// fetchedOnce has the puppet fetch the users' lists once, so they are tracked and current, and
// forgets that query.
func fetchedOnce(t *testing.T, p *Puppet, ks *keyServer, users ...id.UserID) {
	t.Helper()
	_, err := p.memberDevices(context.Background(), users, nil)
	require.NoError(t, err)
	ks.takeQueries()
}

func deviceIDs(devices map[id.UserID]map[id.DeviceID]*id.Device) map[id.UserID][]id.DeviceID {
	out := map[id.UserID][]id.DeviceID{}
	for u, ds := range devices {
		for d := range ds {
			out[u] = append(out[u], d)
		}
		sort.Slice(out[u], func(i, j int) bool { return out[u][i] < out[u][j] })
	}
	return out
}

// A room's members are queried once, then their devices come from the shared tables until a
// change is reported for one of them; a restart's mark re-queries everyone; another puppet uses
// what the first fetched.
func TestMemberDevicesQueryOnlyWhatChanged(t *testing.T) {
	ctx := context.Background()
	mgr, _ := testManager(t)
	ks, hsURL := newKeyServer(t)
	p, q := testPuppet(t, mgr, "sender"), testPuppet(t, mgr, "other")
	p.Client.HomeserverURL, q.Client.HomeserverURL = hsURL, hsURL
	alice, bob := id.UserID("@alice:localhost"), id.UserID("@bob:localhost")
	ks.add(t, alice, "ALICE1")
	ks.add(t, bob, "BOB1")
	members := []id.UserID{alice, bob}

	got, err := p.memberDevices(ctx, members, nil)
	require.NoError(t, err)
	require.Equal(t, map[id.UserID][]id.DeviceID{alice: {"ALICE1"}, bob: {"BOB1"}}, deviceIDs(got))
	require.Equal(t, [][]id.UserID{{alice, bob}}, ks.takeQueries(), "users never queried are queried, in one query")

	for range 3 {
		got, err = p.memberDevices(ctx, members, nil)
		require.NoError(t, err)
		require.Equal(t, map[id.UserID][]id.DeviceID{alice: {"ALICE1"}, bob: {"BOB1"}}, deviceIDs(got))
	}
	got, err = q.memberDevices(ctx, members, nil)
	require.NoError(t, err)
	require.Equal(t, map[id.UserID][]id.DeviceID{alice: {"ALICE1"}, bob: {"BOB1"}}, deviceIDs(got))
	require.Empty(t, ks.takeQueries(), "unchanged lists cost no query, for any puppet")

	ks.add(t, alice, "ALICE2")
	mgr.RouteDeviceListChanges(ctx, []id.UserID{alice})
	got, err = q.memberDevices(ctx, members, nil)
	require.NoError(t, err)
	require.Equal(t, map[id.UserID][]id.DeviceID{alice: {"ALICE1", "ALICE2"}, bob: {"BOB1"}}, deviceIDs(got))
	require.Equal(t, [][]id.UserID{{alice}}, ks.takeQueries(), "only the changed member is queried")
	_, err = p.memberDevices(ctx, members, nil)
	require.NoError(t, err)
	require.Empty(t, ks.takeQueries(), "one puppet's query serves the others")

	require.NoError(t, mgr.MarkDeviceListsOutdated(ctx))
	_, err = p.memberDevices(ctx, members, nil)
	require.NoError(t, err)
	require.Equal(t, [][]id.UserID{{alice, bob}}, ks.takeQueries(), "after a restart every list is queried again")
}

// A change reported while a query is in flight may not be in its answer: the list stays outdated.
func TestMemberDevicesChangeDuringQuery(t *testing.T) {
	ctx := context.Background()
	mgr, ks, p := keyServerPuppet(t)
	alice := id.UserID("@alice:localhost")
	ks.add(t, alice, "ALICE1")
	fetchedOnce(t, p, ks, alice)

	mgr.RouteDeviceListChanges(ctx, []id.UserID{alice})
	once := sync.Once{}
	ks.set(func() {
		ks.during = func() {
			once.Do(func() { mgr.RouteDeviceListChanges(ctx, []id.UserID{alice}) }) // a second change, answered from before it
		}
	})
	_, err := p.memberDevices(ctx, []id.UserID{alice}, nil)
	require.NoError(t, err)
	require.Len(t, ks.takeQueries(), 1)
	ks.add(t, alice, "ALICE2")
	got, err := p.memberDevices(ctx, []id.UserID{alice}, nil)
	require.NoError(t, err)
	require.Len(t, ks.takeQueries(), 1, "the list the change came during is queried again")
	require.Equal(t, map[id.UserID][]id.DeviceID{alice: {"ALICE1", "ALICE2"}}, deviceIDs(got))
}

// When the query fails, the last known devices are used and the list stays outdated.
func TestMemberDevicesQueryFailure(t *testing.T) {
	ctx := context.Background()
	mgr, ks, p := keyServerPuppet(t)
	alice, carol := id.UserID("@alice:localhost"), id.UserID("@carol:localhost")
	ks.add(t, alice, "ALICE1")
	ks.add(t, carol, "CAROL1")
	_, err := p.memberDevices(ctx, []id.UserID{alice}, nil)
	require.NoError(t, err)
	ks.takeQueries()

	mgr.RouteDeviceListChanges(ctx, []id.UserID{alice})
	ks.set(func() { ks.fail = true })
	got, err := p.memberDevices(ctx, []id.UserID{alice, carol}, nil)
	require.NoError(t, err)
	require.Equal(t, map[id.UserID][]id.DeviceID{alice: {"ALICE1"}}, deviceIDs(got),
		"the last known devices, and none for a user never fetched")
	require.NotEmpty(t, ks.takeQueries())
	ks.set(func() { ks.fail = false })
	got, err = p.memberDevices(ctx, []id.UserID{alice, carol}, nil)
	require.NoError(t, err)
	require.Equal(t, [][]id.UserID{{alice, carol}}, ks.takeQueries(), "both are queried again")
	require.Equal(t, map[id.UserID][]id.DeviceID{alice: {"ALICE1"}, carol: {"CAROL1"}}, deviceIDs(got))
}

// deviceListStates and storedDevices read the shared tables as mautrix writes them, and
// MarkDeviceListsOutdated marks what mautrix reads as outdated, on every backend.
func TestDeviceTablesRoundTripThroughMautrix(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, dbCfg config.Database) {
		ctx := context.Background()
		mgr := testManagerOn(t, dbCfg)
		alice, bob, carol, dave := id.UserID("@alice:localhost"), id.UserID("@bob:localhost"), id.UserID("@carol:localhost"), id.UserID("@dave:localhost")
		device := func(user id.UserID, d id.DeviceID, trust id.TrustState) *id.Device {
			keys := signedDevice(t, user, d)
			return &id.Device{UserID: user, DeviceID: d, IdentityKey: keys.Keys.GetCurve25519(d), SigningKey: keys.Keys.GetEd25519(d),
				Trust: trust, Name: "device " + string(d)}
		}
		require.NoError(t, mgr.shared.PutDevices(ctx, alice, map[id.DeviceID]*id.Device{
			"A1": device(alice, "A1", id.TrustStateVerified), "A2": device(alice, "A2", id.TrustStateBlacklisted)}))
		require.NoError(t, mgr.shared.PutDevices(ctx, bob, map[id.DeviceID]*id.Device{"B1": device(bob, "B1", id.TrustStateUnset)}))
		require.NoError(t, mgr.shared.PutDevices(ctx, bob, map[id.DeviceID]*id.Device{"B2": device(bob, "B2", id.TrustStateUnset)})) // B1 deleted
		require.NoError(t, mgr.shared.PutDevices(ctx, carol, map[id.DeviceID]*id.Device{}))
		// A device stored without its user's list (mautrix stores a puppet's own device so): not
		// tracked, so GetDevices returns nothing for dave, and neither may storedDevices.
		require.NoError(t, mgr.shared.PutDevice(ctx, dave, device(dave, "D1", id.TrustStateUnset)))
		require.NoError(t, mgr.shared.MarkTrackedUsersOutdated(ctx, []id.UserID{bob}))
		for range 6 {
			require.NoError(t, mgr.shared.IncrementTrackedUsersErrorCount(ctx, []id.UserID{bob}))
		}
		users := []id.UserID{alice, bob, carol, dave}

		states, err := mgr.deviceListStates(ctx, users)
		require.NoError(t, err)
		tracked, err := mgr.shared.FilterTrackedUsers(ctx, users)
		require.NoError(t, err)
		require.ElementsMatch(t, tracked, []id.UserID{alice, bob, carol})
		require.Len(t, states, 3, "dave was never fetched")
		require.False(t, states[alice].Outdated)
		require.True(t, states[bob].Outdated)
		require.Equal(t, 6, states[bob].Failures)
		require.NotZero(t, states[bob].LastAttempt)
		outdated, err := mgr.shared.GetOutdatedTrackedUsers(ctx)
		require.NoError(t, err)
		require.Empty(t, outdated, "mautrix waits as DueAt does")
		require.Greater(t, states[bob].DueAt(), states[bob].LastAttempt)

		stored, err := mgr.storedDevices(ctx, users)
		require.NoError(t, err)
		for _, u := range users {
			want, err := mgr.shared.GetDevices(ctx, u)
			require.NoError(t, err)
			if len(want) == 0 {
				require.NotContains(t, stored, u)
				continue
			}
			require.Equal(t, want, stored[u], "%s's devices as mautrix reads them", u)
		}

		require.NoError(t, mgr.MarkDeviceListsOutdated(ctx))
		states, err = mgr.deviceListStates(ctx, users)
		require.NoError(t, err)
		for _, u := range []id.UserID{alice, bob, carol} {
			require.True(t, states[u].Outdated, "%s is outdated after the mark", u)
		}
	})
}

// An invited member's devices are queried on every send: the homeserver reports device-list
// changes only of users who share a joined room with heirloom's users, and an invitee may not.
func TestMemberDevicesInviteesQueriedEverySend(t *testing.T) {
	ctx := context.Background()
	_, ks, p := keyServerPuppet(t)
	alice, ivan := id.UserID("@alice:localhost"), id.UserID("@ivan:localhost")
	ks.add(t, alice, "ALICE1")
	ks.add(t, ivan, "IVAN1")
	members, invited := []id.UserID{alice, ivan}, map[id.UserID]bool{ivan: true}
	_, err := p.memberDevices(ctx, members, invited)
	require.NoError(t, err)
	require.Equal(t, [][]id.UserID{{alice, ivan}}, ks.takeQueries())

	ks.add(t, ivan, "IVAN2") // never reported
	got, err := p.memberDevices(ctx, members, invited)
	require.NoError(t, err)
	require.Equal(t, [][]id.UserID{{ivan}}, ks.takeQueries(), "the invitee alone is queried again")
	require.Equal(t, map[id.UserID][]id.DeviceID{alice: {"ALICE1"}, ivan: {"IVAN1", "IVAN2"}}, deviceIDs(got))
}

// A fetch outside the send path (an invite's bundle, a bundle's sender, the admin bot) that is in
// flight when a change is reported leaves the list outdated too.
func TestFetchDevicesChangeDuringQuery(t *testing.T) {
	ctx := context.Background()
	mgr, ks, p := keyServerPuppet(t)
	alice := id.UserID("@alice:localhost")
	ks.add(t, alice, "ALICE1")
	fetchedOnce(t, p, ks, alice)

	once := sync.Once{}
	ks.set(func() {
		ks.during = func() { once.Do(func() { mgr.RouteDeviceListChanges(ctx, []id.UserID{alice}) }) }
	})
	_, err := p.FetchDevices(ctx, []id.UserID{alice})
	require.NoError(t, err)
	require.Len(t, ks.takeQueries(), 1)
	ks.add(t, alice, "ALICE2")
	got, err := p.memberDevices(ctx, []id.UserID{alice}, nil)
	require.NoError(t, err)
	require.Len(t, ks.takeQueries(), 1, "the change that came during the other fetch is queried")
	require.Equal(t, map[id.UserID][]id.DeviceID{alice: {"ALICE1", "ALICE2"}}, deviceIDs(got))
}

// sharedWith answers as mautrix's IsOutboundGroupSessionShared answers for each device, on every
// backend, across more devices than one statement takes.
func TestSharedWithAnswersAsMautrix(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, dbCfg config.Database) {
		ctx := context.Background()
		mgr := testManagerOn(t, dbCfg)
		p := testPuppet(t, mgr, "sender")
		const session, other = id.SessionID("SESSION"), id.SessionID("OTHER")
		var devices []cryptostore.Recipient
		for i := range 1200 {
			devices = append(devices, cryptostore.Recipient{UserID: id.UserID(fmt.Sprintf("@user%d:localhost", i%300)), IdentityKey: id.IdentityKey(fmt.Sprintf("key%04d", i))})
		}
		for i, d := range devices {
			switch i % 3 {
			case 0:
				require.NoError(t, p.Store.MarkOutboundGroupSessionShared(ctx, d.UserID, d.IdentityKey, session))
			case 1: // shared, but another session
				require.NoError(t, p.Store.MarkOutboundGroupSessionShared(ctx, d.UserID, d.IdentityKey, other))
			}
		}
		// The identity key of a device the session went to, under another user: not shared.
		stranger := cryptostore.Recipient{UserID: "@stranger:localhost", IdentityKey: devices[0].IdentityKey}
		got, err := p.sharedWith(ctx, session, append(devices, stranger))
		require.NoError(t, err)
		require.Len(t, got, 400)
		for _, d := range append(devices, stranger) {
			want, err := p.Store.IsOutboundGroupSessionShared(ctx, d.UserID, d.IdentityKey, session)
			require.NoError(t, err)
			require.Equal(t, want, got[d], "%v", d)
		}
	})
}
