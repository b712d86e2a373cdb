package e2e

// Gateway mode end to end: heirloom in front of unmodified bridges (heisenbridge with ngircd, and
// the test bridge on matrix-appservice-bridge), with real js-sdk users on the other side. Synapse
// loads the registration heirloom generated from each bridge's own (the gateway profiles), and
// each bridge's homeserver URL is heirloom: the two changes a bridge admin makes.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startGateway starts heirloom in gateway mode of the profile (gw-irc or gw-js), and returns it
// with the URL the bridge takes for its homeserver.
func startGateway(t testing.TB, profile string, mutate func(*gatewayConfig), extraEnv ...string) (*instance, string) {
	t.Helper()
	h := startInstanceEnv(t, profile, func(c *heirloomConfig) {
		if mutate != nil {
			mutate(c.gateway)
		}
	}, extraEnv...)
	return h, fmt.Sprintf("http://127.0.0.1:%d", h.asPort)
}

// deviceOf returns the E2EE device heirloom created for a bridge user, or "".
func (h *instance) deviceOf(t testing.TB, userID string) string {
	t.Helper()
	var device string
	db := h.db(t)
	if err := db.QueryRow(`SELECT device_id FROM puppet WHERE user_id=? AND ready`, userID).Scan(&device); err != nil {
		return ""
	}
	return device
}

// requireSignedByOwner checks what Element checks: js-sdk's getDeviceVerificationStatus says the
// bridge user's device is signed by its owner.
func requireBridgeDeviceSigned(t testing.TB, u jsUser, h *instance, userID string) {
	t.Helper()
	device := h.deviceOf(t, userID)
	if device == "" {
		t.Fatalf("heirloom holds no E2EE device for %s", userID)
	}
	var status struct {
		Device *struct {
			SignedByOwner bool `json:"signedByOwner"`
		} `json:"device"`
	}
	e.peer(t, "deviceStatus", map[string]any{"user": u.UserID, "target_user": userID, "target_device": device,
		"wait_signed": true, "timeout_ms": 30000}, &status)
	if status.Device == nil || !status.Device.SignedByOwner {
		t.Fatalf("js-sdk does not see %s's device %s as signed by its owner: %+v", userID, device, status)
	}
}

// jsWaitDecrypted waits until u sees a message matching filter, and checks it arrived encrypted
// and decrypted without a warning in Element (shield NONE).
func jsWaitDecrypted(t testing.TB, u jsUser, roomID string, filter map[string]any) jsMessage {
	t.Helper()
	params := map[string]any{"user": u.UserID, "room_id": roomID, "timeout_ms": 60000}
	for k, v := range filter {
		params[k] = v
	}
	var m jsMessage
	e.peer(t, "waitForMessage", params, &m)
	if !m.Encrypted || !m.Decrypted {
		t.Fatalf("%s saw %+v: want it encrypted, and decrypted", u.UserID, m)
	}
	if m.ShieldColour != "NONE" {
		t.Fatalf("Element would warn about %+v (shield %s, %s)", m, m.ShieldColour, m.ShieldReason)
	}
	return m
}

// heirloomEncryption is unsigned["io.heirloom.encryption"] of an event heirloom decrypted for the bridge.
type heirloomEncryption struct {
	SessionID    string `json:"session_id"`
	SenderDevice string `json:"sender_device"`
	Trust        string `json:"trust"`
	KeysSharedBy string `json:"keys_shared_by"`
}

func encryptionOf(t testing.TB, unsigned json.RawMessage) *heirloomEncryption {
	t.Helper()
	var u struct {
		Enc *heirloomEncryption `json:"io.heirloom.encryption"`
	}
	if len(unsigned) > 0 {
		if err := json.Unmarshal(unsigned, &u); err != nil {
			t.Fatalf("unsigned %s: %v", unsigned, err)
		}
	}
	return u.Enc
}

// ---------------------------------------------------------------------------------- recorder

