package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The to-device sweep (docs/deployment.md: Synapse can skip pushing to-device messages; heirloom
// fetches them by syncing as the puppet's device). These tests run a heirloom under the "nopush"
// registration, to which Synapse pushes no to-device message at all: whatever keys and bundles
// reach its puppets, a sweep fetched.

// instanceMetric sums the instance's Prometheus series that start with name.
func (h *instance) metric(t testing.TB, name string) float64 {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", h.asPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	total := 0.0
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, name) {
			fields := strings.Fields(line)
			v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
			if err != nil {
				t.Fatalf("metrics line %q: %v", line, err)
			}
			total += v
		}
	}
	return total
}

// requireNoPush checks that the instance really got no to-device message pushed.
func requireNoPush(t *testing.T, h *instance) {
	t.Helper()
	if n := h.metric(t, `heirloom_events_total{section="to_device"`); n != 0 {
		t.Fatalf("Synapse pushed %v to-device events to the nopush registration: the test proves nothing", n)
	}
}

// sweptFor matches the sweep's log line for the puppet.
func sweptFor(p puppetIdentity) func(logLine) bool {
	return msgIs("Swept to-device messages from the device inbox", "puppet", p.UserID)
}

// jsOwnSession returns the ID of the js user's own megolm session in the room (not one the puppet
// shared with it).
func jsOwnSession(t *testing.T, u jsUser, p puppetIdentity, roomID string) string {
	t.Helper()
	for _, k := range jsRawKeys(t, u, roomID) {
		if k.SenderKey != p.Curve25519 {
			return k.SessionID
		}
	}
	t.Fatal("the js user holds no session of its own")
	return ""
}

// A timeline event the puppet cannot decrypt makes heirloom sweep the device inbox and retry.
func TestSweepOnUndecryptableEvent(t *testing.T) {
	h := startInstance(t, "nopush", nil)
	p := h.newPuppet(t)
	u := newJSUser(t, true)
	roomID := h.createRoom(t, p, "shared", u.UserID)
	e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
	mark := h.mark(t)
	jsSend(t, u, roomID, "only in the inbox")
	if _, ok := mark.find(t, sweptFor(p)); ok {
		t.Fatal("a sweep ran before the timeline was read")
	}
	// The first read finds the event undecryptable, sweeps, and decrypts it.
	events := h.messages(t, p, roomID)
	var got *timelineEvent
	for i := range events {
		if events[i].Sender == u.UserID {
			got = &events[i]
		}
	}
	if got == nil || !got.Decrypted || got.body() != "only in the inbox" {
		t.Fatalf("the first read of the timeline did not decrypt the js user's message: %+v", got)
	}
	mark.wait(t, 5*time.Second, "the sweep for "+p.UserID, sweptFor(p))
	requireNoPush(t, h)
	// Nothing was pushed, so what the sweep brought was recovered.
	if n := h.metric(t, "heirloom_to_device_recovered_total"); n < 1 {
		t.Fatalf("heirloom_to_device_recovered_total = %v after a sweep found the room key", n)
	}
}

// A puppet that joins from an invite without having the inviter's bundle sweeps the inbox, finds
// the bundle there and imports it.
func TestSweepOnJoinWithoutBundle(t *testing.T) {
	h := startInstance(t, "nopush", nil)
	p := h.newPuppet(t)
	u := newJSUser(t, true)
	roomID := jsCreateRoom(t, u, "shared")
	jsSend(t, u, roomID, "history in the inbox")
	mark := h.mark(t)
	// js-sdk's invite shares the history; the puppet joins by policy (auto_join has @js_*).
	e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": roomID, "target": p.UserID}, nil)
	b := h.waitReceived(t, p, roomID, u.UserID, "imported")
	if b.Imported < 1 {
		t.Fatalf("imported nothing: %+v", b)
	}
	joined := mark.wait(t, 5*time.Second, "the join from the invite", msgIs("Joined room from invite", "room_id", roomID))
	swept := mark.wait(t, 5*time.Second, "the sweep for "+p.UserID, sweptFor(p))
	if swept.str("time") < joined.str("time") {
		t.Fatalf("the sweep (%s) came before the join (%s)", swept.str("time"), joined.str("time"))
	}
	events := h.waitDecrypts(t, p, roomID, []string{"history in the inbox"})
	for _, ev := range events {
		if ev.Decrypted && ev.Sender == u.UserID && ev.KeysSharedBy != u.UserID {
			t.Fatalf("%q decrypted with keys_shared_by %q, want %q", ev.body(), ev.KeysSharedBy, u.UserID)
		}
	}
	requireNoPush(t, h)
}

