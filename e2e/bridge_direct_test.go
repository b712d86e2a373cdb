package e2e

// The "direct path" baselines: real appservice bridges against Synapse directly (each bridge's
// own registration loaded by Synapse, unencrypted rooms), with the real clients on both sides.
// Gateway-mode tests repeat them with heirloom between the bridge and Synapse, and the latency
// benchmark compares the two paths.

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// jsPlainRoom creates an unencrypted room owned by u (the direct path has no encryption).
func jsPlainRoom(t testing.TB, u jsUser, invite ...string) string {
	t.Helper()
	var room struct {
		RoomID string `json:"room_id"`
	}
	params := map[string]any{"user": u.UserID, "history_visibility": "shared", "encrypted": false}
	if len(invite) > 0 {
		params["invite"] = invite
	}
	e.peer(t, "createRoom", params, &room)
	return room.RoomID
}

// jsSendID sends a text message as u and returns its event ID.
func jsSendID(t testing.TB, u jsUser, roomID, text string) string {
	t.Helper()
	var sent struct {
		EventID string `json:"event_id"`
	}
	e.peer(t, "send", map[string]any{"user": u.UserID, "room_id": roomID, "body": text}, &sent)
	return sent.EventID
}

type jsSeen struct {
	EventID string `json:"event_id"`
	Sender  string `json:"sender"`
	Body    string `json:"body"`
	Msgtype string `json:"msgtype"`
	URL     string `json:"url"`
}

// jsWaitMessage waits until u sees a message in roomID matching filter (sender, body,
// body_contains, msgtype, after_event_id).
func jsWaitMessage(t testing.TB, u jsUser, roomID string, filter map[string]any) jsSeen {
	t.Helper()
	params := map[string]any{"user": u.UserID, "room_id": roomID, "timeout_ms": 30000}
	for k, v := range filter {
		params[k] = v
	}
	var m jsSeen
	e.peer(t, "waitForMessage", params, &m)
	return m
}

// jsAcceptInvite waits for an invite to u (to roomID, or to any room if it is "") and joins.
func jsAcceptInvite(t testing.TB, u jsUser, roomID string) (room, inviter string) {
	t.Helper()
	var inv struct {
		RoomID  string `json:"room_id"`
		Inviter string `json:"inviter"`
	}
	params := map[string]any{"user": u.UserID, "timeout_ms": 30000}
	if roomID != "" {
		params["room_id"] = roomID
	}
	e.peer(t, "waitForInvite", params, &inv)
	e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": inv.RoomID}, nil)
	return inv.RoomID, inv.Inviter
}

// hbCommand sends a command to heisenbridge in one of its rooms and waits for the bot's notice
// that contains want.
func hbCommand(t testing.TB, u jsUser, bot, roomID, command, want string) {
	t.Helper()
	id := jsSendID(t, u, roomID, command)
	jsWaitMessage(t, u, roomID, map[string]any{"sender": bot, "body_contains": want, "after_event_id": id})
}

// TestHeisenbridgeDirect: a js-sdk user sets heisenbridge up through its control room (adds an
// IRC network, opens it, connects, joins a channel); a line from a plain IRC client reaches
// the user's Matrix room from the IRC user's ghost, and the user's Matrix message reaches the
// IRC client as plaintext.
func TestHeisenbridgeDirect(t *testing.T) {
	ircd := startNgircd(t)
	u := newJSUser(t, false)
	hb := startHeisenbridge(t, heisenbridgeOpts{Owner: u.UserID})

	suffix := strconv.FormatInt(uniq.Add(1), 10) + strconv.FormatInt(time.Now().UnixNano()%100000, 10)
	network, channel := "net"+suffix, "#heirloom"+suffix
	ircNick, mxNick := "ircuser"+suffix, "mxuser"+suffix

	// The IRC side is there first, as a channel with someone in it.
	irc := dialIRC(t, ircd.Addr(), ircNick)
	irc.Join(channel)

	// heisenbridge opens a control room with its owner at start.
	control, inviter := jsAcceptInvite(t, u, "")
	if inviter != hb.BotID {
		t.Fatalf("the first invite came from %s, want heisenbridge's bot %s", inviter, hb.BotID)
	}
	hbCommand(t, u, hb.BotID, control, "ADDNETWORK "+network, "Network added.")
	hbCommand(t, u, hb.BotID, control, fmt.Sprintf("ADDSERVER %s %s %d", network, ircd.Host, ircd.Port), "Server added.")
	hbCommand(t, u, hb.BotID, control, "OPEN "+network, "You have been invited to "+network)
	networkRoom, _ := jsAcceptInvite(t, u, "")
	hbCommand(t, u, hb.BotID, networkRoom, "NICK "+mxNick, "Nickname set to "+mxNick)
	hbCommand(t, u, hb.BotID, networkRoom, "CONNECT", "Welcome to the Internet Relay Network")
	jsSendID(t, u, networkRoom, "JOIN "+channel)
	irc.Expect(30*time.Second, mxNick+" joining "+channel, func(m ircMessage) bool {
		return m.Command == "JOIN" && m.Nick() == mxNick && len(m.Params) > 0 && m.Params[0] == channel
	})
	channelRoom, inviter := jsAcceptInvite(t, u, "")
	if inviter != hb.BotID {
		t.Fatalf("the channel room invite came from %s, want %s", inviter, hb.BotID)
	}

	// IRC -> Matrix: from the IRC user's ghost.
	ghost := fmt.Sprintf("@irc_%s_%s:%s", network, ircNick, domain)
	fromIRC := "hello from IRC " + suffix
	irc.Privmsg(channel, fromIRC)
	got := jsWaitMessage(t, u, channelRoom, map[string]any{"body": fromIRC})
	if got.Sender != ghost {
		t.Fatalf("the IRC line reached Matrix from %s, want the ghost %s", got.Sender, ghost)
	}

	// Matrix -> IRC: plaintext, from the user's IRC connection.
	fromMatrix := "hello from Matrix " + suffix
	jsSendID(t, u, channelRoom, fromMatrix)
	irc.ExpectPrivmsg(30*time.Second, mxNick, channel, fromMatrix)
}