// deliveredTxn is a transaction heirloom delivered to a bridge, as the bridge acknowledged it.
type deliveredTxn struct {
	ID     string
	Events []struct {
		EventID  string          `json:"event_id"`
		RoomID   string          `json:"room_id"`
		Sender   string          `json:"sender"`
		Type     string          `json:"type"`
		Content  json.RawMessage `json:"content"`
		Unsigned json.RawMessage `json:"unsigned"`
	} `json:"events"`
}

// txnRecorder sits between heirloom and a bridge (gateway.bridge_url): it forwards every request
// to the bridge and keeps each transaction the bridge answered 200, and a 502 when it is down.
type txnRecorder struct {
	URL string
	mu  sync.Mutex
	got []deliveredTxn
}

func startTxnRecorder(t testing.TB, bridgeURL string) *txnRecorder {
	t.Helper()
	to, err := url.Parse(bridgeURL)
	if err != nil {
		t.Fatal(err)
	}
	r := &txnRecorder{}
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(to) }}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		req.Body = io.NopCloser(bytes.NewReader(body))
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		rp.ServeHTTP(rec, req)
		txnID, ok := strings.CutPrefix(req.URL.Path, "/_matrix/app/v1/transactions/")
		if !ok || rec.status != http.StatusOK {
			return
		}
		txn := deliveredTxn{ID: txnID}
		if json.Unmarshal(body, &txn) == nil {
			r.mu.Lock()
			r.got = append(r.got, txn)
			r.mu.Unlock()
		}
	}))
	t.Cleanup(srv.Close)
	r.URL = srv.URL
	return r
}

// delivered lists the room events of roomID the bridge acknowledged, in order, by event ID (a
// repeated ID appears again).
func (r *txnRecorder) delivered(roomID string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, txn := range r.got {
		for _, ev := range txn.Events {
			if ev.RoomID == roomID {
				out = append(out, ev.EventID)
			}
		}
	}
	return out
}

// ---------------------------------------------------------------------------------- heisenbridge

