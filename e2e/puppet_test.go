package e2e

import (
	"fmt"
	"testing"
	"time"
)

// jsRoomWithPuppet has a js-sdk user create an encrypted room with the given visibility and invite
// the puppet, which joins by policy (auto_join allows @js_*), and waits until both see the join.
func jsRoomWithPuppet(t *testing.T, u jsUser, p puppetIdentity, visibility string) string {
	t.Helper()
	var room struct {
		RoomID string `json:"room_id"`
	}
	e.peer(t, "createRoom", map[string]any{"user": u.UserID, "history_visibility": visibility}, &room)
	e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": room.RoomID, "target": p.UserID}, nil)
	e.peer(t, "waitForMembership", map[string]any{"user": u.UserID, "room_id": room.RoomID, "target": p.UserID,
		"membership": "join", "timeout_ms": 30000}, nil)
	return room.RoomID
}

// A js-sdk user and a puppet in an encrypted room each decrypt what the other sends.
func TestPuppetAndJSUserExchangeMessages(t *testing.T) {
	u := newJSUser(t, true)
	p := newPuppet(t)
	roomID := jsRoomWithPuppet(t, u, p, "shared")

	e.peer(t, "send", map[string]any{"user": u.UserID, "room_id": roomID, "body": "hello from js"}, nil)
	puppetSend(t, p, roomID, "hello from the puppet")

	events := waitPuppetDecrypts(t, p, roomID, []string{"hello from js", "hello from the puppet"})
	// The trust a bridge reads: the js user's device is signed by their identity, the puppet's own
	// session is its own.
	for _, ev := range events {
		want := map[string]string{"hello from js": "cross_signed", "hello from the puppet": "verified"}[ev.body()]
		if want != "" && ev.Trust != want {
			t.Fatalf("%q decrypted with trust %q, want %q", ev.body(), ev.Trust, want)
		}
	}
	got := decryptedBodies(jsMessages(t, u, roomID, 2, 30000))
	if m, ok := got["hello from the puppet"]; !ok || m.Sender != p.UserID {
		t.Fatalf("js-sdk user did not decrypt the puppet's message: %+v", got)
	}
}

// Element's crypto sees the puppet's device as signed by its owner and sees its identity.
func TestPuppetDeviceSignedByOwner(t *testing.T) {
	u := newJSUser(t, true)
	p := newPuppet(t)
	jsRoomWithPuppet(t, u, p, "shared")
	var status struct {
		Device *struct {
			SignedByOwner bool `json:"signedByOwner"`
		} `json:"device"`
		MasterKey string `json:"cross_signing_master_key"`
	}
	e.peer(t, "deviceStatus", map[string]any{"user": u.UserID, "target_user": p.UserID, "target_device": p.DeviceID,
		"wait_signed": true, "timeout_ms": 30000}, &status)
	if status.Device == nil || !status.Device.SignedByOwner {
		t.Fatalf("js-sdk does not see the puppet's device as signed by its owner: %+v", status)
	}
	if status.MasterKey != p.MasterKey {
		t.Fatalf("js-sdk sees master key %q, heirloom reports %q", status.MasterKey, p.MasterKey)
	}
	var again puppetIdentity
	apiOK(t, "PUT", "/puppets/"+p.UserID, map[string]any{}, &again)
	if again != p {
		t.Fatalf("provisioning again changed the puppet: %+v vs %+v", again, p)
	}
}

type exportedSession struct {
	RoomID        string `json:"room_id"`
	SessionID     string `json:"session_id"`
	SenderKey     string `json:"sender_key"`
	SharedHistory *bool  `json:"shared_history"`
}

func jsExport(t *testing.T, u jsUser, roomID string) []exportedSession {
	t.Helper()
	var resp struct {
		Sessions []exportedSession `json:"sessions"`
	}
	e.peer(t, "exportKeys", map[string]any{"user": u.UserID, "room_id": roomID}, &resp)
	return resp.Sessions
}

// The m.room_key a puppet sends carries the history flag the way rust-sdk reads it: shared in a
// `shared` room, not shared in a `joined` room (seen through the js side's own key export).
func TestPuppetRoomKeyHistoryFlag(t *testing.T) {
	for _, tc := range []struct {
		visibility string
		want       bool
	}{{"shared", true}, {"joined", false}} {
		t.Run(tc.visibility, func(t *testing.T) {
			u := newJSUser(t, true)
			p := newPuppet(t)
			roomID := jsRoomWithPuppet(t, u, p, tc.visibility)
			puppetSend(t, p, roomID, "flagged")
			msgs := decryptedBodies(jsMessages(t, u, roomID, 1, 30000))
			m, ok := msgs["flagged"]
			if !ok {
				t.Fatalf("js-sdk could not decrypt the puppet's message")
			}
			for _, s := range jsExport(t, u, roomID) {
				if s.SessionID == m.SessionID {
					if s.SharedHistory == nil || *s.SharedHistory != tc.want {
						t.Fatalf("js-sdk stored the puppet's session with shared_history %v, want %v", s.SharedHistory, tc.want)
					}
					return
				}
			}
			t.Fatalf("session %s not in the js-sdk export", m.SessionID)
		})
	}
}

