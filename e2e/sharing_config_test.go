package e2e

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"
)

// jsDecrypted returns what one of the js user's devices decrypts in the room, waiting for want.
func jsDecrypted(t *testing.T, u jsUser, device, roomID string, want string) map[string]jsMessage {
	t.Helper()
	params := map[string]any{"user": u.UserID, "room_id": roomID, "min_count": 1, "timeout_ms": 60000}
	if device != "" {
		params["device"] = device
	}
	var resp struct {
		Messages []jsMessage `json:"messages"`
	}
	e.peer(t, "messages", params, &resp)
	got := decryptedBodies(resp.Messages)
	if _, ok := got[want]; !ok {
		t.Fatalf("%s %s cannot decrypt %q; decrypted: %v", u.UserID, device, want, keys(got))
	}
	return got
}

// An invitee with two devices, one signed by their cross-signing identity and one not: only the
// signed one gets the bundle, and the invite's report says why the other was skipped.
func TestInviteeUnsignedSecondDeviceGetsNothing(t *testing.T) {
	p := newPuppet(t)
	u := newJSUser(t, true)
	var second jsUser
	e.peer(t, "addDevice", map[string]any{"user": u.UserID}, &second)
	roomID := puppetCreateRoom(t, p, "shared")
	puppetSend(t, p, roomID, "for the signed device only")
	b := puppetInvite(t, p, roomID, u.UserID).Bundle
	if b.State != "delivered" || b.Sessions < 1 {
		t.Fatalf("bundle: %+v", b)
	}
	outcome := map[string]string{}
	for _, d := range b.Devices {
		outcome[d.DeviceID] = fmt.Sprintf("delivered=%t reason=%q", d.Delivered, d.Reason)
	}
	if len(b.Devices) != 2 || outcome[u.DeviceID] != `delivered=true reason=""` ||
		outcome[second.DeviceID] != `delivered=false reason="device is not signed by the invitee's cross-signing identity"` {
		t.Fatalf("want the signed device %s delivered and the unsigned %s skipped with the reason, got %v",
			u.DeviceID, second.DeviceID, outcome)
	}
	var sent []sentBundle
	for _, sb := range puppetBundles(t, p).Sent {
		if sb.BundleID == b.BundleID {
			sent = append(sent, sb)
		}
	}
	if len(sent) != 1 || len(sent[0].Devices) != 2 {
		t.Fatalf("GET /bundles does not report both devices: %+v", sent)
	}

	e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
	jsDecrypted(t, u, "", roomID, "for the signed device only")
	// The unsigned device reads what the puppet sends after the join (the room key goes to every
	// device), and still not the history: its key came only in the bundle.
	puppetSend(t, p, roomID, "after the join")
	got := jsDecrypted(t, u, second.DeviceID, roomID, "after the join")
	if _, ok := got["for the signed device only"]; ok {
		t.Fatal("the unsigned device decrypted the history")
	}
}

// history_sharing.share_on_invite: false: a puppet's invites, through the API or straight
// through the homeserver, share no history, and the invitee cannot read the past.
func TestShareOnInviteOff(t *testing.T) {
	h := startInstance(t, "alt", func(c *heirloomConfig) { c.shareOnInvite = false })
	p := h.newPuppet(t)
	viaAPI, direct := newJSUser(t, true), newJSUser(t, true)
	roomID := h.createRoom(t, p, "shared")
	h.send(t, p, roomID, "kept by share_on_invite: false")

	b := h.invite(t, p, roomID, viaAPI.UserID).Bundle
	if b.State != "skipped" || b.Reason == "" || b.MXC != "" || b.Sessions != 0 || len(b.Devices) != 0 {
		t.Fatalf("an invite with share_on_invite off: %+v", b)
	}
	path := fmt.Sprintf("%s/_matrix/client/v3/rooms/%s/invite?user_id=%s", e.hsURL, url.PathEscape(roomID), url.QueryEscape(p.UserID))
	if code, err := e.request("POST", path, "Bearer "+h.asToken, map[string]any{"user_id": direct.UserID}, nil); err != nil || code != 200 {
		t.Fatalf("direct invite: %d %v", code, err)
	}
	for _, u := range []jsUser{viaAPI, direct} {
		e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
	}
	h.send(t, p, roomID, "after the joins")
	for _, u := range []jsUser{viaAPI, direct} {
		// The message after the join came later than a bundle of the invite would have.
		if _, ok := jsDecrypted(t, u, "", roomID, "after the joins")["kept by share_on_invite: false"]; ok {
			t.Fatalf("%s decrypted history although share_on_invite is off", u.UserID)
		}
	}
	for _, sb := range h.bundles(t, p).Sent {
		if sb.State != "skipped" {
			t.Fatalf("a bundle was built with share_on_invite off: %+v", sb)
		}
	}
}

// history_sharing.accept_window: a bundle from the inviter that arrives within the window after
// the puppet accepted is imported; one that arrives after it is not, and is marked expired.
func TestAcceptWindow(t *testing.T) {
	const window = 4 * time.Second
	h := startInstance(t, "alt", func(c *heirloomConfig) { c.acceptWindow = window.String(); c.autoJoin = nil })
	p := h.newPuppet(t)
	u := newJSUser(t, true)
	accept := func(text string) (string, time.Time) {
		roomID := jsCreateRoom(t, u, "shared")
		jsSend(t, u, roomID, text)
		e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": roomID, "target": p.UserID, "share_history": false}, nil)
		var join struct {
			History string `json:"history"`
		}
		h.apiOK(t, "POST", "/puppets/"+p.UserID+"/rooms/"+roomID+"/join", map[string]any{}, &join)
		if !strings.Contains(join.History, "no key bundle from "+u.UserID) {
			t.Fatalf("the join did not record the invite from %s: %q", u.UserID, join.History)
		}
		return roomID, time.Now()
	}

	inTime, _ := accept("arrives in time")
	e.peer(t, "shareHistory", map[string]any{"user": u.UserID, "room_id": inTime, "target": p.UserID}, nil)
	h.waitReceived(t, p, inTime, u.UserID, "imported")
	h.waitDecrypts(t, p, inTime, []string{"arrives in time"})

	late, acceptedAt := accept("arrives too late")
	time.Sleep(time.Until(acceptedAt.Add(window + time.Second))) // let the window pass
	e.peer(t, "shareHistory", map[string]any{"user": u.UserID, "room_id": late, "target": p.UserID}, nil)
	b := h.waitReceived(t, p, late, u.UserID, "expired", "imported", "rejected", "failed")
	if b.State != "expired" || b.Imported != 0 || !strings.Contains(b.Error, window.String()) {
		t.Fatalf("a bundle after the accept window: %+v", b)
	}
	for _, ev := range h.messages(t, p, late) {
		if ev.Decrypted && ev.body() == "arrives too late" {
			t.Fatal("the puppet decrypted history from a bundle past the accept window")
		}
	}
}