// TestGatewayHeisenbridge: heisenbridge, unmodified, behind heirloom, in rooms heirloom encrypts
// (gateway.encrypt_new_rooms). The js-sdk owner sets the bridge up in its encrypted control room;
// an IRC user's line reaches the encrypted channel room from a ghost whose device js-sdk sees
// signed by its owner; the owner's encrypted reply reaches IRC as plaintext. In the owner's own
// encrypted room, plumbed to a channel, the bot joins with the owner's key bundle, and a second
// js-sdk user, invited by the owner, reads what was said before the invite (heisenbridge's own
// rooms let only its bot invite). Then heisenbridge is stopped for 60 s while both users write:
// once it is back it receives every message, in order, once.
func TestGatewayHeisenbridge(t *testing.T) {
	ircd := startNgircd(t)
	u := newJSUser(t, true)
	rec := startTxnRecorder(t, e.heisenbridgeGWReg.URL)
	gw, gwURL := startGateway(t, "gw-irc", func(g *gatewayConfig) {
		g.encryptNewRooms = true
		g.bridgeURL = rec.URL
	})
	hbOpts := heisenbridgeOpts{Homeserver: gwURL, Registration: &e.heisenbridgeGWReg, Owner: u.UserID}
	hb := startHeisenbridge(t, hbOpts)

	suffix := strconv.FormatInt(uniq.Add(1), 10) + strconv.FormatInt(time.Now().UnixNano()%100000, 10)
	network, channel := "gnet"+suffix, "#gheirloom"+suffix
	ircNick, mxNick := "gircuser"+suffix, "gmxuser"+suffix
	irc := dialIRC(t, ircd.Addr(), ircNick)
	irc.Join(channel)

	networkRoom := hbConnect(t, u, hb, ircd, network, mxNick)
	jsSendID(t, u, networkRoom, "JOIN "+channel)
	irc.Expect(30*time.Second, mxNick+" joining "+channel, func(m ircMessage) bool {
		return m.Command == "JOIN" && m.Nick() == mxNick && len(m.Params) > 0 && m.Params[0] == channel
	})
	channelRoom, _ := jsAcceptInvite(t, u, "")
	requireBridgeDeviceSigned(t, u, gw, hb.BotID)

	// IRC -> Matrix: encrypted by the ghost's own device, signed by its owner.
	ghost := fmt.Sprintf("@hbgw_%s_%s:%s", network, ircNick, domain)
	fromIRC := "hello from IRC, encrypted " + suffix
	irc.Privmsg(channel, fromIRC)
	got := jsWaitDecrypted(t, u, channelRoom, map[string]any{"body": fromIRC})
	if got.Sender != ghost {
		t.Fatalf("the IRC line reached Matrix from %s, want the ghost %s", got.Sender, ghost)
	}
	requireBridgeDeviceSigned(t, u, gw, ghost)

	// Matrix -> IRC: the owner's encrypted message, as plaintext.
	fromMatrix := "hello from Matrix, encrypted " + suffix
	jsSendID(t, u, channelRoom, fromMatrix)
	irc.ExpectPrivmsg(30*time.Second, mxNick, channel, fromMatrix)

	// History: the owner's own encrypted room, plumbed to a second channel. The owner writes,
	// then invites the bridge bot with history shared (js-sdk's MSC4268): the bot joins (PLUMB),
	// and heirloom imports the owner's bundle for it. An IRC line arrives from a ghost; a second
	// user, invited by the owner, reads both from before the invite.
	channel2 := "#gplumbed" + suffix
	irc.Join(channel2)
	var plumbed struct {
		RoomID string `json:"room_id"`
	}
	e.peer(t, "createRoom", map[string]any{"user": u.UserID, "history_visibility": "shared"}, &plumbed)
	before := "said before the bridge was here " + suffix
	jsSendID(t, u, plumbed.RoomID, before)
	e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": plumbed.RoomID, "target": hb.BotID}, nil)
	hbCommand(t, u, hb.BotID, networkRoom, fmt.Sprintf("PLUMB %s %s", plumbed.RoomID, channel2), "Plumbed "+plumbed.RoomID)
	irc.Expect(30*time.Second, mxNick+" joining "+channel2, func(m ircMessage) bool {
		return m.Command == "JOIN" && m.Nick() == mxNick && len(m.Params) > 0 && m.Params[0] == channel2
	})
	eventually(t, 30*time.Second, "heirloom to import the owner's bundle for the bot", func() (bool, string) {
		var state string
		var imported int
		db := gw.db(t)
		err := db.QueryRow(`SELECT state, imported FROM bundle_received WHERE puppet=? AND room_id=? AND sender=?`,
			hb.BotID, plumbed.RoomID, u.UserID).Scan(&state, &imported)
		return err == nil && state == "imported" && imported > 0, fmt.Sprintf("%s %d %v", state, imported, err)
	})
	fromIRC2 := "a line for the plumbed room " + suffix
	irc.Privmsg(channel2, fromIRC2)
	if m := jsWaitDecrypted(t, u, plumbed.RoomID, map[string]any{"body": fromIRC2}); m.Sender != ghost {
		t.Fatalf("the IRC line reached the plumbed room from %s, want the ghost %s", m.Sender, ghost)
	}
	u2 := newJSUser(t, true)
	e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": plumbed.RoomID, "target": u2.UserID}, nil)
	jsAcceptInvite(t, u2, plumbed.RoomID)
	var history map[string]jsMessage
	eventually(t, 60*time.Second, u2.UserID+" to read the plumbed room's history", func() (bool, string) {
		history = decryptedBodies(jsMessages(t, u2, plumbed.RoomID, 2, 5000))
		_, a := history[before]
		_, b := history[fromIRC2]
		return a && b, fmt.Sprintf("%v", history)
	})
	if m := history[fromIRC2]; m.Sender != ghost || m.Forwarder != u.UserID {
		t.Fatalf("%s read the IRC line as %+v: want it from %s, its key shared by %s", u2.UserID, m, ghost, u.UserID)
	}
	if m := history[before]; m.Sender != u.UserID || m.Forwarder != u.UserID {
		t.Fatalf("%s read the owner's message as %+v: want it from %s, its key shared by %s", u2.UserID, m, u.UserID, u.UserID)
	}

	// heisenbridge down for 60 s while both users write in the plumbed room.
	hb.proc.stop(15 * time.Second)
	var written []string
	writers := []jsUser{u, u2, u, u2, u}
	for i, w := range writers {
		written = append(written, jsSendID(t, w, plumbed.RoomID, fmt.Sprintf("while the bridge is down %d %s", i, suffix)))
		time.Sleep(12 * time.Second)
	}
	hb = startHeisenbridge(t, hbOpts)
	eventually(t, 90*time.Second, "heisenbridge to receive what was written while it was down", func() (bool, string) {
		seen := rec.delivered(plumbed.RoomID)
		for _, id := range written {
			if !slices.Contains(seen, id) {
				return false, fmt.Sprintf("delivered so far: %v", seen)
			}
		}
		return true, ""
	})
	time.Sleep(2 * time.Second) // anything delivered twice would be here by now
	seen := rec.delivered(plumbed.RoomID)
	var order []string
	counts := map[string]int{}
	for _, id := range seen {
		counts[id]++
		if slices.Contains(written, id) {
			order = append(order, id)
		}
	}
	for id, n := range counts {
		if n > 1 {
			t.Fatalf("heisenbridge received %s %d times: %v", id, n, seen)
		}
	}
	if !slices.Equal(order, written) {
		t.Fatalf("heisenbridge received the messages written while it was down as %v, want %v in that order", order, written)
	}
	// Each as plaintext, with how heirloom decrypted it.
	rec.mu.Lock()
	for _, txn := range rec.got {
		for _, ev := range txn.Events {
			if ev.EventID == written[0] {
				if ev.Type != "m.room.message" || !strings.Contains(string(ev.Content), "while the bridge is down 0") {
					t.Errorf("heisenbridge received %s as %s %s, want the plaintext message", ev.EventID, ev.Type, ev.Content)
				}
				if enc := encryptionOf(t, ev.Unsigned); enc == nil || enc.SessionID == "" || enc.Trust != "cross_signed" {
					t.Errorf("heisenbridge received %s with io.heirloom.encryption %+v, want its session and trust cross_signed", ev.EventID, enc)
				}
			}
		}
	}
	rec.mu.Unlock()

	// Back on IRC too, once heisenbridge has reconnected and rejoined the channel; in a plumbed
	// room heisenbridge relays a user's line as "<name> text".
	irc.Expect(120*time.Second, mxNick+" rejoining "+channel2+" after the restart", func(m ircMessage) bool {
		return m.Command == "JOIN" && m.Nick() == mxNick && len(m.Params) > 0 && m.Params[0] == channel2
	})
	afterRestart := "after the restart " + suffix
	jsSendID(t, u, plumbed.RoomID, afterRestart)
	irc.Expect(30*time.Second, "the line written after the restart", func(m ircMessage) bool {
		return m.Command == "PRIVMSG" && m.Nick() == mxNick && strings.HasSuffix(m.Trailing(), afterRestart)
	})
}