// A key the js-sdk user sends in a `shared` room is stored by heirloom with shared_history = true.
func TestJSRoomKeyStoredShared(t *testing.T) {
	u := newJSUser(t, true)
	p := newPuppet(t)
	roomID := jsRoomWithPuppet(t, u, p, "shared")
	e.peer(t, "send", map[string]any{"user": u.UserID, "room_id": roomID, "body": "shared key"}, nil)
	events := waitPuppetDecrypts(t, p, roomID, []string{"shared key"})
	var sessionID string
	for _, ev := range events {
		if ev.body() == "shared key" {
			sessionID = ev.SessionID
		}
	}
	var shared bool
	err := e.db(t).QueryRow(`SELECT shared_history FROM crypto_megolm_inbound_session WHERE session_id=? AND account_id=?`,
		sessionID, p.UserID).Scan(&shared)
	if err != nil || !shared {
		t.Fatalf("heirloom stored session %s with shared_history=%v (err %v), want true", sessionID, shared, err)
	}
}

func sessionOf(t *testing.T, p puppetIdentity, roomID, body string) string {
	t.Helper()
	for _, ev := range puppetMessages(t, p, roomID) {
		if ev.Decrypted && ev.body() == body {
			return ev.SessionID
		}
	}
	t.Fatalf("puppet cannot read its own %q", body)
	return ""
}

// After another member leaves, and after a history-visibility change, the puppet's next message
// uses a new megolm session.
func TestPuppetRotatesOnLeaveAndVisibilityChange(t *testing.T) {
	u := newJSUser(t, true)
	p := newPuppet(t)
	roomID := puppetCreateRoom(t, p, "shared", u.UserID)
	e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
	puppetSend(t, p, roomID, "one")
	puppetSend(t, p, roomID, "two")
	s1, s2 := sessionOf(t, p, roomID, "one"), sessionOf(t, p, roomID, "two")
	if s1 != s2 {
		t.Fatalf("the puppet rotated without a reason: %s then %s", s1, s2)
	}
	setVisibility(t, p, roomID, "joined")
	puppetSend(t, p, roomID, "three")
	s3 := sessionOf(t, p, roomID, "three")
	if s3 == s2 {
		t.Fatalf("history visibility changed but the session stayed %s", s3)
	}
	e.peer(t, "leave", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
	puppetSend(t, p, roomID, "four")
	if s4 := sessionOf(t, p, roomID, "four"); s4 == s3 {
		t.Fatalf("a member left but the session stayed %s", s4)
	}
}

// Two puppets in one room read each other.
func TestTwoPuppetsReadEachOther(t *testing.T) {
	a, b := newPuppet(t), newPuppet(t)
	roomID := puppetCreateRoom(t, a, "shared", b.UserID)
	eventually(t, 30*time.Second, "the second puppet to join by policy", func() (bool, string) {
		code, err := e.api("POST", "/puppets/"+b.UserID+"/rooms/"+roomID+"/join", map[string]any{}, nil)
		return code == 200, fmt.Sprint(code, err)
	})
	puppetSend(t, a, roomID, "from a")
	puppetSend(t, b, roomID, "from b")
	waitPuppetDecrypts(t, a, roomID, []string{"from a", "from b"})
	waitPuppetDecrypts(t, b, roomID, []string{"from a", "from b"})
}

// A puppet survives a restart of heirloom: same device, same identity, old messages still
// decrypt, and it can still send.
func TestPuppetSurvivesRestart(t *testing.T) {
	u := newJSUser(t, true)
	p := newPuppet(t)
	roomID := jsRoomWithPuppet(t, u, p, "shared")
	e.peer(t, "send", map[string]any{"user": u.UserID, "room_id": roomID, "body": "before restart"}, nil)
	puppetSend(t, p, roomID, "puppet before restart")
	waitPuppetDecrypts(t, p, roomID, []string{"before restart"})

	restartHeirloom(t)
	var again puppetIdentity
	apiOK(t, "PUT", "/puppets/"+p.UserID, map[string]any{}, &again)
	if again != p {
		t.Fatalf("after a restart the puppet changed: %+v vs %+v", again, p)
	}
	waitPuppetDecrypts(t, p, roomID, []string{"before restart", "puppet before restart"})
	puppetSend(t, p, roomID, "after restart")
	got := decryptedBodies(jsMessages(t, u, roomID, 2, 30000))
	if _, ok := got["after restart"]; !ok {
		t.Fatalf("js-sdk user cannot decrypt what the puppet sent after the restart: %+v", got)
	}
}