// testPNG returns a small PNG image and its size.
func testPNG(t testing.TB, w, h int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{R: uint8(x * 255 / w), G: uint8(y * 255 / h), B: 0x80, A: 0xff})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestJSBridgeDirect: the ghosts of a bridge on matrix-appservice-bridge register, create a
// room, invite a js-sdk user, get invited by that user (seen by the bridge's onEvent) and
// join, send text and an uploaded image, and read /messages; the js-sdk user sees the text
// from the right ghost and the image, and downloads the very bytes that were uploaded.
func TestJSBridgeDirect(t *testing.T) {
	b := sharedJSBridge(t)
	u := newJSUser(t, false)
	scene := newGhostScene(t, b, u, "jsb_", "bridged room")
	room, alice, bob := scene.room, scene.alice, scene.bob
	text := "hello from a ghost " + name("")
	sent, img, pngData := scene.speak(t, text)

	// What the js-sdk user sees.
	seen := jsWaitMessage(t, u, room, map[string]any{"body": text})
	if seen.Sender != alice || seen.EventID != sent {
		t.Fatalf("the text arrived as %+v, want event %s from %s", seen, sent, alice)
	}
	seenImg := jsWaitMessage(t, u, room, map[string]any{"msgtype": "m.image", "sender": bob})
	if seenImg.EventID != img.EventID || seenImg.URL != img.ContentURI || seenImg.Body != "gradient.png" {
		t.Fatalf("the image arrived as %+v, want event %s with url %s", seenImg, img.EventID, img.ContentURI)
	}
	var dl struct {
		Size   int    `json:"size"`
		SHA256 string `json:"sha256"`
	}
	e.peer(t, "downloadMedia", map[string]any{"user": u.UserID, "mxc": seenImg.URL}, &dl)
	sum := sha256.Sum256(pngData)
	if dl.Size != len(pngData) || dl.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("the js-sdk user downloaded %d bytes (sha256 %s), want the %d uploaded (sha256 %x)", dl.Size, dl.SHA256, len(pngData), sum)
	}

	// The js-sdk user answers; the bridge's handler gets it.
	reply := "hello ghosts " + name("")
	replyID := jsSendID(t, u, room, reply)
	got := b.waitEvent(t, map[string]any{"room_id": room, "type": "m.room.message", "body": reply})
	if got.Event.EventID != replyID || got.Event.Sender != u.UserID {
		t.Fatalf("the bridge received %s from %s, want %s from %s", got.Event.EventID, got.Event.Sender, replyID, u.UserID)
	}

	// A ghost reads the room's history through /messages, newest first.
	var history struct {
		Chunk []struct {
			EventID string `json:"event_id"`
			Sender  string `json:"sender"`
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
	for _, ev := range history.Chunk {
		if ev.Type == "m.room.message" {
			order = append(order, ev.EventID)
		}
		if ev.EventID == img.EventID && (ev.Content.URL != img.ContentURI || ev.Content.Msgtype != "m.image") {
			t.Fatalf("/messages has the image as %+v", ev)
		}
	}
	want := []string{replyID, img.EventID, sent}
	if !slices.Equal(order, want) {
		t.Fatalf("/messages for %s lists messages %v, want %v (newest first)", bob, order, want)
	}
	// The ghost can download the image too.
	var ghostDL struct {
		SHA256 string `json:"sha256"`
	}
	b.call(t, "download", map[string]any{"user": bob, "mxc": img.ContentURI}, &ghostDL)
	if ghostDL.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("the ghost downloaded sha256 %s, want %x", ghostDL.SHA256, sum)
	}
}