// hbConnect sets heisenbridge up as its owner u does in Element: in the control room heisenbridge
// opens (encrypted: its notices arrive encrypted by the bot's own device, and the owner's
// encrypted commands reach heisenbridge decrypted), it adds the network and the IRC server, opens
// the network room, and connects as mxNick. It returns the network room.
func hbConnect(t *testing.T, u jsUser, hb *heisenbridgeProc, ircd *ircServer, network, mxNick string) string {
	t.Helper()
	control, inviter := jsAcceptInvite(t, u, "")
	if inviter != hb.BotID {
		t.Fatalf("the first invite came from %s, want heisenbridge's bot %s", inviter, hb.BotID)
	}
	hbCommand(t, u, hb.BotID, control, "ADDNETWORK "+network, "Network added.")
	jsWaitDecrypted(t, u, control, map[string]any{"sender": hb.BotID, "body_contains": "Network added."})
	hbCommand(t, u, hb.BotID, control, fmt.Sprintf("ADDSERVER %s %s %d", network, ircd.Host, ircd.Port), "Server added.")
	hbCommand(t, u, hb.BotID, control, "OPEN "+network, "You have been invited to "+network)
	networkRoom, _ := jsAcceptInvite(t, u, "")
	hbCommand(t, u, hb.BotID, networkRoom, "NICK "+mxNick, "Nickname set to "+mxNick)
	hbCommand(t, u, hb.BotID, networkRoom, "CONNECT", "Welcome to the Internet Relay Network")
	return networkRoom
}

