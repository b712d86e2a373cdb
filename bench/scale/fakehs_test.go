package scale

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
)

// fakeHomeserver answers what heirloom asks a homeserver while it provisions puppets and starts,
// at once and from memory: it stands in for Synapse where Synapse's own cost would hide
// heirloom's (Synapse's figures are measured against the real one, in the e2e package). It keeps
// what a device query needs (device keys, cross-signing keys, signatures) and counts requests by
// endpoint.
type fakeHomeserver struct {
	*httptest.Server
	hsToken, appURL string

	mu       sync.Mutex
	requests map[string]int
	devices  map[string]map[string]json.RawMessage // user → device → device keys
	xsigning map[string]map[string]json.RawMessage // user → usage → key
}

func newFakeHomeserver(t testing.TB, hsToken string) *fakeHomeserver {
	hs := &fakeHomeserver{hsToken: hsToken, requests: map[string]int{},
		devices: map[string]map[string]json.RawMessage{}, xsigning: map[string]map[string]json.RawMessage{}}
	hs.Server = httptest.NewServer(http.HandlerFunc(hs.serve))
	t.Cleanup(hs.Close)
	return hs
}

// endpoints name the requests counted: the path with its variable parts replaced.
var endpoints = []struct {
	re   *regexp.Regexp
	name string
}{
	{regexp.MustCompile(`/devices/[^/]+$`), "/devices/{device}"},
	{regexp.MustCompile(`/profile/[^/]+/`), "/profile/{user}/"},
	{regexp.MustCompile(`/appservice/[^/]+/ping$`), "/appservice/{id}/ping"},
	{regexp.MustCompile(`/rooms/[^/]+/`), "/rooms/{room}/"},
}

func endpointOf(r *http.Request) string {
	path := r.URL.Path
	for _, e := range endpoints {
		path = e.re.ReplaceAllString(path, e.name)
	}
	return r.Method + " " + strings.TrimPrefix(strings.TrimPrefix(path, "/_matrix/client/v3"), "/_matrix/client")
}

// counts returns the requests counted so far, by endpoint, and resets them.
func (hs *fakeHomeserver) counts() map[string]int {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	out := hs.requests
	hs.requests = map[string]int{}
	return out
}

// formatCounts says how many requests were counted per puppet (per: how many puppets), or in all
// (per 0).
func formatCounts(counts map[string]int, per int) string {
	var names []string
	total := 0
	for name, n := range counts {
		names = append(names, name)
		total += n
	}
	sort.Strings(names)
	var b strings.Builder
	if per == 0 {
		fmt.Fprintf(&b, "%d requests to the homeserver:", total)
		for _, name := range names {
			fmt.Fprintf(&b, " %s %d;", name, counts[name])
		}
		return b.String()
	}
	fmt.Fprintf(&b, "%.2f requests to the homeserver per puppet:", float64(total)/float64(per))
	for _, name := range names {
		fmt.Fprintf(&b, " %s %.2f;", name, float64(counts[name])/float64(per))
	}
	return b.String()
}