// ghostScene is the test bridge's standard scene: two ghosts (alice, bob) with displaynames, a
// room alice created and invited the js-sdk user to (who joined), and bob invited by the js-sdk
// user (the bridge saw it in a transaction) and joined.
type ghostScene struct {
	bridge           *jsBridge
	room, alice, bob string
}

func newGhostScene(t *testing.T, b *jsBridge, u jsUser, prefix, roomName string) ghostScene {
	t.Helper()
	sc := ghostScene{bridge: b, alice: "@" + name(prefix+"alice") + ":" + domain, bob: "@" + name(prefix+"bob") + ":" + domain}
	b.call(t, "register", map[string]any{"user": sc.alice, "displayname": "Alice (bridged)"}, nil)
	b.call(t, "register", map[string]any{"user": sc.bob, "displayname": "Bob (bridged)"}, nil)
	var room struct {
		RoomID string `json:"room_id"`
	}
	b.call(t, "createRoom", map[string]any{"user": sc.alice, "name": roomName}, &room)
	sc.room = room.RoomID
	b.call(t, "invite", map[string]any{"user": sc.alice, "room_id": sc.room, "target": u.UserID}, nil)
	if _, inviter := jsAcceptInvite(t, u, sc.room); inviter != sc.alice {
		t.Fatalf("the invite came from %s, want the ghost %s", inviter, sc.alice)
	}
	// The js-sdk user invites the second ghost; the bridge learns of it from a transaction.
	e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": sc.room, "target": sc.bob, "share_history": false}, nil)
	inv := b.waitEvent(t, map[string]any{"room_id": sc.room, "type": "m.room.member", "state_key": sc.bob, "membership": "invite"})
	if inv.Event.Sender != u.UserID {
		t.Fatalf("the bridge saw %s invite %s, want %s", inv.Event.Sender, sc.bob, u.UserID)
	}
	b.call(t, "join", map[string]any{"user": sc.bob, "room_id": sc.room}, nil)
	e.peer(t, "waitForMembership", map[string]any{"user": u.UserID, "room_id": sc.room, "target": sc.bob, "membership": "join"}, nil)
	return sc
}

// ghostImage is the image a ghost sent: its event and the upload it references.
type ghostImage struct {
	EventID    string `json:"event_id"`
	ContentURI string `json:"content_uri"`
}

// speak has alice send text and bob an uploaded PNG; it returns alice's event, bob's image and
// the PNG's bytes.
func (sc ghostScene) speak(t *testing.T, text string) (sent string, img ghostImage, pngData []byte) {
	t.Helper()
	var out struct {
		EventID string `json:"event_id"`
	}
	sc.bridge.call(t, "sendText", map[string]any{"user": sc.alice, "room_id": sc.room, "body": text}, &out)
	pngData = testPNG(t, 32, 24)
	sc.bridge.call(t, "sendImage", map[string]any{"user": sc.bob, "room_id": sc.room, "data": base64.StdEncoding.EncodeToString(pngData),
		"mimetype": "image/png", "filename": "gradient.png", "w": 32, "h": 24}, &img)
	return out.EventID, img, pngData
}

// latencyMessages is HEIRLOOM_BRIDGE_LATENCY_MESSAGES (default 20).
func latencyMessages() int {
	if n, err := strconv.Atoi(os.Getenv("HEIRLOOM_BRIDGE_LATENCY_MESSAGES")); err == nil && n > 0 {
		return n
	}
	return 20
}

// percentile returns the p-th percentile (nearest rank) of sorted values.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