// ---------------------------------------------------------------------------------- test bridge

// TestGatewayJSBridge: the test bridge on matrix-appservice-bridge, unmodified, behind heirloom.
// Its ghosts register, create a room (encrypted by gateway.encrypt_new_rooms), invite a js-sdk
// user, get invited by that user and join, send text and an image, and read /messages, all
// through heirloom. The js-sdk user checks each step from the other side: the ghosts' messages
// decrypt without a warning from devices signed by their owners, the image decrypts to the very
// bytes uploaded, and the bridge receives the user's encrypted reply, and reads /messages and the
// image, in plaintext. A second js-sdk user invited by a ghost reads the history the ghost shared.
func TestGatewayJSBridge(t *testing.T) {
	gw, gwURL := startGateway(t, "gw-js", func(g *gatewayConfig) { g.encryptNewRooms = true })
	b := startJSBridge(t, jsBridgeOpts{Homeserver: gwURL, Registration: &e.jsBridgeGWReg})
	u := newJSUser(t, true)
	scene := newGhostScene(t, b, u, "jsg_", "bridged encrypted room")
	room, alice, bob := scene.room, scene.alice, scene.bob
	if d := gw.deviceOf(t, bob); d != "" {
		t.Fatalf("%s got device %s by registering and joining: ghosts get one when they first need it", bob, d)
	}
	text := "hello from a ghost, encrypted " + name("")
	sent, img, pngData := scene.speak(t, text)
	sum := sha256.Sum256(pngData)

	seen := jsWaitDecrypted(t, u, room, map[string]any{"body": text})
	if seen.Sender != alice || seen.EventID != sent {
		t.Fatalf("the text arrived as %+v, want event %s from %s", seen, sent, alice)
	}
	seenImg := jsWaitDecrypted(t, u, room, map[string]any{"msgtype": "m.image", "sender": bob})
	if seenImg.EventID != img.EventID || seenImg.URL != "" || seenImg.FileURL == "" || seenImg.FileURL == img.ContentURI {
		t.Fatalf("the image arrived as %+v: want event %s with an encrypted file, not the plaintext upload %s", seenImg, img.EventID, img.ContentURI)
	}
	var dl struct {
		Size   int    `json:"size"`
		SHA256 string `json:"sha256"`
	}
	e.peer(t, "downloadAttachment", map[string]any{"user": u.UserID, "room_id": room, "event_id": img.EventID}, &dl)
	if dl.Size != len(pngData) || dl.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("the js-sdk user decrypted %d bytes (sha256 %s), want the %d uploaded (sha256 %x)", dl.Size, dl.SHA256, len(pngData), sum)
	}
	requireBridgeDeviceSigned(t, u, gw, alice)
	requireBridgeDeviceSigned(t, u, gw, bob)

	// The js-sdk user answers, encrypted; the bridge's handler gets the plaintext.
	reply := "hello ghosts, encrypted " + name("")
	replyID := jsSendID(t, u, room, reply)
	got := b.waitEvent(t, map[string]any{"room_id": room, "type": "m.room.message", "body": reply})
	if got.Event.EventID != replyID || got.Event.Sender != u.UserID {
		t.Fatalf("the bridge received %s from %s, want %s from %s", got.Event.EventID, got.Event.Sender, replyID, u.UserID)
	}
	if enc := encryptionOf(t, got.Event.Unsigned); enc == nil || enc.SenderDevice != u.DeviceID || enc.Trust != "cross_signed" || enc.KeysSharedBy != "" {
		t.Fatalf("the bridge received the reply with io.heirloom.encryption %+v, want device %s, cross_signed, no keys_shared_by", enc, u.DeviceID)
	}

	// A ghost reads the room's history through /messages: plaintext, newest first, the image as a
	// URL the ghost downloads (decrypted by heirloom) to the bytes uploaded.
	var history struct {
		Chunk []struct {
			EventID string `json:"event_id"`
			Type    string `json:"type"`
			Content struct {
				Body    string `json:"body"`
				Msgtype string `json:"msgtype"`
				URL     string `json:"url"`
			} `json:"content"`
		} `json:"chunk"`
	}
	b.call(t, "messages", map[string]any{"user": bob, "room_id": room, "limit": 50}, &history)
	var order []string
	imageURL := ""
	for _, ev := range history.Chunk {
		if ev.Type == "m.room.encrypted" {
			t.Fatalf("/messages for %s still has an encrypted event: %+v", bob, ev)
		}
		if ev.Type == "m.room.message" {
			order = append(order, ev.EventID)
		}
		if ev.EventID == img.EventID {
			imageURL = ev.Content.URL
		}
		if ev.EventID == replyID && ev.Content.Body != reply {
			t.Fatalf("/messages has the reply as %+v", ev)
		}
	}
	if want := []string{replyID, img.EventID, sent}; !slices.Equal(order, want) {
		t.Fatalf("/messages for %s lists messages %v, want %v (newest first)", bob, order, want)
	}
	if !strings.HasPrefix(imageURL, "mxc://") {
		t.Fatalf("/messages gives the image the url %q, want an mxc URL heirloom serves", imageURL)
	}
	var ghostDL struct {
		SHA256 string `json:"sha256"`
	}
	b.call(t, "download", map[string]any{"user": bob, "mxc": imageURL}, &ghostDL)
	if ghostDL.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("the ghost downloaded sha256 %s, want %x", ghostDL.SHA256, sum)
	}

	// A ghost invites a second js-sdk user: heirloom shares the room's history from the ghost's
	// device before the invite (MSC4268), and the new user reads it.
	u2 := newJSUser(t, true)
	b.call(t, "invite", map[string]any{"user": alice, "room_id": room, "target": u2.UserID}, nil)
	jsAcceptInvite(t, u2, room)
	var read map[string]jsMessage
	eventually(t, 60*time.Second, u2.UserID+" to read the room's history", func() (bool, string) {
		read = decryptedBodies(jsMessages(t, u2, room, 3, 5000))
		_, a := read[text]
		_, r := read[reply]
		return a && r, fmt.Sprintf("%v", read)
	})
	if m := read[text]; m.Sender != alice || m.Forwarder != alice {
		t.Fatalf("%s read the ghost's text as %+v, want it from %s with keys shared by %s", u2.UserID, m, alice, alice)
	}
	if m := read[reply]; m.Sender != u.UserID || m.Forwarder != alice {
		t.Fatalf("%s read the reply as %+v, want it from %s with keys shared by %s", u2.UserID, m, u.UserID, alice)
	}

	// Refused: a token other than the bridge's.
	code, _ := e.request("GET", gwURL+"/_matrix/client/v3/joined_rooms", "Bearer "+u.UserID, nil, nil)
	if code != http.StatusUnauthorized {
		t.Fatalf("a request with a token other than the bridge's got %d, want 401", code)
	}

	// What an operator watches.
	metrics := scrape(t, gwURL+"/metrics")
	for _, line := range []string{"heirloom_gateway_outbox_events ", "heirloom_gateway_delivery_seconds_count ",
		"heirloom_gateway_key_waits_total ", "heirloom_gateway_encrypted_sends_total ", `heirloom_gateway_invite_bundles_total{state="delivered"} `} {
		if v, ok := metricValue(metrics, line); !ok {
			t.Fatalf("/metrics has no %q:\n%s", line, metrics)
		} else if line != "heirloom_gateway_outbox_events " && line != "heirloom_gateway_key_waits_total " && v <= 0 {
			t.Fatalf("/metrics has %s%g, want more than 0", line, v)
		}
	}
}

