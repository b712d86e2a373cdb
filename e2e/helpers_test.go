package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

type jsUser struct {
	UserID    string `json:"user_id"`
	DeviceID  string `json:"device_id"`
	Ed25519   string `json:"ed25519"`
	MasterKey string `json:"master_key"`
}

type puppetIdentity struct {
	UserID     string `json:"user_id"`
	DeviceID   string `json:"device_id"`
	Ed25519    string `json:"ed25519"`
	Curve25519 string `json:"curve25519"`
	MasterKey  string `json:"master_key"`
}

type timelineEvent struct {
	EventID      string          `json:"event_id"`
	Sender       string          `json:"sender"`
	Type         string          `json:"type"`
	Content      json.RawMessage `json:"content"`
	Decrypted    bool            `json:"decrypted"`
	Error        string          `json:"error"`
	SessionID    string          `json:"session_id"`
	KeysSharedBy string          `json:"keys_shared_by"`
	Trust        string          `json:"trust"`
}

func (ev timelineEvent) body() string {
	var c struct {
		Body string `json:"body"`
	}
	_ = json.Unmarshal(ev.Content, &c)
	return c.Body
}

type jsMessage struct {
	EventID   string `json:"event_id"`
	Sender    string `json:"sender"`
	Body      string `json:"body"`
	Decrypted bool   `json:"decrypted"`
	Error     string `json:"error"`
	Forwarder string `json:"forwarder"`
	SessionID string `json:"session_id"`
	Encrypted bool   `json:"encrypted"`
	Msgtype   string `json:"msgtype"`
	URL       string `json:"url"`
	FileURL   string `json:"file_url"`
	// ShieldColour and ShieldReason are what Element shows beside the message (NONE: no warning).
	ShieldColour string `json:"shield_colour"`
	ShieldReason string `json:"shield_reason"`
}

func newJSUser(t testing.TB, crossSigning bool) jsUser {
	t.Helper()
	var u jsUser
	e.peer(t, "register", map[string]any{"username": name("js_"), "cross_signing": crossSigning}, &u)
	return u
}

func newPuppet(t testing.TB) puppetIdentity { return e.newPuppet(t) }

func apiOK(t testing.TB, method, path string, body any, out any) { e.apiOK(t, method, path, body, out) }

func puppetCreateRoom(t testing.TB, p puppetIdentity, visibility string, invite ...string) string {
	return e.createRoom(t, p, visibility, invite...)
}

func puppetSend(t testing.TB, p puppetIdentity, roomID, text string) string {
	return e.send(t, p, roomID, text)
}

func puppetMessages(t testing.TB, p puppetIdentity, roomID string) []timelineEvent {
	return e.messages(t, p, roomID)
}

// newPuppet provisions a new puppet of the instance.
func (h *instance) newPuppet(t testing.TB) puppetIdentity {
	t.Helper()
	userID := "@" + name(h.prefix) + ":" + domain
	var p puppetIdentity
	code, err := h.api("PUT", "/puppets/"+userID, map[string]any{"displayname": "Puppet " + userID}, &p)
	if err != nil || code != 200 {
		t.Fatalf("provisioning %s: %d %v", userID, code, err)
	}
	return p
}

func (h *instance) apiOK(t testing.TB, method, path string, body any, out any) {
	t.Helper()
	var raw json.RawMessage
	code, err := h.api(method, path, body, &raw)
	if err != nil || code != 200 {
		t.Fatalf("%s %s: %d %v %s", method, path, code, err, raw)
	}
	if out != nil {
		if err = json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: decoding %s: %v", method, path, raw, err)
		}
	}
}

func (h *instance) createRoom(t testing.TB, p puppetIdentity, visibility string, invite ...string) string {
	t.Helper()
	var resp struct {
		RoomID string `json:"room_id"`
	}
	body := map[string]any{"name": "e2e", "encrypted": true, "history_visibility": visibility}
	if len(invite) > 0 {
		body["invite"] = invite
	}
	h.apiOK(t, "POST", "/puppets/"+p.UserID+"/rooms", body, &resp)
	return resp.RoomID
}

func (h *instance) send(t testing.TB, p puppetIdentity, roomID, text string) string {
	t.Helper()
	var resp struct {
		EventID string `json:"event_id"`
	}
	h.apiOK(t, "POST", "/puppets/"+p.UserID+"/rooms/"+roomID+"/messages", map[string]any{"msgtype": "m.text", "body": text}, &resp)
	return resp.EventID
}

func (h *instance) timeline(t testing.TB, p puppetIdentity, roomID string) []timelineEvent {
	t.Helper()
	var resp struct {
		Events []timelineEvent `json:"events"`
	}
	h.apiOK(t, "GET", "/puppets/"+p.UserID+"/rooms/"+roomID+"/messages?limit=500", nil, &resp)
	return resp.Events
}

// messages returns the m.room.message events of the puppet's timeline.
func (h *instance) messages(t testing.TB, p puppetIdentity, roomID string) []timelineEvent {
	t.Helper()
	var out []timelineEvent
	for _, ev := range h.timeline(t, p, roomID) {
		if ev.Type == "m.room.message" || ev.Type == "m.room.encrypted" {
			out = append(out, ev)
		}
	}
	return out
}

func setVisibility(t *testing.T, p puppetIdentity, roomID, visibility string) {
	t.Helper()
	apiOK(t, "PUT", "/puppets/"+p.UserID+"/rooms/"+roomID+"/state/m.room.history_visibility/",
		map[string]any{"history_visibility": visibility}, nil)
}

// eventually retries check until it reports true or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, check func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, detail := check()
		if ok {
			return
		}
		last = detail
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitPuppetDecrypts waits until the puppet's timeline has every body in want decrypted.
func waitPuppetDecrypts(t testing.TB, p puppetIdentity, roomID string, want []string) []timelineEvent {
	t.Helper()
	return e.waitDecrypts(t, p, roomID, want)
}

func (h *instance) waitDecrypts(t testing.TB, p puppetIdentity, roomID string, want []string) []timelineEvent {
	t.Helper()
	var events []timelineEvent
	eventually(t, 60*time.Second, "the puppet to decrypt "+strings.Join(want, ", "), func() (bool, string) {
		events = h.messages(t, p, roomID)
		got := map[string]bool{}
		for _, ev := range events {
			if ev.Decrypted {
				got[ev.body()] = true
			}
		}
		var missing []string
		for _, w := range want {
			if !got[w] {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			return true, ""
		}
		errors := map[string]int{}
		for _, ev := range events {
			if !ev.Decrypted && ev.Error != "" {
				errors[ev.Error+" (session "+ev.SessionID+")"]++
			}
		}
		return false, fmt.Sprintf("%d of %d missing (first %q) in %d timeline messages; undecrypted: %v",
			len(missing), len(want), missing[0], len(events), errors)
	})
	return events
}

func jsMessages(t testing.TB, u jsUser, roomID string, minCount int, timeoutMS int) []jsMessage {
	t.Helper()
	var resp struct {
		Messages []jsMessage `json:"messages"`
	}
	e.peer(t, "messages", map[string]any{"user": u.UserID, "room_id": roomID, "min_count": minCount, "timeout_ms": timeoutMS}, &resp)
	return resp.Messages
}

func decryptedBodies(msgs []jsMessage) map[string]jsMessage {
	out := map[string]jsMessage{}
	for _, m := range msgs {
		if m.Decrypted {
			out[m.Body] = m
		}
	}
	return out
}
