package e2e

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// newManualUser registers a js-sdk user whose invites puppets do not accept by themselves
// (auto_join allows only @js_*): the bridge decides, through …/join.
func newManualUser(t *testing.T) jsUser {
	t.Helper()
	var u jsUser
	e.peer(t, "register", map[string]any{"username": name("manual_"), "cross_signing": true}, &u)
	return u
}

func jsCreateRoom(t testing.TB, u jsUser, visibility string) string {
	t.Helper()
	var room struct {
		RoomID string `json:"room_id"`
	}
	e.peer(t, "createRoom", map[string]any{"user": u.UserID, "history_visibility": visibility}, &room)
	return room.RoomID
}

func jsSend(t testing.TB, u jsUser, roomID string, texts ...string) {
	t.Helper()
	for _, text := range texts {
		e.peer(t, "send", map[string]any{"user": u.UserID, "room_id": roomID, "body": text}, nil)
	}
}

func waitReceived(t testing.TB, p puppetIdentity, roomID, sender string, states ...string) receivedBundle {
	t.Helper()
	return e.waitReceived(t, p, roomID, sender, states...)
}

func (h *instance) waitReceived(t testing.TB, p puppetIdentity, roomID, sender string, states ...string) receivedBundle {
	t.Helper()
	var found receivedBundle
	eventually(t, 60*time.Second, fmt.Sprintf("a bundle from %s in state %v", sender, states), func() (bool, string) {
		for _, b := range h.bundles(t, p).Received {
			if b.RoomID == roomID && b.Sender == sender {
				found = b
				for _, s := range states {
					if b.State == s {
						return true, ""
					}
				}
			}
		}
		return false, fmt.Sprintf("%+v", found)
	})
	return found
}

func requireSharedBy(t *testing.T, p puppetIdentity, roomID string, texts []string, by string) {
	t.Helper()
	events := waitPuppetDecrypts(t, p, roomID, texts)
	want := map[string]bool{}
	for _, text := range texts {
		want[text] = true
	}
	for _, ev := range events {
		if ev.Decrypted && want[ev.body()] && ev.Sender == by && ev.KeysSharedBy != by {
			t.Fatalf("%q decrypted with keys_shared_by %q, want %q", ev.body(), ev.KeysSharedBy, by)
		}
	}
}

// A js-sdk user sends in a `shared` room and invites a puppet with client.invite(); the puppet
// joins by policy, and every earlier message decrypts, each saying whose word the key rests on.
func TestInvitedPuppetReadsHistory(t *testing.T) {
	u := newJSUser(t, true)
	p := newPuppet(t)
	roomID := jsCreateRoom(t, u, "shared")
	texts := []string{"before 1", "before 2", "before 3"}
	jsSend(t, u, roomID, texts...)
	e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": roomID, "target": p.UserID}, nil)
	b := waitReceived(t, p, roomID, u.UserID, "imported")
	if b.Imported < 1 {
		t.Fatalf("imported nothing: %+v", b)
	}
	requireSharedBy(t, p, roomID, texts, u.UserID)
}

// The bundle arrives after the puppet joined (out of order): it is still imported.
func TestBundleAfterJoin(t *testing.T) {
	u := newJSUser(t, true)
	p := newPuppet(t)
	roomID := jsCreateRoom(t, u, "shared")
	texts := []string{"late 1", "late 2"}
	jsSend(t, u, roomID, texts...)
	e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": roomID, "target": p.UserID, "share_history": false}, nil)
	e.peer(t, "waitForMembership", map[string]any{"user": u.UserID, "room_id": roomID, "target": p.UserID, "membership": "join"}, nil)
	// A message sent after the join reaches the puppet over the same device-to-device channel a
	// bundle of the invite would have come by, and after it: once it decrypts, no bundle came.
	jsSend(t, u, roomID, "after the join")
	waitPuppetDecrypts(t, p, roomID, []string{"after the join"})
	if got := puppetBundles(t, p).Received; len(got) != 0 {
		t.Fatalf("a bundle before sharing? %+v", got)
	}
	e.peer(t, "shareHistory", map[string]any{"user": u.UserID, "room_id": roomID, "target": p.UserID}, nil)
	waitReceived(t, p, roomID, u.UserID, "imported")
	requireSharedBy(t, p, roomID, texts, u.UserID)
}

