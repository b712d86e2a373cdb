package e2e

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"
)

type inviteResponse struct {
	Bundle struct {
		BundleID string `json:"bundle_id"`
		State    string `json:"state"`
		Sessions int    `json:"sessions"`
		Withheld int    `json:"withheld"`
		MXC      string `json:"mxc"`
		Reason   string `json:"reason"`
		Devices  []struct {
			UserID    string `json:"user_id"`
			DeviceID  string `json:"device_id"`
			Delivered bool   `json:"delivered"`
			Reason    string `json:"reason"`
		} `json:"devices"`
	} `json:"bundle"`
}

func puppetInvite(t testing.TB, p puppetIdentity, roomID, invitee string) inviteResponse {
	t.Helper()
	return e.invite(t, p, roomID, invitee)
}

func (h *instance) invite(t testing.TB, p puppetIdentity, roomID, invitee string) inviteResponse {
	t.Helper()
	var resp inviteResponse
	h.apiOK(t, "POST", "/puppets/"+p.UserID+"/rooms/"+roomID+"/invite", map[string]any{"user_id": invitee}, &resp)
	return resp
}

type sentBundle struct {
	BundleID      string `json:"bundle_id"`
	RoomID        string `json:"room_id"`
	Invitee       string `json:"invitee"`
	InviteEventID string `json:"invite_event_id"`
	State         string `json:"state"`
	Sessions      int    `json:"sessions"`
	Withheld      int    `json:"withheld"`
	Size          int64  `json:"size"`
	Reason        string `json:"reason"`
	Devices       []struct {
		DeviceID  string `json:"device_id"`
		Delivered bool   `json:"delivered"`
	} `json:"devices"`
}

type receivedBundle struct {
	RoomID   string `json:"room_id"`
	Sender   string `json:"sender"`
	State    string `json:"state"`
	Imported int    `json:"imported"`
	Withheld int    `json:"withheld"`
	Skipped  int    `json:"skipped"`
	Error    string `json:"error"`
	Attempts int    `json:"attempts"`
}

type bundlesResponse struct {
	Sent     []sentBundle     `json:"sent"`
	Received []receivedBundle `json:"received"`
}

func puppetBundles(t testing.TB, p puppetIdentity) bundlesResponse {
	t.Helper()
	return e.bundles(t, p)
}

func (h *instance) bundles(t testing.TB, p puppetIdentity) bundlesResponse {
	t.Helper()
	var resp bundlesResponse
	h.apiOK(t, "GET", "/puppets/"+p.UserID+"/bundles", nil, &resp)
	return resp
}

// sendRotating has the puppet send texts, changing the room's visibility between shared and
// world_readable after every second message so several megolm sessions carry the history.
func sendRotating(t *testing.T, p puppetIdentity, roomID string, texts []string) map[string]bool {
	t.Helper()
	sessions := map[string]bool{}
	vis := []string{"world_readable", "shared"}
	for i, text := range texts {
		puppetSend(t, p, roomID, text)
		sessions[sessionOf(t, p, roomID, text)] = true
		if i%2 == 1 {
			setVisibility(t, p, roomID, vis[(i/2)%2])
		}
	}
	return sessions
}

