package e2e

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// toDeviceMessage is one to-device message a js-sdk device received (decrypted if it was encrypted).
type toDeviceMessage struct {
	Type      string `json:"type"`
	Sender    string `json:"sender"`
	Encrypted bool   `json:"encrypted"`
	RoomID    string `json:"room_id"`
	SessionID string `json:"session_id"`
}

func jsToDevice(t *testing.T, u jsUser, evtType string) []toDeviceMessage {
	t.Helper()
	var resp struct {
		Messages []toDeviceMessage `json:"messages"`
	}
	e.peer(t, "toDeviceLog", map[string]any{"user": u.UserID, "type": evtType}, &resp)
	return resp.Messages
}

// heirloomLogged reports whether heirloom's log has a line containing every one of parts.
func heirloomLogged(t *testing.T, parts ...string) bool {
	t.Helper()
	data, err := os.ReadFile(e.logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

// forgeRatchet returns an export of the same session ID (its public key) with another ratchet.
func forgeRatchet(t *testing.T, exported string) string {
	t.Helper()
	raw, err := base64.RawStdEncoding.DecodeString(exported)
	if err != nil {
		t.Fatal(err)
	}
	for i := 5; i < 5+128; i++ { // version (1) and index (4), then the ratchet
		raw[i] ^= 0x5a
	}
	return base64.RawStdEncoding.EncodeToString(raw)
}

// A member who joined a `joined`-visibility room late asks the puppet for the room key by hand:
// no m.forwarded_room_key comes back, and he still reads none of what was sent before he joined.
func TestKeyRequestFromLateMemberGetsNothing(t *testing.T) {
	p := newPuppet(t)
	u := newJSUser(t, true)
	roomID := puppetCreateRoom(t, p, "joined")
	before := []string{"before the join 1", "before the join 2", "before the join 3"}
	for _, text := range before {
		puppetSend(t, p, roomID, text)
	}
	puppetInvite(t, p, roomID, u.UserID)
	e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
	puppetSend(t, p, roomID, "after the join")
	requireJSDecrypts(t, u, roomID, []string{"after the join"})
	session := sessionOf(t, p, roomID, "after the join")
	if first := sessionOf(t, p, roomID, before[0]); first != session {
		t.Fatalf("the test needs one session for all four messages: %s vs %s", first, session)
	}

	requestID := name("req_")
	e.peer(t, "sendToDeviceRaw", map[string]any{"user": u.UserID, "target": p.UserID, "target_device": p.DeviceID,
		"type": "m.room_key_request", "content": map[string]any{
			"action": "request", "request_id": requestID, "requesting_device_id": u.DeviceID,
			"body": map[string]any{"algorithm": "m.megolm.v1.aes-sha2", "room_id": roomID, "session_id": session,
				"sender_key": p.Curve25519},
		}}, nil)
	// Wait for heirloom to have handled this very request, or for the leak itself.
	eventually(t, 30*time.Second, "heirloom to handle the key request", func() (bool, string) {
		if fwd := jsToDevice(t, u, "m.forwarded_room_key"); len(fwd) > 0 {
			t.Fatalf("the puppet forwarded a room key to a member who joined late: %+v", fwd)
		}
		return heirloomLogged(t, "room key request", requestID), "not handled yet"
	})
	if fwd := jsToDevice(t, u, "m.forwarded_room_key"); len(fwd) > 0 {
		t.Fatalf("the puppet forwarded a room key to a member who joined late: %+v", fwd)
	}
	got := decryptedBodies(jsMessages(t, u, roomID, 1, 5000))
	for _, text := range before {
		if _, ok := got[text]; ok {
			t.Fatalf("the late member decrypted %q from before he joined", text)
		}
	}
}

// heldRow is what heirloom stores for a puppet's session ID in a room.
func heldRow(t *testing.T, p puppetIdentity, roomID, sessionID string) string {
	t.Helper()
	var room, senderKey string
	var pickle []byte
	err := e.db(t).QueryRow(`SELECT room_id, sender_key, session FROM crypto_megolm_inbound_session
		WHERE account_id=? AND room_id=? AND session_id=?`, p.UserID, roomID, sessionID).Scan(&room, &senderKey, &pickle)
	if err != nil {
		t.Fatalf("reading session %s: %v", sessionID, err)
	}
	return fmt.Sprintf("%s|%s|%x", room, senderKey, pickle)
}

// An inviter's bundle for one room naming the session the puppet holds for another room (its ID is
// public), with a forged ratchet or with the genuine key: the other room's row stays as it was, and
// its messages still decrypt. The bundle's entry is its own room's row, apart.
func TestBundleCannotOverwriteAnotherRoomsSessionEndToEnd(t *testing.T) {
	alice := newJSUser(t, true)
	p := newPuppet(t)
	other := jsRoomWithPuppet(t, alice, p, "shared")
	jsSend(t, alice, other, "the other room's secret")
	events := waitPuppetDecrypts(t, p, other, []string{"the other room's secret"})
	var session string
	for _, ev := range events {
		if ev.body() == "the other room's secret" {
			session = ev.SessionID
		}
	}
	var key exportedKey
	for _, k := range jsRawKeys(t, alice, other) {
		if k.SessionID == session {
			key = k
		}
	}
	if key.SessionID == "" {
		t.Fatalf("alice holds no key for session %s", session)
	}
	before := heldRow(t, p, other, session)

	for _, tc := range []struct {
		name       string
		sessionKey string
	}{{"forged ratchet", forgeRatchet(t, key.SessionKey)}, {"genuine key", key.SessionKey}} {
		t.Run(tc.name, func(t *testing.T) {
			roomID, keys := hostileSetup(t, alice, p)
			claim := key
			claim.RoomID, claim.SessionKey = roomID, tc.sessionKey
			e.peer(t, "sendBundle", map[string]any{"user": alice.UserID, "room_id": roomID, "target": p.UserID,
				"plaintext": bundleJSON(t, append([]exportedKey{claim}, keys...), nil), "timeout_ms": 60000}, nil)
			b := waitReceived(t, p, roomID, alice.UserID, "imported", "failed", "rejected")
			if b.State != "imported" || b.Skipped != 0 || b.Imported != len(keys)+1 {
				t.Fatalf("want every entry of the bundle imported for its room: %+v", b)
			}
			if after := heldRow(t, p, other, session); after != before {
				t.Fatalf("the other room's session row changed:\nbefore %s\nafter  %s", before, after)
			}
			waitPuppetDecrypts(t, p, other, []string{"the other room's secret"})
			stillWorks(t, p, other)
		})
	}
}

// An invite rescinded before heirloom heard of it, arriving in the same transaction as its
// rescinding: the puppet's later join of the (public) room accepts nothing from the rescinded
// inviter, whose bundle is never imported.
func TestRescindedInviteIsNotAcceptedEndToEnd(t *testing.T) {
	alice := newJSUser(t, true)
	p := newPuppet(t)
	busy := jsRoomWithPuppet(t, alice, p, "shared")
	var room struct {
		RoomID string `json:"room_id"`
	}
	e.peer(t, "createRoom", map[string]any{"user": alice.UserID, "history_visibility": "shared", "preset": "public_chat"}, &room)
	jsSend(t, alice, room.RoomID, "before the invite")

	// Hold heirloom still while a transaction is in flight: Synapse queues what follows, and sends
	// the invite and its rescinding together once heirloom answers.
	if err := e.heirloom.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = e.heirloom.Process.Signal(syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	jsSend(t, alice, busy, "keeps a transaction in flight")
	// Synapse has started that transaction once its request waits, unread, in heirloom's socket.
	eventually(t, 30*time.Second, "Synapse to send a transaction to the stopped heirloom", func() (bool, string) {
		return requestQueued(t, e.asPort), "no request waits on port " + fmt.Sprint(e.asPort)
	})
	e.peer(t, "invite", map[string]any{"user": alice.UserID, "room_id": room.RoomID, "target": p.UserID}, nil)
	e.peer(t, "kick", map[string]any{"user": alice.UserID, "room_id": room.RoomID, "target": p.UserID}, nil)
	resume()

	eventually(t, 60*time.Second, "heirloom to learn the invite was rescinded", func() (bool, string) {
		var membership string
		err := e.db(t).QueryRow(`SELECT membership FROM mx_user_profile WHERE room_id=? AND user_id=?`, room.RoomID, p.UserID).Scan(&membership)
		return err == nil && membership == "leave", fmt.Sprintf("membership %q (%v)", membership, err)
	})
	var join struct {
		History string          `json:"history"`
		Bundle  *receivedBundle `json:"bundle"`
	}
	apiOK(t, "POST", "/puppets/"+p.UserID+"/rooms/"+room.RoomID+"/join", nil, &join)
	if join.Bundle != nil || !strings.Contains(join.History, "without an invite") {
		t.Fatalf("the join accepted a rescinded invite: %+v", join)
	}
	for _, b := range puppetBundles(t, p).Received {
		if b.RoomID == room.RoomID && b.State == "imported" {
			t.Fatalf("the rescinded inviter's bundle was imported: %+v", b)
		}
	}
	for _, ev := range puppetMessages(t, p, room.RoomID) {
		if ev.Decrypted && ev.body() == "before the invite" {
			t.Fatal("the puppet reads history it was never given")
		}
	}
}

// A device-list change that arrives while the puppet's machine is not loaded still reaches the
// shared device tables: the puppet, loaded later, re-queries the user's devices before it
// encrypts, and the new device reads what it sends. A restart marks every tracked list outdated
// (a change reported while heirloom was down may be lost), and a list fetched again stays current
// until a change is reported.
func TestDeviceListChangeWithNoMachineLoadedEndToEnd(t *testing.T) {
	p, other := newPuppet(t), newPuppet(t)
	u := newJSUser(t, true)
	roomID := puppetCreateRoom(t, p, "shared")
	puppetInvite(t, p, roomID, u.UserID)
	e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
	puppetSend(t, p, roomID, "u's devices are tracked now")
	// The other puppet shares a room with u, not with p: its sends fetch u's list without giving p
	// a room key (which would load p's machine).
	otherRoom := puppetCreateRoom(t, other, "shared")
	puppetInvite(t, other, otherRoom, u.UserID)
	e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": otherRoom}, nil)
	outdated := func() bool {
		var v bool
		if err := e.db(t).QueryRow(`SELECT devices_outdated FROM crypto_tracked_user WHERE user_id=?`, u.UserID).Scan(&v); err != nil {
			t.Fatalf("%s is not tracked: %v", u.UserID, err)
		}
		return v
	}
	if outdated() {
		t.Fatal("the device list is outdated before any change")
	}

	// Loading a machine records the puppet's activity (e2ee.Manager.load): while p's activity
	// stays what it was before the restart, p's machine is not loaded.
	lastActive := func() int64 {
		var v int64
		if err := e.db(t).QueryRow(`SELECT last_active_at FROM puppet WHERE user_id=?`, p.UserID).Scan(&v); err != nil {
			t.Fatalf("reading %s's activity: %v", p.UserID, err)
		}
		return v
	}
	var active int64
	notLoaded := func(when string) {
		t.Helper()
		if got := lastActive(); got != active {
			t.Fatalf("%s, p's machine was loaded (activity %d, %d before the restart): the test's premise does not hold", when, got, active)
		}
	}

	restartHeirloomWith(t, func() { active = lastActive() })
	if active == 0 {
		t.Fatal("the puppet's activity is not recorded")
	}
	notLoaded("after the restart")
	if !outdated() {
		t.Fatal("a restart did not mark the tracked device list outdated")
	}
	// The other puppet sends: its machine fetches the lists again. Nothing of p's has happened
	// since the restart, so p's machine is not loaded.
	puppetSend(t, other, otherRoom, "lists fetched again after the restart")
	if outdated() {
		t.Fatal("sending after the restart did not fetch the outdated list")
	}
	notLoaded("before the device-list change")
	// Synapse drops the device lists of a transaction it could not deliver (it keeps only events,
	// ephemeral and to-device messages for its retries): wait until it delivers again, with an
	// event of the other puppet's room (its room key goes to that puppet's device, not to p's).
	const processed = `heirloom_transactions_total{outcome="processed"}`
	before := metric(t, processed)
	jsSend(t, u, otherRoom, "heirloom is reachable again")
	eventually(t, 60*time.Second, "Synapse to deliver to heirloom again", func() (bool, string) {
		return metric(t, processed) > before, "no transaction processed yet"
	})
	// A new device of u: Synapse tells heirloom in the next transaction's device_lists.
	var second jsUser
	e.peer(t, "addDevice", map[string]any{"user": u.UserID}, &second)
	eventually(t, 30*time.Second, "the device-list change to reach the shared tables", func() (bool, string) {
		return outdated(), "devices_outdated is still false"
	})
	notLoaded("when the device-list change arrived")
	// The new device's keys and its owner's signature on them are two uploads, and Synapse may
	// report them apart: the second may mark the list outdated again after this send fetched it.
	queries := metric(t, "heirloom_key_queries_total")
	puppetSend(t, p, roomID, "after the new device")
	if got := metric(t, "heirloom_key_queries_total") - queries; got != 1 {
		t.Fatalf("%v key queries for the send after the change, want 1: the puppet encrypted without re-querying the changed device list", got)
	}
	e.peer(t, "waitForMessage", map[string]any{"user": u.UserID, "device": second.DeviceID, "room_id": roomID,
		"body": "after the new device", "timeout_ms": 60000}, nil)
	// One more send may query again (the second report); then nothing changes, and a send costs
	// no query.
	for i := 1; ; i++ {
		queries = metric(t, "heirloom_key_queries_total")
		puppetSend(t, p, roomID, fmt.Sprintf("nothing changed since, %d", i))
		got := metric(t, "heirloom_key_queries_total") - queries
		if got == 0 {
			break
		} else if i == 3 {
			t.Fatalf("%v key queries for the third send with no device-list change, want 0", got)
		}
	}
}

// In a `joined` room an invitee gets no room key until they join: what is sent while they are only
// invited stays unreadable to them, as Element's clients share it.
func TestJoinedRoomInviteeGetsNoKeyBeforeJoining(t *testing.T) {
	p := newPuppet(t)
	u := newJSUser(t, true)
	roomID := puppetCreateRoom(t, p, "joined")
	puppetInvite(t, p, roomID, u.UserID)
	puppetSend(t, p, roomID, "while only invited")
	e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
	puppetSend(t, p, roomID, "after joining")
	got := requireJSDecrypts(t, u, roomID, []string{"after joining"})
	if _, ok := got["while only invited"]; ok {
		t.Fatal("an invitee of a joined room read what was sent before they joined")
	}
}

// An invite that cannot succeed (the invitee is banned) sends no bundle: MSC4268 shares before the
// invite, so the keys must not leave for an invite the homeserver refuses.
func TestBannedInviteeGetsNoBundle(t *testing.T) {
	p := newPuppet(t)
	u := newJSUser(t, true)
	roomID := puppetCreateRoom(t, p, "shared")
	puppetSend(t, p, roomID, "not for the banned")
	path := fmt.Sprintf("%s/_matrix/client/v3/rooms/%s/ban?user_id=%s", e.hsURL, url.PathEscape(roomID), url.QueryEscape(p.UserID))
	if code, err := e.request("POST", path, "Bearer "+e.asToken, map[string]any{"user_id": u.UserID}, nil); err != nil || code != 200 {
		t.Fatalf("banning: %d %v", code, err)
	}
	code, err := e.api("POST", "/puppets/"+p.UserID+"/rooms/"+roomID+"/invite", map[string]any{"user_id": u.UserID}, nil)
	if err != nil || code == 200 {
		t.Fatalf("inviting a banned user answered %d %v, want the homeserver's refusal", code, err)
	}
	sent := puppetBundles(t, p).Sent
	if len(sent) != 1 || sent[0].State != "skipped" || !strings.Contains(sent[0].Reason, "banned") {
		t.Fatalf("want one bundle skipped for the ban: %+v", sent)
	}
	if got := jsToDevice(t, u, "m.room_key_bundle"); len(got) != 0 {
		t.Fatalf("a banned user got the bundle: %+v", got)
	}
}

// requestQueued reports whether a connection to the local port holds bytes its (stopped) server
// has not read: a request was sent to it. It reads the kernel's TCP tables.
func requestQueued(t testing.TB, port int) bool {
	t.Helper()
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) < 5 || fields[3] != "01" { // 01: ESTABLISHED
				continue
			}
			local := fields[1][strings.LastIndexByte(fields[1], ':')+1:]
			queues := strings.SplitN(fields[4], ":", 2) // tx_queue:rx_queue, in hex
			if localPort, err := strconv.ParseInt(local, 16, 32); err == nil && int(localPort) == port &&
				len(queues) == 2 && strings.TrimLeft(queues[1], "0") != "" {
				return true
			}
		}
	}
	return false
}
