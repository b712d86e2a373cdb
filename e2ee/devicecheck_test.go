package e2ee

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

// intactKeyServer is a homeserver that holds every device it is asked about intact (keys, self-signing
// signature, master key MASTER), and records who it was asked about, query by query.
type intactKeyServer struct {
	mu      sync.Mutex
	queries [][]id.UserID
}

func (k *intactKeyServer) serve(t *testing.T) string {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/keys/query") {
			http.Error(w, `{"errcode":"M_UNRECOGNIZED"}`, http.StatusNotFound)
			return
		}
		var req struct {
			DeviceKeys map[id.UserID][]id.DeviceID `json:"device_keys"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		answer := map[string]map[string]any{"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}
		var asked []id.UserID
		for user, devices := range req.DeviceKeys {
			asked = append(asked, user)
			held := map[string]any{}
			for _, d := range devices {
				held[string(d)] = map[string]any{"user_id": user, "device_id": d, "algorithms": []string{"m.megolm.v1.aes-sha2"},
					"keys":       map[string]string{"ed25519:" + string(d): "ED", "curve25519:" + string(d): "CURVE"},
					"signatures": map[string]map[string]string{string(user): {"ed25519:SSK": "CROSS"}}}
			}
			answer["device_keys"][string(user)] = held
			answer["master_keys"][string(user)] = map[string]any{"user_id": user, "usage": []string{"master"}, "keys": map[string]string{"ed25519:MASTER": "MASTER"}}
			answer["self_signing_keys"][string(user)] = map[string]any{"user_id": user, "usage": []string{"self_signing"}, "keys": map[string]string{"ed25519:SSK": "SSK"}}
		}
		k.mu.Lock()
		k.queries = append(k.queries, asked)
		k.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(answer)
	}))
	t.Cleanup(hs.Close)
	return hs.URL
}

// asked returns how many queries were made and how often each user was asked about.
func (k *intactKeyServer) asked() (int, map[id.UserID]int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[id.UserID]int{}
	for _, q := range k.queries {
		for _, u := range q {
			out[u]++
		}
	}
	return len(k.queries), out
}

// putPuppets stores n ready puppets named prefix0…, last active at lastActive.
func putPuppets(t *testing.T, mgr *Manager, prefix string, n int, lastActive time.Time) []id.UserID {
	t.Helper()
	var users []id.UserID
	for i := range n {
		u := id.UserID(fmt.Sprintf("@heirloom_%s%d:localhost", prefix, i))
		require.NoError(t, mgr.db.PutPuppet(context.Background(), &database.Puppet{UserID: u, DeviceID: id.DeviceID(fmt.Sprintf("DEV%s%d", prefix, i)),
			MasterKey: "MASTER", Ready: true, LastActiveAt: lastActive.UnixMilli()}))
		users = append(users, u)
	}
	return users
}

// The startup check asks the homeserver only about the puppets active within a day, 100 to a
// query: a start with many idle puppets costs nothing for them.
func TestStartupChecksOnlyRecentlyActivePuppets(t *testing.T) {
	ks := &intactKeyServer{}
	mgr := testManagerAt(t, ks.serve(t))
	recent := putPuppets(t, mgr, "recent", 150, time.Now().Add(-time.Hour))
	putPuppets(t, mgr, "idle", 300, time.Now().Add(-2*recentActivity))

	require.NoError(t, mgr.CheckRecentDevices(context.Background()))
	queries, asked := ks.asked()
	require.Equal(t, 2, queries, "150 puppets, 100 to a query")
	require.Len(t, asked, len(recent), "only the recently active puppets were asked about")
	for _, u := range recent {
		require.Equal(t, 1, asked[u], u)
	}
	require.Empty(t, mgr.DeviceProblems())
	require.Zero(t, mgr.KeyQueries(), "the device checks are not the puppets' key queries")
}

// Any other puppet's device is checked when its machine first loads, once per process, in
// batches: loading 250 machines costs a few queries, each puppet asked about once.
func TestLoadedMachinesDevicesCheckedOnce(t *testing.T) {
	ks := &intactKeyServer{}
	mgr := testManagerAt(t, ks.serve(t))
	users := putPuppets(t, mgr, "idle", 250, time.Time{})
	ctx := context.Background()
	for _, u := range users {
		_, err := mgr.Get(ctx, u)
		require.NoError(t, err)
	}
	require.NoError(t, mgr.Shutdown(ctx)) // waits for the queued checks
	queries, asked := ks.asked()
	require.Len(t, asked, len(users))
	for _, u := range users {
		require.Equal(t, 1, asked[u], u)
	}
	require.LessOrEqual(t, queries, 2*len(users)/keysQueryBatch+2, "the checks went in batches")

	// Unloaded and loaded again: checked already.
	mgr.lock.Lock()
	for _, p := range mgr.machines {
		p.Mach.Destroy()
	}
	mgr.machines = map[id.UserID]*Puppet{}
	mgr.lock.Unlock()
	_, err := mgr.Get(ctx, users[0])
	require.NoError(t, err)
	again, _ := ks.asked()
	require.Equal(t, queries, again)
	require.Equal(t, len(users), mgr.devicesChecked())
}
