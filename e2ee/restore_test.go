package e2ee

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
	"github.com/heirloom-matrix/heirloom/metrics"
)

const (
	restorePuppet id.UserID   = "@heirloom_restore:localhost"
	restoreDevice id.DeviceID = "DEVRESTORE"
)

// testManagerAt is a manager over a real SQLite database whose homeserver is hs.
func testManagerAt(t *testing.T, hs string) *Manager {
	t.Helper()
	cfg := &config.Config{
		Homeserver: config.Homeserver{Address: hs, Domain: "localhost"},
		AppService: config.AppService{ASToken: "test-as-token-0123456789", PuppetPrefix: "heirloom_", BotUsername: "bot"},
		Database:   testdb.SQLite(t),
		Encryption: config.Encryption{PickleKey: "test-pickle-key-0123456789"},
	}
	db, err := database.Open(cfg.Database, zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	require.NoError(t, db.Upgrade(context.Background()))
	mgr, err := NewManager(cfg, db, http.DefaultClient, zerolog.Nop())
	require.NoError(t, err)
	require.NoError(t, db.PutPuppet(context.Background(), &database.Puppet{UserID: restorePuppet, DeviceID: restoreDevice,
		MasterKey: "MASTER", Ready: true}))
	return mgr
}

// keysAnswer is a /keys/query answer for the restore puppet: its device (unless gone), signed by
// the self-signing key (unless unsigned), under the master key.
func keysAnswer(gone, unsigned bool, master string) map[string]any {
	device := map[string]any{
		"user_id": restorePuppet, "device_id": restoreDevice, "algorithms": []string{"m.megolm.v1.aes-sha2"},
		"keys":       map[string]string{"ed25519:" + string(restoreDevice): "ED", "curve25519:" + string(restoreDevice): "CURVE"},
		"signatures": map[string]map[string]string{string(restorePuppet): {"ed25519:" + string(restoreDevice): "SELF"}},
	}
	if !unsigned {
		device["signatures"].(map[string]map[string]string)[string(restorePuppet)]["ed25519:SSK"] = "CROSS"
	}
	devices := map[string]any{}
	if !gone {
		devices[string(restoreDevice)] = device
	}
	xs := func(usage, key string) map[string]any {
		return map[string]any{string(restorePuppet): map[string]any{"user_id": restorePuppet, "usage": []string{usage},
			"keys": map[string]string{"ed25519:" + key: key}}}
	}
	return map[string]any{
		"device_keys":       map[string]any{string(restorePuppet): devices},
		"master_keys":       xs("master", master),
		"self_signing_keys": xs("self_signing", "SSK"),
	}
}

// What the homeserver lost decides what a restore must put back; another master key is not ours.
func TestDeviceStateFromTheHomeserver(t *testing.T) {
	for _, tc := range []struct {
		name             string
		gone, unsigned   bool
		master, missing  string
		wantOtherMasters bool
	}{
		{name: "intact", master: "MASTER"},
		{name: "deleted", gone: true, master: "MASTER", missing: "the device and its keys"},
		{name: "unsigned", unsigned: true, master: "MASTER", missing: "the self-signing signature on the device"},
		{name: "identity replaced", master: "OTHER", missing: "the cross-signing identity"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			answer := keysAnswer(tc.gone, tc.unsigned, tc.master)
			hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_ = json.NewEncoder(w).Encode(answer)
			}))
			t.Cleanup(hs.Close)
			mgr := testManagerAt(t, hs.URL)
			row, err := mgr.db.GetPuppet(context.Background(), restorePuppet)
			require.NoError(t, err)
			states, err := mgr.queryDevices(context.Background(), []*database.Puppet{row})
			require.NoError(t, err)
			require.Equal(t, tc.missing, states[restorePuppet].missing)
			if tc.master != "MASTER" {
				// Never replaced: the restore refuses before touching anything.
				require.ErrorIs(t, mgr.restoreDevice(context.Background(), row, states[restorePuppet]), errOtherIdentity)
			}
		})
	}
}

