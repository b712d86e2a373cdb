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

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
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