// TestBridgeLatencyDirect measures the direct path: a js-sdk user sends messages one after the
// other into a room with a ghost of the test bridge, and each must reach the bridge's onEvent
// handler. It logs the latency from the send call to the handler, and from the homeserver's
// timestamp to the handler (p50/p99).
func TestBridgeLatencyDirect(t *testing.T) {
	b := sharedJSBridge(t)
	u := newJSUser(t, false)
	ghost := "@" + name("jsb_lat") + ":" + domain
	b.call(t, "register", map[string]any{"user": ghost}, nil)
	roomID := jsPlainRoom(t, u, ghost)
	b.waitEvent(t, map[string]any{"room_id": roomID, "type": "m.room.member", "state_key": ghost, "membership": "invite"})
	b.call(t, "join", map[string]any{"user": ghost, "room_id": roomID}, nil)
	e.peer(t, "waitForMembership", map[string]any{"user": u.UserID, "room_id": roomID, "target": ghost, "membership": "join"}, nil)

	n := latencyMessages()
	var sendToHandler, serverToHandler []float64
	var last struct {
		LastSeq int64 `json:"last_seq"`
	}
	b.call(t, "events", map[string]any{"room_id": roomID}, &last)
	after := last.LastSeq
	for i := range n {
		body := fmt.Sprintf("latency %d %s", i, name(""))
		start := float64(time.Now().UnixMicro()) / 1000
		id := jsSendID(t, u, roomID, body)
		ev := b.waitEvent(t, map[string]any{"room_id": roomID, "type": "m.room.message", "body": body, "after": after})
		if ev.Event.EventID != id {
			t.Fatalf("message %d reached the bridge as %s, want %s", i, ev.Event.EventID, id)
		}
		after = ev.Seq
		sendToHandler = append(sendToHandler, ev.ReceivedTS-start)
		serverToHandler = append(serverToHandler, ev.ReceivedTS-float64(ev.Event.OriginServerTS))
	}
	slices.Sort(sendToHandler)
	slices.Sort(serverToHandler)
	t.Logf("direct path, %d messages js-sdk -> Synapse -> matrix-appservice-bridge onEvent: send call to handler p50 %.1f ms p99 %.1f ms (max %.1f); origin_server_ts to handler p50 %.1f ms p99 %.1f ms",
		n, percentile(sendToHandler, 50), percentile(sendToHandler, 99), sendToHandler[len(sendToHandler)-1],
		percentile(serverToHandler, 50), percentile(serverToHandler, 99))
}

// TestJSBridgeThroughProxy: the test bridge makes every client-server call to the homeserver
// URL it is given (where heirloom's gateway will sit), here a recording pass-through proxy in
// front of Synapse: a ghost registers, creates a room, invites a js-sdk user, sends text and
// an image and reads /messages, the js-sdk user sees it all, and the proxy saw each call,
// authenticated with the Authorization header and masquerading with ?user_id=.
func TestJSBridgeThroughProxy(t *testing.T) {
	proxy := startRecordingProxy(t, e.hsURL)
	b := startJSBridge(t, jsBridgeOpts{Homeserver: proxy.URL})
	u := newJSUser(t, false)
	ghost := "@" + name("jsc_carol") + ":" + domain
	b.call(t, "register", map[string]any{"user": ghost}, nil)
	var room struct {
		RoomID string `json:"room_id"`
	}
	b.call(t, "createRoom", map[string]any{"user": ghost, "name": "proxied"}, &room)
	b.call(t, "invite", map[string]any{"user": ghost, "room_id": room.RoomID, "target": u.UserID}, nil)
	jsAcceptInvite(t, u, room.RoomID)
	text := "through the proxy " + name("")
	b.call(t, "sendText", map[string]any{"user": ghost, "room_id": room.RoomID, "body": text}, nil)
	pngData := testPNG(t, 8, 8)
	var img struct {
		ContentURI string `json:"content_uri"`
	}
	b.call(t, "sendImage", map[string]any{"user": ghost, "room_id": room.RoomID, "data": base64.StdEncoding.EncodeToString(pngData)}, &img)
	b.call(t, "messages", map[string]any{"user": ghost, "room_id": room.RoomID, "limit": 10}, nil)
	b.call(t, "download", map[string]any{"user": ghost, "mxc": img.ContentURI}, nil)
	if m := jsWaitMessage(t, u, room.RoomID, map[string]any{"body": text}); m.Sender != ghost {
		t.Fatalf("the text arrived from %s, want %s", m.Sender, ghost)
	}
	jsWaitMessage(t, u, room.RoomID, map[string]any{"msgtype": "m.image", "sender": ghost})

	calls := proxy.Calls()
	var lines, requests []string
	for _, c := range calls {
		lines = append(lines, c.String())
		requests = append(requests, c.Method+" "+c.DecodedPath)
		if !c.AuthHeader || c.Query.Has("access_token") || c.Query.Get("user_id") != ghost {
			t.Errorf("%s: want the as_token in the Authorization header and user_id=%s", c, ghost)
		}
	}
	roomPath := regexp.QuoteMeta(room.RoomID)
	for _, want := range []string{
		`^POST /_matrix/client/v3/register$`,
		`^POST /_matrix/client/v3/createRoom$`,
		`^POST /_matrix/client/v3/rooms/` + roomPath + `/invite$`,
		`^PUT /_matrix/client/v3/rooms/` + roomPath + `/send/m\.room\.message/[^/]+$`,
		`^POST /_matrix/media/v3/upload$`,
		`^GET /_matrix/client/v3/rooms/` + roomPath + `/messages$`,
		`^GET /_matrix/client/v1/media/download/`,
	} {
		re := regexp.MustCompile(want)
		if !slices.ContainsFunc(requests, re.MatchString) {
			t.Errorf("no call matching %s went through the proxy", want)
		}
	}
	if t.Failed() {
		t.Logf("calls through the proxy:\n%s", strings.Join(lines, "\n"))
	}
}