// A request the homeserver refuses with M_UNKNOWN_DEVICE reaches the caller unchanged, and queues
// one check of the device however many such answers come at once; the check, finding the device
// intact, restores nothing and reports no problem.
func TestUnknownDeviceAnswerQueuesOneCheck(t *testing.T) {
	var queries atomic.Int32
	release := make(chan struct{})
	var once sync.Once
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if strings.HasSuffix(r.URL.Path, "/keys/query") {
			queries.Add(1)
			<-release
			_ = json.NewEncoder(w).Encode(keysAnswer(false, false, "MASTER"))
			return
		}
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"errcode":"M_UNKNOWN_DEVICE","error":"Application service trying to use a device that doesn't exist"}`))
	}))
	t.Cleanup(hs.Close)
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	mgr := testManagerAt(t, hs.URL)
	p, err := mgr.LocalPuppet(context.Background(), restorePuppet, restoreDevice)
	require.NoError(t, err)
	p.Client.DefaultHTTPRetries = 0

	for range 5 {
		_, err = p.Client.JoinedRooms(context.Background())
		var he mautrix.HTTPError
		require.True(t, errors.As(err, &he), "%v", err)
		require.NotNil(t, he.RespError, "the error body reached mautrix unchanged")
		require.Equal(t, "M_UNKNOWN_DEVICE", he.RespError.ErrCode)
	}
	require.Eventually(t, func() bool { return queries.Load() == 1 }, 5*time.Second, 10*time.Millisecond)
	once.Do(func() { close(release) })
	require.NoError(t, mgr.Shutdown(context.Background()))
	require.Equal(t, int32(1), queries.Load(), "five answers, one check")
	require.Empty(t, mgr.DeviceProblems())
}

// counted returns the value of the counter (with the labels, name=value) an admin scrapes.
func counted(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metric:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
				}
				if !found {
					continue metric
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// withMetrics gives the manager metrics an admin scrapes from reg.
func withMetrics(t *testing.T, mgr *Manager) *prometheus.Registry {
	t.Helper()
	mgr.Metrics = metrics.New()
	reg := prometheus.NewRegistry()
	require.NoError(t, mgr.Metrics.Register(reg))
	return reg
}

// A puppet device the homeserver deleted (with its keys) is put back when its device list is
// reported changed: the same device ID, the same keys, signed by the same identity, so the
// puppet's peers see the device they knew. The admin sees a restore counted and no problem.
func TestDeletedDeviceIsRestoredWithTheSameKeys(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	reg := withMetrics(t, h.mine)
	identity, err := h.mine.ProvisionedIdentity(ctx, h.alice.UserID)
	require.NoError(t, err)
	h.hs.forgetDevice(h.alice.UserID, h.alice.DeviceID)
	h.mine.RouteDeviceListChanges(ctx, []id.UserID{h.alice.UserID})
	require.NoError(t, h.mine.Shutdown(ctx))

	h.hs.do(func(hs *homeserver) {
		n := 0
		for _, d := range hs.created {
			if d == identity.DeviceID {
				n++
			}
		}
		require.Equal(t, 2, n, "created again under its ID")
	})
	devices, err := h.bob.FetchDevices(ctx, []id.UserID{h.alice.UserID})
	require.NoError(t, err)
	device := devices[h.alice.UserID][h.alice.DeviceID]
	require.NotNil(t, device)
	require.Equal(t, h.alice.Mach.OwnIdentity().SigningKey, device.SigningKey, "the same keys")
	trust, err := h.bob.Mach.ResolveTrustContext(ctx, device)
	require.NoError(t, err)
	require.Equal(t, id.TrustStateCrossSignedTOFU, trust, "signed by the same identity")
	require.Empty(t, h.mine.DeviceProblems())
	require.Equal(t, 1.0, counted(t, reg, "heirloom_puppet_devices_restored_total", "trigger", metrics.TriggerDeviceList))
}

// A device heirloom cannot restore (the homeserver holds another identity for the puppet, or
// refuses to create the device) is reported, once per problem, and nothing is replaced; the
// report clears when the device is back.
func TestDeviceThatCannotBeRestoredIsReported(t *testing.T) {
	ctx := context.Background()
	t.Run("another identity on the homeserver", func(t *testing.T) {
		h := newTwoHeirlooms(t)
		reg := withMetrics(t, h.mine)
		var theirs mautrix.CrossSigningKeys
		h.hs.do(func(hs *homeserver) {
			theirs = hs.Parts[h.bob.UserID].MasterKeys[h.bob.UserID]
			theirs.UserID = h.alice.UserID
			hs.Parts[h.alice.UserID].MasterKeys[h.alice.UserID] = theirs
		})
		for range 2 {
			h.mine.checkDevices(ctx, []id.UserID{h.alice.UserID}, metrics.TriggerStartup)
		}
		problem, ok := h.mine.DeviceProblem(h.alice.UserID)
		require.True(t, ok)
		require.Equal(t, h.alice.DeviceID, problem.DeviceID)
		require.Equal(t, errOtherIdentity.Error(), problem.Error)
		require.Equal(t, []DeviceProblem{problem}, h.mine.DeviceProblems())
		require.Equal(t, 1.0, counted(t, reg, "heirloom_puppet_device_restore_failures_total", "trigger", metrics.TriggerStartup),
			"one problem, counted once")
		h.hs.do(func(hs *homeserver) {
			master := hs.Parts[h.alice.UserID].MasterKeys[h.alice.UserID]
			require.Equal(t, theirs.FirstKey(), master.FirstKey(), "heirloom replaced nothing")
		})
	})
	t.Run("device creation refused", func(t *testing.T) {
		h := newTwoHeirlooms(t)
		h.hs.forgetDevice(h.alice.UserID, h.alice.DeviceID)
		h.hs.do(func(hs *homeserver) { hs.fail["device"] = http.StatusForbidden })
		h.mine.checkDevices(ctx, []id.UserID{h.alice.UserID}, metrics.TriggerStartup)
		problem, ok := h.mine.DeviceProblem(h.alice.UserID)
		require.True(t, ok)
		require.Contains(t, problem.Error, "failed to recreate device")

		h.hs.do(func(hs *homeserver) { delete(hs.fail, "device") })
		h.mine.checkDevices(ctx, []id.UserID{h.alice.UserID}, metrics.TriggerStartup)
		require.Empty(t, h.mine.DeviceProblems(), "restored: the report clears")
	})
}
