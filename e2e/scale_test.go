package e2e

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
)

func provision(tb testing.TB) {
	userID := "@" + name("heirloom_scale") + ":" + domain
	var p puppetIdentity
	code, err := e.api("PUT", "/puppets/"+userID, map[string]any{}, &p)
	if err != nil || code != 200 || p.MasterKey == "" {
		tb.Fatalf("provisioning %s: %d %v", userID, code, err)
	}
}

// BenchmarkProvisionPuppet provisions one new puppet per iteration against the real Synapse:
// registration, device, keys, cross-signing identity, device signature.
func BenchmarkProvisionPuppet(b *testing.B) {
	for i := 0; i < b.N; i++ {
		provision(b)
	}
}

// BenchmarkIdlePuppets provisions b.N puppets, restarts heirloom, and reports its RSS with the
// puppets idle (their machines are loaded lazily, so none is in memory) and after loading all.
func BenchmarkIdlePuppets(b *testing.B) {
	for i := 0; i < b.N; i++ {
		provision(b)
	}
	b.StopTimer()
	e.stopHeirloom(syscall.SIGTERM)
	if err := e.startHeirloom(); err != nil {
		b.Fatal(err)
	}
	var status struct {
		Puppets int `json:"puppets"`
		Loaded  int `json:"loaded_machines"`
	}
	apiOK(b, "GET", "/status", nil, &status)
	if status.Loaded != 0 || status.Puppets < b.N {
		b.Fatalf("after a restart: %+v", status)
	}
	b.ReportMetric(float64(procStatus(b, "VmRSS")), "idle-rss-bytes")
	b.ReportMetric(float64(status.Puppets), "puppets")
}

// BenchmarkRouteToDevicePlaintext posts one transaction of b.N plaintext to-device events (room
// key request cancellations), each to a different provisioned (and unloaded) puppet, and measures
// heirloom routing them to their machines, which it loads lazily. The events are not encrypted, so
// no Olm decryption is measured: this is the cost of routing and of loading machines. Run with
// -benchtime 1000x for the 1,000-event transaction.
func BenchmarkRouteToDevicePlaintext(b *testing.B) {
	type target struct{ user, device string }
	targets := make([]target, b.N)
	for i := range targets {
		userID := "@" + name("heirloom_route") + ":" + domain
		var p puppetIdentity
		if code, err := e.api("PUT", "/puppets/"+userID, map[string]any{}, &p); err != nil || code != 200 {
			b.Fatalf("provisioning: %d %v", code, err)
		}
		targets[i] = target{p.UserID, p.DeviceID}
	}
	e.stopHeirloom(syscall.SIGTERM) // start with no machine loaded
	if err := e.startHeirloom(); err != nil {
		b.Fatal(err)
	}
	events := make([]map[string]any, len(targets))
	for i, t := range targets {
		events[i] = map[string]any{"type": "m.room_key_request", "sender": "@someone:" + domain, "to_user_id": t.user,
			"to_device_id": t.device, "content": map[string]any{"action": "request_cancellation", "request_id": fmt.Sprint("r", i),
				"requesting_device_id": "OTHER"}}
	}
	hsToken := readHSToken(b)
	b.ResetTimer()
	code, err := e.request("PUT", fmt.Sprintf("http://127.0.0.1:%d/_matrix/app/v1/transactions/route-%d", e.asPort, b.N),
		"Bearer "+hsToken, map[string]any{"events": []any{}, "de.sorunome.msc2409.to_device": events}, nil)
	b.StopTimer()
	if err != nil || code != 200 {
		b.Fatalf("transaction: %d %v", code, err)
	}
	var status struct {
		Loaded int `json:"loaded_machines"`
	}
	apiOK(b, "GET", "/status", nil, &status)
	if status.Loaded < b.N {
		b.Fatalf("only %d machines loaded for %d events", status.Loaded, b.N)
	}
	b.ReportMetric(float64(procStatus(b, "VmRSS")), "rss-bytes")
}

func readHSToken(tb testing.TB) string {
	tb.Helper()
	data, err := os.ReadFile(e.configPath)
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "hs_token: "); ok {
			return v
		}
	}
	tb.Fatal("no hs_token in the config")
	return ""
}

// BenchmarkInviteToFirstDecrypt measures, on the local Synapse, the time from the invite call to
// the invitee's first decrypted historical message: a puppet inviting a js-sdk user, and a js-sdk
// user inviting another, in the same run.
func BenchmarkInviteToFirstDecrypt(b *testing.B) {
	b.Run("puppet_to_js", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			p := newPuppet(b)
			u := newJSUser(b, true)
			roomID := puppetCreateRoom(b, p, "shared")
			puppetSend(b, p, roomID, "history")
			b.StartTimer()
			puppetInvite(b, p, roomID, u.UserID)
			e.peer(b, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
			if _, ok := decryptedBodies(jsMessages(b, u, roomID, 1, 60000))["history"]; !ok {
				b.Fatal("not decrypted")
			}
		}
	})
	b.Run("js_to_js", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			alice, bob := newJSUser(b, true), newJSUser(b, true)
			roomID := jsCreateRoom(b, alice, "shared")
			jsSend(b, alice, roomID, "history")
			b.StartTimer()
			e.peer(b, "invite", map[string]any{"user": alice.UserID, "room_id": roomID, "target": bob.UserID}, nil)
			e.peer(b, "join", map[string]any{"user": bob.UserID, "room_id": roomID}, nil)
			if _, ok := decryptedBodies(jsMessages(b, bob, roomID, 1, 60000))["history"]; !ok {
				b.Fatal("not decrypted")
			}
		}
	})
}