// heirloom dies after the join and before the import finishes; after the restart the import completes.
func TestImportResumesAfterCrash(t *testing.T) {
	u := newJSUser(t, true)
	p := newPuppet(t)
	roomID := jsCreateRoom(t, u, "shared")
	texts := []string{"crash 1", "crash 2"}
	jsSend(t, u, roomID, texts...)

	armFault(t, "crash_before_import")
	e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": roomID, "target": p.UserID}, nil)
	if !e.waitHeirloomExit(60 * time.Second) {
		t.Fatal("heirloom did not reach the crash point")
	}
	if err := e.startHeirloom(); err != nil {
		t.Fatal(err)
	}
	b := waitReceived(t, p, roomID, u.UserID, "imported")
	if b.Imported < 1 {
		t.Fatalf("nothing imported after the restart: %+v", b)
	}
	requireSharedBy(t, p, roomID, texts, u.UserID)
}

// A bundle from a room member who is not the inviter is stored but never imported.
func TestBundleFromNonInviterRefused(t *testing.T) {
	alice, mallory := newJSUser(t, true), newJSUser(t, true)
	p := newPuppet(t)
	roomID := jsCreateRoom(t, alice, "shared")
	e.peer(t, "invite", map[string]any{"user": alice.UserID, "room_id": roomID, "target": mallory.UserID}, nil)
	e.peer(t, "join", map[string]any{"user": mallory.UserID, "room_id": roomID}, nil)
	jsSend(t, alice, roomID, "alice's secret")
	e.peer(t, "invite", map[string]any{"user": alice.UserID, "room_id": roomID, "target": p.UserID, "share_history": false}, nil)
	e.peer(t, "waitForMembership", map[string]any{"user": alice.UserID, "room_id": roomID, "target": p.UserID, "membership": "join"}, nil)
	e.peer(t, "shareHistory", map[string]any{"user": mallory.UserID, "room_id": roomID, "target": p.UserID}, nil)
	b := waitReceived(t, p, roomID, mallory.UserID, "rejected")
	if b.Imported != 0 {
		t.Fatalf("a non-inviter's bundle was imported: %+v", b)
	}
	for _, ev := range puppetMessages(t, p, roomID) {
		if ev.Decrypted && ev.body() == "alice's secret" {
			t.Fatalf("the puppet decrypted history from a non-inviter's bundle")
		}
	}
}

func adminToken(t *testing.T) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(e.root, "scripts", "synapse.sh"), "register", name("admin"), "admin-password", "--admin")
	cmd.Env = e.synapseEnv()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("registering an admin: %v", err)
	}
	var resp struct {
		AccessToken string `json:"access_token"`
	}
	if err = json.Unmarshal(out, &resp); err != nil || resp.AccessToken == "" {
		t.Fatalf("admin registration answered %s", out)
	}
	return resp.AccessToken
}

