package e2e

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// jsHistoryInSessions has the js user write texts in its room, changing the visibility between them
// (shared, world_readable, shared, …) so that each text is in a megolm session of its own.
func jsHistoryInSessions(t *testing.T, u jsUser, roomID string, texts ...string) {
	t.Helper()
	for i, text := range texts {
		if i > 0 {
			vis := []string{"world_readable", "shared"}[(i-1)%2]
			e.peer(t, "setHistoryVisibility", map[string]any{"user": u.UserID, "room_id": roomID, "visibility": vis}, nil)
		}
		jsSend(t, u, roomID, text)
	}
	if len(texts)%2 == 0 {
		e.peer(t, "setHistoryVisibility", map[string]any{"user": u.UserID, "room_id": roomID, "visibility": "shared"}, nil)
	}
}

// restartWith stops the instance, edits its config (secrets included, as heirloom saved them) with
// edit, and starts it again.
func (h *instance) restartWith(t *testing.T, edit func(config string) string) {
	t.Helper()
	h.stopHeirloom(syscall.SIGTERM)
	data, err := os.ReadFile(h.configPath)
	if err != nil {
		t.Fatal(err)
	}
	edited := edit(string(data))
	if edited == string(data) {
		t.Fatal("the config edit changed nothing")
	}
	if err = os.WriteFile(h.configPath, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	if err = h.start(e.binary); err != nil {
		t.Fatal(err)
	}
}

// An import that failed for good (the bundle was over history_sharing.max_bundle_size) is retried
// on an admin's request once the cause is fixed, through the API and through the bot: the puppet
// reads the history then, and the metrics count the failure and the imports.
func TestRetryFailedImport(t *testing.T) {
	h := startInstance(t, "alt", func(c *heirloomConfig) { c.maxBundle = 1024 })
	p := h.newPuppet(t)
	u := newJSUser(t, true)
	texts := map[string][]string{}
	var rooms []string
	for _, which := range []string{"api", "bot"} {
		roomID := jsCreateRoom(t, u, "shared")
		texts[roomID] = []string{which + " one", which + " two", which + " three"}
		jsHistoryInSessions(t, u, roomID, texts[roomID]...)
		e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": roomID, "target": p.UserID}, nil)
		b := h.waitReceived(t, p, roomID, u.UserID, "failed", "imported")
		if b.State != "failed" || !strings.Contains(b.Error, "max_bundle_size") {
			t.Fatalf("a bundle over the cap: %+v", b)
		}
		rooms = append(rooms, roomID)
	}
	if n := h.metric(t, `heirloom_bundles_received_total{outcome="failed",reason="too_large"}`); n != 2 {
		t.Fatalf(`heirloom_bundles_received_total{outcome="failed",reason="too_large"} = %v, want 2`, n)
	}

	// The admin raises the cap; a restart does not retry a failed bundle by itself.
	h.restartWith(t, func(c string) string {
		return strings.Replace(c, "max_bundle_size: 1024", "max_bundle_size: "+strconv.Itoa(e2eMaxBundle), 1)
	})
	var retried struct {
		Bundles []receivedBundle `json:"bundles"`
	}
	h.apiOK(t, "POST", "/puppets/"+p.UserID+"/rooms/"+rooms[0]+"/retry", map[string]any{}, &retried)
	if len(retried.Bundles) != 1 || retried.Bundles[0].State != "imported" || retried.Bundles[0].Imported < 3 {
		t.Fatalf("POST …/retry answered %+v", retried.Bundles)
	}
	h.waitDecrypts(t, p, rooms[0], texts[rooms[0]])

	var admin jsUser
	e.peer(t, "register", map[string]any{"username": name(adminPrefix), "cross_signing": true}, &admin)
	bot := "@" + e.profiles["alt"].bot + ":" + domain
	var dm struct {
		RoomID string `json:"room_id"`
	}
	e.peer(t, "createRoom", map[string]any{"user": admin.UserID, "history_visibility": "shared", "invite": []string{bot}}, &dm)
	e.peer(t, "waitForMessage", map[string]any{"user": admin.UserID, "room_id": dm.RoomID, "sender": bot, "body": botGreeting,
		"timeout_ms": 60000}, nil)
	ask(t, admin, dm.RoomID, bot, "retry "+rooms[1], "Retried the received bundles in "+rooms[1],
		"- by "+p.UserID+" from "+u.UserID+": imported, 3 keys imported")
	h.waitDecrypts(t, p, rooms[1], texts[rooms[1]])
	ask(t, admin, dm.RoomID, bot, "retry "+rooms[1], "No received bundle in "+rooms[1]+" failed or waits for a retry.")
	if n := h.metric(t, `heirloom_bundles_received_total{outcome="imported"`); n != 2 {
		t.Fatalf(`heirloom_bundles_received_total{outcome="imported"} = %v after the restart, want 2`, n)
	}
	if n := h.metric(t, "heirloom_bundle_join_to_imported_seconds_count"); n != 2 {
		t.Fatalf("heirloom_bundle_join_to_imported_seconds_count = %v, want 2", n)
	}
}