// Every encryption.maintenance_interval, heirloom sweeps the inboxes of loaded puppets: a room key
// arrives without anyone reading the timeline.
func TestSweepOnTimer(t *testing.T) {
	h := startInstance(t, "nopush", func(c *heirloomConfig) { c.maintenance = "2s" })
	p := h.newPuppet(t)
	u := newJSUser(t, true)
	roomID := h.createRoom(t, p, "shared", u.UserID)
	e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
	mark := h.mark(t)
	jsSend(t, u, roomID, "fetched by the timer")
	sessionID := jsOwnSession(t, u, p, roomID)
	// Without a read of the timeline, only the timer (2 s, and at most one sweep per puppet every
	// 10 s) can bring the key in.
	eventually(t, 30*time.Second, "the timer's sweep to store the js user's key", func() (bool, string) {
		return heldSessionsIn(t, h, p, roomID)[sessionID], ""
	})
	mark.wait(t, 5*time.Second, "the sweep for "+p.UserID, sweptFor(p))
	h.waitDecrypts(t, p, roomID, []string{"fetched by the timer"})
	requireNoPush(t, h)
}

// While heirloom answers the homeserver's transactions with an error, Synapse holds it down: it
// keeps the room events of what it queues for its retries and drops the to-device messages, here
// a js user's room key for a puppet. Once heirloom takes a transaction again, it sweeps the loaded
// puppets' inboxes: the key is stored without anyone reading the timeline, well before the
// maintenance interval (5 min), and the message decrypts.
func TestSweepAfterTheHomeserverHeldHeirloomDown(t *testing.T) {
	faults := filepath.Join(t.TempDir(), "faults")
	arm := func(points string) {
		t.Helper()
		if err := os.WriteFile(faults, []byte(points), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	arm("")
	h := startInstanceEnv(t, "alt", nil, "HEIRLOOM_FAULT_FILE="+faults)
	t.Cleanup(func() { arm("") })
	p := h.newPuppet(t)
	u := newJSUser(t, true)
	roomID := h.createRoom(t, p, "shared", u.UserID)
	e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)

	mark := h.mark(t)
	arm("fail_transactions")
	jsSend(t, u, roomID, "sent while heirloom was held down")
	mark.wait(t, 30*time.Second, "a transaction refused by the fault point", msgIs("Failed to take a transaction; the homeserver will send it again"))
	arm("")
	sessionID := jsOwnSession(t, u, p, roomID)
	resumed := mark.wait(t, 30*time.Second, "the homeserver to send again", func(l logLine) bool {
		return msgIs("Marked every tracked device list outdated: the homeserver drops device-list changes while it holds heirloom down")(l) &&
			l.str("reason") != "a transaction failed"
	})
	eventually(t, 20*time.Second, "the sweep to store the js user's key", func() (bool, string) {
		return heldSessionsIn(t, h, p, roomID)[sessionID], ""
	})
	swept := mark.wait(t, 5*time.Second, "the sweep for "+p.UserID, sweptFor(p))
	if swept.str("time") < resumed.str("time") {
		t.Fatalf("the sweep (%s) came before the homeserver sent again (%s)", swept.str("time"), resumed.str("time"))
	}
	if n, _ := swept["recovered"].(float64); n < 1 {
		t.Fatalf("the sweep recovered nothing: the key was pushed after all, and the test proves nothing: %v", swept)
	}
	h.waitDecrypts(t, p, roomID, []string{"sent while heirloom was held down"})
}