// The media behind a bundle is gone: the state becomes expired, with no retry loop.
func TestBundleMediaGoneExpires(t *testing.T) {
	u := newManualUser(t)
	p := newPuppet(t)
	roomID := jsCreateRoom(t, u, "shared")
	jsSend(t, u, roomID, "lost history")
	e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": roomID, "target": p.UserID}, nil)
	waitReceived(t, p, roomID, u.UserID, "pending")

	admin := adminToken(t)
	var media struct {
		Media []struct {
			MediaID string `json:"media_id"`
		} `json:"media"`
	}
	code, err := e.request("GET", e.hsURL+"/_synapse/admin/v1/users/"+url.PathEscape(u.UserID)+"/media", "Bearer "+admin, nil, &media)
	if err != nil || code != 200 || len(media.Media) == 0 {
		t.Fatalf("listing the inviter's media: %d %v %+v", code, err, media)
	}
	for _, m := range media.Media {
		code, err = e.request("DELETE", e.hsURL+"/_synapse/admin/v1/media/"+domain+"/"+m.MediaID, "Bearer "+admin, nil, nil)
		if err != nil || code != 200 {
			t.Fatalf("deleting media %s: %d %v", m.MediaID, code, err)
		}
	}
	var join struct {
		History string `json:"history"`
		Bundle  *receivedBundle
	}
	apiOK(t, "POST", "/puppets/"+p.UserID+"/rooms/"+roomID+"/join", map[string]any{}, &join)
	b := waitReceived(t, p, roomID, u.UserID, "expired")
	if b.Attempts != 1 {
		t.Fatalf("an expired bundle after %d attempts, want 1", b.Attempts)
	}
	// A failed download is retried 5 s later (history.Service's retryBase), checked every second:
	// an expired bundle must still be untouched well past that.
	stays(t, 8*time.Second, "the expired bundle to stay expired after one attempt", func() (bool, string) {
		for _, got := range puppetBundles(t, p).Received {
			if got.RoomID == roomID && got.Sender == u.UserID {
				return got.State == "expired" && got.Attempts == 1, fmt.Sprintf("%+v", got)
			}
		}
		return false, "the bundle is gone"
	})
}

// stays checks, for the whole duration, that check keeps reporting true.
func stays(t testing.TB, d time.Duration, what string, check func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if ok, detail := check(); !ok {
			t.Fatalf("want %s: %s", what, detail)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// In a `joined` room the inviter shares no keys: the puppet gets no history keys and says so.
func TestJoinedRoomPuppetGetsNoHistory(t *testing.T) {
	u := newManualUser(t)
	p := newPuppet(t)
	roomID := jsCreateRoom(t, u, "joined")
	jsSend(t, u, roomID, "members only")
	e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": roomID, "target": p.UserID}, nil)
	var join struct {
		History string          `json:"history"`
		Bundle  *receivedBundle `json:"bundle"`
	}
	eventually(t, 30*time.Second, "the join to see the invite", func() (bool, string) {
		apiOK(t, "POST", "/puppets/"+p.UserID+"/rooms/"+roomID+"/join", map[string]any{}, &join)
		return join.History != "" && join.History[:2] == "no", join.History
	})
	if join.Bundle != nil {
		t.Fatalf("a joined room produced a bundle: %+v", join.Bundle)
	}
	// A message after the join comes over the same channel as a bundle would have, and later.
	e.peer(t, "waitForMembership", map[string]any{"user": u.UserID, "room_id": roomID, "target": p.UserID, "membership": "join"}, nil)
	jsSend(t, u, roomID, "after the join")
	waitPuppetDecrypts(t, p, roomID, []string{"after the join"})
	if got := puppetBundles(t, p).Received; len(got) != 0 {
		t.Fatalf("received bundles in a joined room: %+v", got)
	}
	for _, ev := range puppetMessages(t, p, roomID) {
		if ev.Decrypted && ev.body() == "members only" {
			t.Fatalf("the puppet read history of a joined room")
		}
	}
}

// After Synapse restarts (on SQLite it numbers its transactions from 1 again), heirloom keeps
// processing what Synapse pushes: a bundle sent after the restart is received and imported.
func TestHomeserverRestartKeepsTransactionsFlowing(t *testing.T) {
	if err := e.synapse("restart"); err != nil {
		t.Fatal(err)
	}
	u := newJSUser(t, true)
	p := newPuppet(t)
	roomID := jsCreateRoom(t, u, "shared")
	jsSend(t, u, roomID, "after the homeserver restart")
	e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": roomID, "target": p.UserID}, nil)
	waitReceived(t, p, roomID, u.UserID, "imported")
	requireSharedBy(t, p, roomID, []string{"after the homeserver restart"}, u.UserID)
}