// scrape reads a /metrics page.
func scrape(t testing.TB, target string) string {
	t.Helper()
	resp, err := http.Get(target)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// metricValue returns the value of the sample line starting with prefix (name, labels, space).
func metricValue(metrics, prefix string) (float64, bool) {
	for _, l := range strings.Split(metrics, "\n") {
		if rest, ok := strings.CutPrefix(l, prefix); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// TestGatewayCrashBetweenAckAndDelivery: heirloom acknowledges the homeserver's transaction once
// the bridge's copy is stored, and is SIGKILLed before delivering it (gateway_hold_delivery keeps
// it from delivering). After the restart the bridge receives the message, once.
func TestGatewayCrashBetweenAckAndDelivery(t *testing.T) {
	gw, gwURL := startGateway(t, "gw-js", func(g *gatewayConfig) { g.encryptNewRooms = true }, "HEIRLOOM_FAULT=gateway_hold_delivery")
	b := startJSBridge(t, jsBridgeOpts{Homeserver: gwURL, Registration: &e.jsBridgeGWReg})
	u := newJSUser(t, true)
	ghost := "@" + name("jsg_crash") + ":" + domain
	b.call(t, "register", map[string]any{"user": ghost}, nil)
	var room struct {
		RoomID string `json:"room_id"`
	}
	b.call(t, "createRoom", map[string]any{"user": ghost, "name": "crash room"}, &room)
	// The ghost speaks first: its device exists before the js-sdk user sends, so the user shares
	// the room key with it.
	b.call(t, "sendText", map[string]any{"user": ghost, "room_id": room.RoomID, "body": "first"}, nil)
	b.call(t, "invite", map[string]any{"user": ghost, "room_id": room.RoomID, "target": u.UserID}, nil)
	jsAcceptInvite(t, u, room.RoomID)

	body := "written before the crash " + name("")
	eventID := jsSendID(t, u, room.RoomID, body)
	eventually(t, 30*time.Second, "heirloom to store the message for the bridge and acknowledge it", func() (bool, string) {
		var n int
		db := gw.db(t)
		if err := db.QueryRow(`SELECT COUNT(*) FROM gateway_event WHERE event_id=?`, eventID).Scan(&n); err != nil {
			return false, err.Error()
		}
		return n == 1, "not stored yet"
	})
	time.Sleep(500 * time.Millisecond) // the acknowledgement follows the store at once
	var before struct {
		Events []bridgeEvent `json:"events"`
	}
	b.call(t, "events", map[string]any{"room_id": room.RoomID, "type": "m.room.message"}, &before)
	if len(before.Events) > 0 {
		t.Fatalf("the bridge received %d messages while delivery was held: %+v", len(before.Events), before.Events)
	}
	gw.stopHeirloom(syscall.SIGKILL)
	if err := gw.start(e.binary); err != nil {
		t.Fatal(err)
	}
	got := b.waitEvent(t, map[string]any{"room_id": room.RoomID, "type": "m.room.message", "body": body})
	if got.Event.EventID != eventID {
		t.Fatalf("the bridge received %s, want %s", got.Event.EventID, eventID)
	}
	time.Sleep(3 * time.Second)
	var all struct {
		Events []bridgeEvent `json:"events"`
	}
	b.call(t, "events", map[string]any{"room_id": room.RoomID, "type": "m.room.message", "body": body}, &all)
	if len(all.Events) != 1 {
		t.Fatalf("the bridge received the message %d times, want once", len(all.Events))
	}
}