func (hs *fakeHomeserver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	hs.mu.Lock()
	hs.requests[endpointOf(r)]++
	hs.mu.Unlock()
	user := r.URL.Query().Get("user_id")
	path := r.URL.Path
	switch {
	case strings.HasSuffix(path, "/versions"):
		writeJSON(w, http.StatusOK, `{"versions":["v1.11"]}`)
	case strings.HasSuffix(path, "/register"):
		writeJSON(w, http.StatusOK, `{"user_id":"`+user+`"}`)
	case strings.Contains(path, "/devices/") && r.Method == http.MethodPut:
		writeJSON(w, http.StatusCreated, `{}`)
	case strings.HasSuffix(path, "/keys/upload"):
		hs.uploadKeys(w, user, body)
	case strings.HasSuffix(path, "/keys/device_signing/upload"):
		hs.uploadCrossSigning(w, user, body)
	case strings.HasSuffix(path, "/keys/signatures/upload"):
		writeJSON(w, http.StatusOK, `{"failures":{}}`)
	case strings.HasSuffix(path, "/keys/query"):
		hs.queryKeys(w, body)
	case strings.HasSuffix(path, "/ping") && strings.Contains(path, "/appservice/"):
		hs.ping(w)
	case strings.Contains(path, "/profile/"):
		writeJSON(w, http.StatusOK, `{}`)
	case strings.HasSuffix(path, "/sync"):
		writeJSON(w, http.StatusOK, `{"next_batch":"s1","to_device":{"events":[]}}`)
	default:
		writeJSON(w, http.StatusNotFound, `{"errcode":"M_UNRECOGNIZED","error":"not in the fake homeserver"}`)
	}
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

func (hs *fakeHomeserver) uploadKeys(w http.ResponseWriter, user string, body []byte) {
	var req struct {
		DeviceKeys *struct {
			DeviceID string `json:"device_id"`
		} `json:"device_keys"`
		OneTimeKeys map[string]json.RawMessage `json:"one_time_keys"`
	}
	_ = json.Unmarshal(body, &req)
	if req.DeviceKeys != nil {
		var raw struct {
			DeviceKeys json.RawMessage `json:"device_keys"`
		}
		_ = json.Unmarshal(body, &raw)
		hs.mu.Lock()
		if hs.devices[user] == nil {
			hs.devices[user] = map[string]json.RawMessage{}
		}
		hs.devices[user][req.DeviceKeys.DeviceID] = raw.DeviceKeys
		hs.mu.Unlock()
	}
	// Every key it was sent, and none claimed: the count a replenishment reads.
	writeJSON(w, http.StatusOK, fmt.Sprintf(`{"one_time_key_counts":{"signed_curve25519":%d}}`, max(len(req.OneTimeKeys), 50)))
}

func (hs *fakeHomeserver) uploadCrossSigning(w http.ResponseWriter, user string, body []byte) {
	var req map[string]json.RawMessage
	_ = json.Unmarshal(body, &req)
	hs.mu.Lock()
	hs.xsigning[user] = req
	hs.mu.Unlock()
	writeJSON(w, http.StatusOK, `{}`)
}

// queryKeys answers with the devices, master and self-signing keys it holds; devices come back
// with the self-signing key's signature (heirloom uploads it, and checks for it at startup).
func (hs *fakeHomeserver) queryKeys(w http.ResponseWriter, body []byte) {
	var req struct {
		DeviceKeys map[string][]string `json:"device_keys"`
	}
	_ = json.Unmarshal(body, &req)
	out := map[string]map[string]any{"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}
	hs.mu.Lock()
	for user := range req.DeviceKeys {
		devices := map[string]any{}
		ssk := hs.xsigning[user]["self_signing_key"]
		for id, keys := range hs.devices[user] {
			devices[id] = withSignature(keys, user, ssk)
		}
		out["device_keys"][user] = devices
		if m, ok := hs.xsigning[user]["master_key"]; ok {
			out["master_keys"][user] = m
			out["self_signing_keys"][user] = ssk
		}
	}
	hs.mu.Unlock()
	data, _ := json.Marshal(out)
	writeJSON(w, http.StatusOK, string(data))
}

// withSignature adds a signature by the self-signing key to device keys, as the homeserver
// holds them once heirloom uploaded it.
func withSignature(keys json.RawMessage, user string, ssk json.RawMessage) json.RawMessage {
	var sk struct {
		Keys map[string]string `json:"keys"`
	}
	var dk map[string]any
	if json.Unmarshal(ssk, &sk) != nil || json.Unmarshal(keys, &dk) != nil {
		return keys
	}
	sigs, _ := dk["signatures"].(map[string]any)
	if sigs == nil {
		sigs = map[string]any{}
	}
	own, _ := sigs[user].(map[string]any)
	if own == nil {
		own = map[string]any{}
	}
	for keyID := range sk.Keys {
		own[keyID] = "signature"
	}
	sigs[user] = own
	dk["signatures"] = sigs
	data, _ := json.Marshal(dk)
	return data
}

// ping pings the appservice, as Synapse does for POST /appservice/{id}/ping.
func (hs *fakeHomeserver) ping(w http.ResponseWriter) {
	req, _ := http.NewRequest(http.MethodPost, hs.appURL+"/_matrix/app/v1/ping", bytes.NewReader([]byte(`{"transaction_id":"bench"}`)))
	req.Header.Set("Authorization", "Bearer "+hs.hsToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		writeJSON(w, http.StatusBadGateway, `{"errcode":"M_CONNECTION_FAILED","error":"`+err.Error()+`"}`)
		return
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		writeJSON(w, http.StatusBadGateway, fmt.Sprintf(`{"errcode":"M_BAD_STATUS","error":"ping","status":%d}`, resp.StatusCode))
		return
	}
	writeJSON(w, http.StatusOK, `{"duration_ms":1}`)
}