func requireJSDecrypts(t *testing.T, u jsUser, roomID string, want []string) map[string]jsMessage {
	t.Helper()
	msgs := decryptedBodies(jsMessages(t, u, roomID, len(want), 60000))
	for _, w := range want {
		if _, ok := msgs[w]; !ok {
			t.Fatalf("%s could not decrypt %q; decrypted: %v", u.UserID, w, keys(msgs))
		}
	}
	return msgs
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// A puppet writes in a `shared` room over several sessions and invites a js-sdk user through the
// API; the user joins with client.joinRoom() and decrypts every earlier message.
func TestInviteSharesHistoryWithJSUser(t *testing.T) {
	p := newPuppet(t)
	u := newJSUser(t, true)
	roomID := puppetCreateRoom(t, p, "shared")
	texts := []string{"h1", "h2", "h3", "h4", "h5"}
	sessions := sendRotating(t, p, roomID, texts)
	if len(sessions) < 2 {
		t.Fatalf("expected the session to rotate, got %d session(s)", len(sessions))
	}
	resp := puppetInvite(t, p, roomID, u.UserID)
	b := resp.Bundle
	if b.State != "delivered" || b.Sessions < len(sessions) || b.MXC == "" {
		t.Fatalf("bundle not delivered with %d sessions: %+v", len(sessions), b)
	}
	if len(b.Devices) != 1 || !b.Devices[0].Delivered || b.Devices[0].DeviceID != u.DeviceID {
		t.Fatalf("bundle not delivered to the invitee's one device %s: %+v", u.DeviceID, b.Devices)
	}
	e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
	msgs := requireJSDecrypts(t, u, roomID, texts)
	if msgs["h1"].Forwarder != p.UserID {
		t.Fatalf("js-sdk should say the keys were shared by %s, says %q", p.UserID, msgs["h1"].Forwarder)
	}
	sent := puppetBundles(t, p).Sent
	if len(sent) != 1 || sent[0].BundleID != b.BundleID {
		t.Fatalf("the invite's echo in the transaction stream made another bundle: %+v", sent)
	}
}

// The same when the bridge invites by calling Synapse directly as the puppet: heirloom sees the
// invite in a transaction and delivers a bundle right after.
func TestInviteThroughHomeserverGetsBundle(t *testing.T) {
	p := newPuppet(t)
	u := newJSUser(t, true)
	roomID := puppetCreateRoom(t, p, "shared")
	texts := []string{"d1", "d2", "d3"}
	sendRotating(t, p, roomID, texts)
	path := fmt.Sprintf("%s/_matrix/client/v3/rooms/%s/invite?user_id=%s", e.hsURL, url.PathEscape(roomID), url.QueryEscape(p.UserID))
	code, err := e.request("POST", path, "Bearer "+e.asToken, map[string]any{"user_id": u.UserID}, nil)
	if err != nil || code != 200 {
		t.Fatalf("direct invite: %d %v", code, err)
	}
	eventually(t, 30*time.Second, "a bundle for the direct invite", func() (bool, string) {
		sent := puppetBundles(t, p).Sent
		return len(sent) == 1 && sent[0].State == "delivered" && sent[0].InviteEventID != "", fmt.Sprintf("%+v", sent)
	})
	e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
	requireJSDecrypts(t, u, roomID, texts)
	if sent := puppetBundles(t, p).Sent; len(sent) != 1 {
		t.Fatalf("one invite got %d bundles", len(sent))
	}
}

// In a `joined` room nothing shareable is shared, and the invitee cannot read the history.
func TestJoinedRoomSharesNothing(t *testing.T) {
	p := newPuppet(t)
	u := newJSUser(t, true)
	roomID := puppetCreateRoom(t, p, "joined")
	puppetSend(t, p, roomID, "secret before invite")
	resp := puppetInvite(t, p, roomID, u.UserID)
	if resp.Bundle.State != "nothing" || resp.Bundle.Sessions != 0 || resp.Bundle.Withheld < 1 || resp.Bundle.Reason == "" {
		t.Fatalf("a joined room should share nothing and say why: %+v", resp.Bundle)
	}
	e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
	puppetSend(t, p, roomID, "after join")
	msgs := decryptedBodies(jsMessages(t, u, roomID, 1, 30000))
	if _, ok := msgs["secret before invite"]; ok {
		t.Fatalf("the invitee decrypted history of a joined room")
	}
	if _, ok := msgs["after join"]; !ok {
		t.Fatalf("the invitee cannot read messages sent after joining: %v", keys(msgs))
	}
}

// A room that changed from `joined` to `shared` halfway: the invitee decrypts exactly the messages
// sent after the change, and the bundle lists the earlier sessions as withheld.
func TestVisibilityChangeHalfway(t *testing.T) {
	p := newPuppet(t)
	u := newJSUser(t, true)
	roomID := puppetCreateRoom(t, p, "joined")
	puppetSend(t, p, roomID, "private 1")
	puppetSend(t, p, roomID, "private 2")
	setVisibility(t, p, roomID, "shared")
	puppetSend(t, p, roomID, "public 1")
	puppetSend(t, p, roomID, "public 2")
	resp := puppetInvite(t, p, roomID, u.UserID)
	if resp.Bundle.Sessions != 1 || resp.Bundle.Withheld != 1 {
		t.Fatalf("want 1 shared session and 1 withheld, got %+v", resp.Bundle)
	}
	e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
	msgs := requireJSDecrypts(t, u, roomID, []string{"public 1", "public 2"})
	for _, private := range []string{"private 1", "private 2"} {
		if _, ok := msgs[private]; ok {
			t.Fatalf("the invitee decrypted %q, sent while history was not shared", private)
		}
	}
}

// History a js-sdk user sent under `shared` is passed on by a puppet to a second js-sdk user.
func TestPuppetPassesOnReceivedHistory(t *testing.T) {
	p := newPuppet(t)
	alice, bob := newJSUser(t, true), newJSUser(t, true)
	roomID := jsRoomWithPuppet(t, alice, p, "shared")
	texts := []string{"alice 1", "alice 2"}
	for _, text := range texts {
		e.peer(t, "send", map[string]any{"user": alice.UserID, "room_id": roomID, "body": text}, nil)
	}
	waitPuppetDecrypts(t, p, roomID, texts)
	resp := puppetInvite(t, p, roomID, bob.UserID)
	if resp.Bundle.State != "delivered" || resp.Bundle.Sessions < 1 {
		t.Fatalf("bundle not delivered: %+v", resp.Bundle)
	}
	e.peer(t, "join", map[string]any{"user": bob.UserID, "room_id": roomID}, nil)
	requireJSDecrypts(t, bob, roomID, texts)
}

// An invitee without cross-signing gets nothing, and the API says why.
func TestInviteeWithoutCrossSigningGetsNothing(t *testing.T) {
	p := newPuppet(t)
	u := newJSUser(t, false)
	roomID := puppetCreateRoom(t, p, "shared")
	puppetSend(t, p, roomID, "not for unsigned devices")
	resp := puppetInvite(t, p, roomID, u.UserID)
	if resp.Bundle.State != "skipped" || resp.Bundle.Reason != "invitee has no cross-signing identity" || len(resp.Bundle.Devices) != 0 {
		t.Fatalf("want a skipped bundle for lack of cross-signing: %+v", resp.Bundle)
	}
	if resp.Bundle.MXC != "" {
		t.Fatalf("a bundle was uploaded for an invitee who gets nothing: %+v", resp.Bundle)
	}
}

// A delivery interrupted by a crash is finished after the restart, not repeated, and only once the
// invite it was built for is sent: the crash came before the invite, so until the bridge retries
// it, the invitee is no member of the room and gets no key.
func TestDeliveryResumesAfterCrash(t *testing.T) {
	p := newPuppet(t)
	u := newJSUser(t, true)
	roomID := puppetCreateRoom(t, p, "shared")
	puppetSend(t, p, roomID, "survives a crash")

	armFault(t, "crash_before_delivery")
	go func() {
		// heirloom exits in the middle of this call: it has no answer to check.
		_, _ = e.api("POST", "/puppets/"+p.UserID+"/rooms/"+roomID+"/invite", map[string]any{"user_id": u.UserID}, nil)
	}()
	if !e.waitHeirloomExit(30 * time.Second) {
		t.Fatal("heirloom did not reach the crash point")
	}
	if err := e.startHeirloom(); err != nil {
		t.Fatal(err)
	}
	sent := puppetBundles(t, p).Sent
	if len(sent) != 1 {
		t.Fatalf("want the one interrupted bundle: %+v", sent)
	}
	eventually(t, 30*time.Second, "the resumed delivery to wait for the invite", func() (bool, string) {
		if now := puppetBundles(t, p).Sent; len(now) == 1 && now[0].State == "delivered" {
			t.Fatalf("a bundle was delivered to a user who was never invited: %+v", now[0])
		}
		return heirloomLogged(t, "waits for the invite", sent[0].BundleID), "not checked yet"
	})
	if sent = puppetBundles(t, p).Sent; sent[0].State != "uploaded" {
		t.Fatalf("a bundle was delivered to a user who was never invited: %+v", sent[0])
	}
	if got := jsToDevice(t, u, "m.room_key_bundle"); len(got) != 0 {
		t.Fatalf("the bundle reached a user who was never invited: %+v", got)
	}
	// The bridge retries the invite: its echo delivers the bundle built for it, and builds no second.
	path := fmt.Sprintf("%s/_matrix/client/v3/rooms/%s/invite?user_id=%s", e.hsURL, url.PathEscape(roomID), url.QueryEscape(p.UserID))
	if code, err := e.request("POST", path, "Bearer "+e.asToken, map[string]any{"user_id": u.UserID}, nil); err != nil || code != 200 {
		t.Fatalf("invite after the crash: %d %v", code, err)
	}
	eventually(t, 30*time.Second, "the interrupted delivery to finish", func() (bool, string) {
		sent = puppetBundles(t, p).Sent
		return len(sent) == 1 && sent[0].State == "delivered", fmt.Sprintf("%+v", sent)
	})
	if len(sent[0].Devices) != 1 || !sent[0].Devices[0].Delivered {
		t.Fatalf("device outcome after resume: %+v", sent[0].Devices)
	}
	e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
	requireJSDecrypts(t, u, roomID, []string{"survives a crash"})
	if sent = puppetBundles(t, p).Sent; len(sent) != 1 {
		t.Fatalf("the resumed delivery was repeated or duplicated: %d bundles", len(sent))
	}
}

// An invitee whose cross-signing identity changed since heirloom first saw it gets nothing: the
// API reports the identity change (MSC4268's red flag).
func TestInviteeWithChangedIdentityGetsNothing(t *testing.T) {
	p := newPuppet(t)
	u := newJSUser(t, true)
	first := puppetCreateRoom(t, p, "shared")
	puppetSend(t, p, first, "seen before the reset")
	if resp := puppetInvite(t, p, first, u.UserID); resp.Bundle.State != "delivered" {
		t.Fatalf("first invite: %+v", resp.Bundle)
	}
	e.peer(t, "resetCrossSigning", map[string]any{"user": u.UserID}, nil)
	second := puppetCreateRoom(t, p, "shared")
	puppetSend(t, p, second, "not for a changed identity")
	resp := puppetInvite(t, p, second, u.UserID)
	if resp.Bundle.State != "skipped" || !strings.Contains(resp.Bundle.Reason, "identity changed") || resp.Bundle.MXC != "" {
		t.Fatalf("want a skipped bundle for the changed identity: %+v", resp.Bundle)
	}

	// The admin checks the new key with the user and confirms it: sharing resumes.
	var identity struct {
		MasterKey string `json:"master_key"`
		FirstSeen string `json:"first_seen_master_key"`
		Changed   bool   `json:"changed"`
	}
	apiOK(t, "GET", "/identities/"+u.UserID, nil, &identity)
	if !identity.Changed || identity.FirstSeen != u.MasterKey || identity.MasterKey == u.MasterKey {
		t.Fatalf("identity after the reset: %+v (registered with %s)", identity, u.MasterKey)
	}
	if code, err := e.api("PUT", "/identities/"+u.UserID, map[string]any{"master_key": identity.FirstSeen}, nil); err != nil || code != 409 {
		t.Fatalf("confirming a key that is not the current one answered %d %v, want 409", code, err)
	}
	apiOK(t, "PUT", "/identities/"+u.UserID, map[string]any{"master_key": identity.MasterKey}, &identity)
	if identity.Changed {
		t.Fatalf("still changed after confirming: %+v", identity)
	}
	third := puppetCreateRoom(t, p, "shared")
	puppetSend(t, p, third, "after the admin confirmed")
	if resp = puppetInvite(t, p, third, u.UserID); resp.Bundle.State != "delivered" {
		t.Fatalf("after confirming the new identity: %+v", resp.Bundle)
	}
	e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": third}, nil)
	requireJSDecrypts(t, u, third, []string{"after the admin confirmed"})
}
