package e2ee

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"
)

// A new puppet device uploads 50 one-time keys, as Element does (vodozemac keeps 50 on the
// homeserver): not 51, one row more for the homeserver to store.
func TestProvisionUploadsFiftyOneTimeKeys(t *testing.T) {
	var mu sync.Mutex
	var uploaded []int
	var deviceKeys, crossSigning json.RawMessage
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		mu.Lock()
		defer mu.Unlock()
		switch {
		case strings.HasSuffix(r.URL.Path, "/keys/upload"):
			var req struct {
				DeviceKeys  json.RawMessage            `json:"device_keys"`
				OneTimeKeys map[string]json.RawMessage `json:"one_time_keys"`
			}
			_ = json.Unmarshal(body, &req)
			if len(req.DeviceKeys) > 0 {
				deviceKeys = req.DeviceKeys
			}
			uploaded = append(uploaded, len(req.OneTimeKeys))
			_, _ = io.WriteString(w, `{"one_time_key_counts":{"signed_curve25519":50}}`)
		case strings.HasSuffix(r.URL.Path, "/keys/device_signing/upload"):
			crossSigning = body
			_, _ = io.WriteString(w, `{}`)
		case strings.HasSuffix(r.URL.Path, "/keys/query"):
			var xs map[string]json.RawMessage
			_ = json.Unmarshal(crossSigning, &xs)
			var dk struct {
				DeviceID string `json:"device_id"`
			}
			_ = json.Unmarshal(deviceKeys, &dk)
			answer, _ := json.Marshal(map[string]any{
				"device_keys":       map[string]any{"@heirloom_new:localhost": map[string]json.RawMessage{dk.DeviceID: deviceKeys}},
				"master_keys":       map[string]json.RawMessage{"@heirloom_new:localhost": xs["master_key"]},
				"self_signing_keys": map[string]json.RawMessage{"@heirloom_new:localhost": xs["self_signing_key"]},
			})
			_, _ = w.Write(answer)
		case strings.HasSuffix(r.URL.Path, "/keys/signatures/upload"):
			_, _ = io.WriteString(w, `{"failures":{}}`)
		default: // register, the device
			_, _ = io.WriteString(w, `{}`)
		}
	}))
	t.Cleanup(hs.Close)
	mgr := testManagerAt(t, hs.URL)
	_, err := mgr.Provision(context.Background(), id.UserID("@heirloom_new:localhost"), "")
	require.NoError(t, err)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []int{50}, uploaded, "one upload of the device keys with 50 one-time keys")
}
