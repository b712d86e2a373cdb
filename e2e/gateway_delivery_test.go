package e2e

// Gateway mode end to end, the parts that keep a room encrypted and the bridge fed: a room that
// has had m.room.encryption never gets a plaintext send from the bridge (a createRoom racing its
// own state, a room admin's downgrade), and one event a bridge cannot take never stops the rest
// (decrypted content past what a bridge parses goes encrypted; an event the bridge refuses every
// time is set aside, listed, and delivered again on request; a bridge that is down is waited
// for, in order).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// attempt is one delivery of a transaction to a bridge, as the bridge answered it.
type attempt struct {
	TxnID  string
	Status int
	Events []struct {
		EventID string `json:"event_id"`
		RoomID  string `json:"room_id"`
		Type    string `json:"type"`
	} `json:"events"`
}

// attemptRecorder sits between heirloom and a bridge (gateway.bridge_url) and keeps every
// transaction delivery with the bridge's answer (502 while the bridge is down).
type attemptRecorder struct {
	URL string
	mu  sync.Mutex
	got []attempt
}

func startAttemptRecorder(t testing.TB, bridgeURL string) *attemptRecorder {
	t.Helper()
	to, err := url.Parse(bridgeURL)
	if err != nil {
		t.Fatal(err)
	}
	r := &attemptRecorder{}
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(to) }}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		req.Body = io.NopCloser(bytes.NewReader(body))
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		rp.ServeHTTP(rec, req)
		txnID, ok := strings.CutPrefix(req.URL.Path, "/_matrix/app/v1/transactions/")
		if !ok {
			return
		}
		a := attempt{TxnID: txnID, Status: rec.status}
		_ = json.Unmarshal(body, &a)
		r.mu.Lock()
		r.got = append(r.got, a)
		r.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	r.URL = srv.URL
	return r
}

// tries lists the bridge's answers to the deliveries that held the event.
func (r *attemptRecorder) tries(eventID string) []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []int
	for _, a := range r.got {
		for _, ev := range a.Events {
			if ev.EventID == eventID {
				out = append(out, a.Status)
			}
		}
	}
	return out
}

// accepted lists the events of a room the bridge took (answered 2xx), in order, with their type.
func (r *attemptRecorder) accepted(roomID string) (ids, types []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range r.got {
		if a.Status < 200 || a.Status > 299 {
			continue
		}
		for _, ev := range a.Events {
			if ev.RoomID == roomID {
				ids, types = append(ids, ev.EventID), append(types, ev.Type)
			}
		}
	}
	return ids, types
}

// requireOnlyEncrypted checks that every message of sender that u's client shows in the room came
// encrypted and decrypted, and returns their bodies.
func requireOnlyEncrypted(t *testing.T, u jsUser, roomID, sender string, minCount int) []string {
	t.Helper()
	var res struct {
		Messages []jsMessage `json:"messages"`
	}
	e.peer(t, "messages", map[string]any{"user": u.UserID, "room_id": roomID, "min_count": minCount, "timeout_ms": 60000}, &res)
	var bodies []string
	for _, m := range res.Messages {
		if m.Sender != sender {
			continue
		}
		if !m.Encrypted {
			t.Fatalf("%s's client shows %s's message %q in %s sent in the clear", u.UserID, sender, m.Body, roomID)
		}
		if !m.Decrypted {
			t.Fatalf("%s cannot decrypt %s's message %s in %s: %s", u.UserID, sender, m.EventID, roomID, m.Error)
		}
		bodies = append(bodies, m.Body)
	}
	return bodies
}

// TestGatewayEncryptedRoomsStayEncrypted: a bridge on matrix-appservice-bridge behind heirloom,
// with gateway.encrypt_new_rooms. A ghost creates a room for a js-sdk user and speaks at once,
// while heirloom answers the transaction with the room's m.room.create 3 s late (slow_create_ack:
// Synapse holds the rest of the room's state back meanwhile; the rooms of the rest of the test are
// the user's, whose m.room.create heirloom never gets): the user's client shows only encrypted
// messages. Then, in a room of the user's, the user (its admin) changes m.room.encryption
// to an unknown algorithm, empties it, makes it unreadable: once heirloom has each change, the
// ghost's next send still arrives encrypted. In an unencrypted room the user then turns on an
// algorithm heirloom cannot use: the ghost's send is refused, nothing goes in the clear.
func TestGatewayEncryptedRoomsStayEncrypted(t *testing.T) {
	t.Parallel()
	_, gwURL := startGateway(t, "gw-js", func(g *gatewayConfig) { g.encryptNewRooms = true }, "HEIRLOOM_FAULT=slow_create_ack")
	b := startJSBridge(t, jsBridgeOpts{Homeserver: gwURL, Registration: &e.jsBridgeGWReg})
	u := newJSUser(t, true)
	ghost := "@" + name("jsg_enc") + ":" + domain
	b.call(t, "register", map[string]any{"user": ghost}, nil)

	// The createRoom race.
	var created struct {
		RoomID string `json:"room_id"`
	}
	b.call(t, "createRoom", map[string]any{"user": ghost, "name": "raced room", "invite": []string{u.UserID}}, &created)
	first := "said the moment the room existed " + name("")
	b.call(t, "sendText", map[string]any{"user": ghost, "room_id": created.RoomID, "body": first}, nil)
	jsAcceptInvite(t, u, created.RoomID)
	if got := requireOnlyEncrypted(t, u, created.RoomID, ghost, 1); !slices.Contains(got, first) {
		t.Fatalf("%s reads %v from the ghost, want %q", u.UserID, got, first)
	}

	// seen waits until heirloom has taken every transaction up to now: the bridge receives a
	// message the user sends now (transactions arrive in order).
	var markers struct {
		RoomID string `json:"room_id"`
	}
	e.peer(t, "createRoom", map[string]any{"user": u.UserID, "history_visibility": "shared", "invite": []string{ghost}}, &markers)
	b.call(t, "join", map[string]any{"user": ghost, "room_id": markers.RoomID}, nil)
	seen := func() {
		t.Helper()
		marker := "marker " + name("")
		jsSendID(t, u, markers.RoomID, marker)
		b.waitEvent(t, map[string]any{"room_id": markers.RoomID, "type": "m.room.message", "body": marker, "timeout_ms": 60000})
	}

	// Downgrades by the room's admin.
	var room struct {
		RoomID string `json:"room_id"`
	}
	e.peer(t, "createRoom", map[string]any{"user": u.UserID, "history_visibility": "shared", "invite": []string{ghost}}, &room)
	b.call(t, "join", map[string]any{"user": ghost, "room_id": room.RoomID}, nil)
	sent := []string{"before any downgrade " + name("")}
	b.call(t, "sendText", map[string]any{"user": ghost, "room_id": room.RoomID, "body": sent[0]}, nil)
	refused := 0
	for i, content := range []map[string]any{{"algorithm": "m.unknown.v1"}, {}, {"algorithm": "m.megolm.v1.aes-sha2", "rotation_period_ms": "604800000"}} {
		e.peer(t, "setState", map[string]any{"user": u.UserID, "room_id": room.RoomID, "type": "m.room.encryption", "content": content}, nil)
		seen()
		body := fmt.Sprintf("after downgrade %d %s", i, name(""))
		if err := b.try("sendText", map[string]any{"user": ghost, "room_id": room.RoomID, "body": body}, nil); err != nil {
			t.Logf("heirloom refused the ghost's send after m.room.encryption %v: %v", content, err)
			refused++
			continue
		}
		sent = append(sent, body)
	}
	got := requireOnlyEncrypted(t, u, room.RoomID, ghost, len(sent))
	for _, body := range sent {
		if !slices.Contains(got, body) {
			t.Fatalf("%s reads %v from the ghost, want %q among them", u.UserID, got, body)
		}
	}
	if refused > 0 {
		t.Fatalf("heirloom refused %d of the ghost's sends: a room it encrypts with megolm stays so, whatever comes later", refused)
	}

	// An unencrypted room that gets an algorithm heirloom cannot use.
	var plain struct {
		RoomID string `json:"room_id"`
	}
	e.peer(t, "createRoom", map[string]any{"user": u.UserID, "history_visibility": "shared", "encrypted": false, "invite": []string{ghost}}, &plain)
	b.call(t, "join", map[string]any{"user": ghost, "room_id": plain.RoomID}, nil)
	clear := "in the clear, in an unencrypted room " + name("")
	b.call(t, "sendText", map[string]any{"user": ghost, "room_id": plain.RoomID, "body": clear}, nil)
	jsWaitMessage(t, u, plain.RoomID, map[string]any{"sender": ghost, "body": clear})
	e.peer(t, "setState", map[string]any{"user": u.UserID, "room_id": plain.RoomID, "type": "m.room.encryption",
		"content": map[string]any{"algorithm": "m.unknown.v1"}}, nil)
	seen()
	secret := "must not go in the clear " + name("")
	err := b.try("sendText", map[string]any{"user": ghost, "room_id": plain.RoomID, "body": secret}, nil)
	var res struct {
		Messages []jsMessage `json:"messages"`
	}
	e.peer(t, "messages", map[string]any{"user": u.UserID, "room_id": plain.RoomID, "timeout_ms": 5000}, &res)
	for _, m := range res.Messages {
		if m.Body == secret {
			t.Fatalf("the ghost's message reached a room encrypted with an unknown algorithm in the clear: %+v", m)
		}
	}
	if err == nil || !strings.Contains(err.Error(), "502") {
		t.Fatalf("the ghost's send into a room encrypted with an unknown algorithm: %v, want heirloom's 502", err)
	}
}

// deepContent is content nested 1,000 levels: more than mautrix-python parses in a transaction.
func deepContent(body string) map[string]any {
	return map[string]any{"msgtype": "m.text", "body": body,
		"nest": json.RawMessage(strings.Repeat("[", 1000) + `"x"` + strings.Repeat("]", 1000))}
}

// hbControlRoom has the js-sdk owner open a control room with heisenbridge's bot (an encrypted DM
// it invites the bot to), with puppet p of the shared heirloom in it too, and returns it.
func hbControlRoom(t *testing.T, owner jsUser, bot string, p puppetIdentity) string {
	t.Helper()
	var room struct {
		RoomID string `json:"room_id"`
	}
	e.peer(t, "createRoom", map[string]any{"user": owner.UserID, "history_visibility": "shared", "is_direct": true,
		"invite": []string{bot, p.UserID}}, &room)
	for _, member := range []string{bot, p.UserID} {
		e.peer(t, "waitForMembership", map[string]any{"user": owner.UserID, "room_id": room.RoomID, "target": member, "membership": "join",
			"timeout_ms": 60000}, nil)
	}
	return room.RoomID
}

// TestGatewayDeepContentGoesEncrypted: a room member (a puppet of heirloom's API) encrypts a
// message whose content nests 1,000 levels. heisenbridge, behind heirloom, gets it as it
// arrived, encrypted, and goes on: its owner's next command is answered.
func TestGatewayDeepContentGoesEncrypted(t *testing.T) {
	owner := newJSUser(t, true)
	rec := startAttemptRecorder(t, e.heisenbridgeGWReg.URL)
	_, gwURL := startGateway(t, "gw-irc", func(g *gatewayConfig) { g.encryptNewRooms = true; g.bridgeURL = rec.URL })
	hb := startHeisenbridge(t, heisenbridgeOpts{Homeserver: gwURL, Registration: &e.heisenbridgeGWReg, Owner: owner.UserID})
	jsAcceptInvite(t, owner, "") // the control room heisenbridge opens at start
	p := newPuppet(t)
	room := hbControlRoom(t, owner, hb.BotID, p)
	var deep struct {
		EventID string `json:"event_id"`
	}
	apiOK(t, "POST", "/puppets/"+p.UserID+"/rooms/"+room+"/messages", deepContent("nested too deep for a bridge"), &deep)
	hbCommand(t, owner, hb.BotID, room, "ADDNETWORK deep"+name(""), "Network added.")
	ids, types := rec.accepted(room)
	i := slices.Index(ids, deep.EventID)
	if i < 0 || types[i] != "m.room.encrypted" {
		t.Fatalf("heisenbridge took %v (%v) in the room: want %s as it arrived, m.room.encrypted", ids, types, deep.EventID)
	}
	if tries := rec.tries(deep.EventID); !slices.Equal(tries, []int{http.StatusOK}) {
		t.Fatalf("heisenbridge answered %v to the deliveries of the deep event, want one 200", tries)
	}
}

// gatewayStatus is the gateway part of GET /_heirloom/v1/status.
type gatewayStatus struct {
	OutboxEvents    int  `json:"outbox_events"`
	DeliveryFailing bool `json:"delivery_failing"`
	DeadLetterCount int  `json:"dead_letter_count"`
	DeadLetters     []struct {
		EventID   string `json:"event_id"`
		RoomID    string `json:"room_id"`
		Refusals  int    `json:"refusals"`
		LastError string `json:"last_error"`
	} `json:"dead_letters"`
}

func (h *instance) gatewayStatus(t testing.TB) gatewayStatus {
	t.Helper()
	var st struct {
		Gateway *gatewayStatus `json:"gateway"`
	}
	if code, err := h.api("GET", "/status", nil, &st); err != nil || code != 200 || st.Gateway == nil {
		t.Fatalf("GET /status: %d %v %+v", code, err, st)
	}
	return *st.Gateway
}

// TestGatewayDeadLetterWithHeisenbridge: heisenbridge, behind heirloom, really cannot take one
// event decrypted (content nested 1,000 levels, handed to it decrypted with the bound off:
// gateway_unbounded_content): it answers 500 every time. heirloom splits the transaction, tries the
// event alone a few times, and then hands it over as it arrived, encrypted, which heisenbridge takes;
// delivery goes on: the owner's command in another room is answered within a minute, the one behind
// the event in its own room within a few. With that fallback off (gateway_no_fallback), a second
// such event is set aside: listed in GET /status and by heirloom's bot, counted in /metrics, and
// delivered again by the bot's resend and by the API's. Then heisenbridge stops for a while: what
// is sent meanwhile reaches it once it is back, in order, and nothing more is set aside.
func TestGatewayDeadLetterWithHeisenbridge(t *testing.T) {
	t.Parallel()
	owner := newJSUser(t, true)
	rec := startAttemptRecorder(t, e.heisenbridgeGWReg.URL)
	faults := filepath.Join(t.TempDir(), "faults")
	if err := os.WriteFile(faults, []byte("gateway_unbounded_content"), 0o600); err != nil {
		t.Fatal(err)
	}
	gw, gwURL := startGateway(t, "gw-irc", func(g *gatewayConfig) { g.encryptNewRooms = true; g.bridgeURL = rec.URL },
		"HEIRLOOM_FAULT_FILE="+faults)
	hbOpts := heisenbridgeOpts{Homeserver: gwURL, Registration: &e.heisenbridgeGWReg, Owner: owner.UserID}
	hb := startHeisenbridge(t, hbOpts)
	other, _ := jsAcceptInvite(t, owner, "") // the control room heisenbridge opens at start
	p := newPuppet(t)
	room := hbControlRoom(t, owner, hb.BotID, p)
	hbCommand(t, owner, hb.BotID, room, "ADDNETWORK before"+name(""), "Network added.")

	var poison struct {
		EventID string `json:"event_id"`
	}
	apiOK(t, "POST", "/puppets/"+p.UserID+"/rooms/"+room+"/messages", deepContent("heisenbridge cannot parse this"), &poison)
	sentAt := time.Now()
	behind := jsSendID(t, owner, room, "ADDNETWORK behind"+name(""))
	hbCommand(t, owner, hb.BotID, other, "ADDNETWORK elsewhere"+name(""), "Network added.")
	if took := time.Since(sentAt); took > time.Minute {
		t.Fatalf("the other room's command was answered %s after the refused event was sent, want within a minute", took)
	} else {
		t.Logf("the other room's command was answered %s after the refused event was sent", took.Round(time.Millisecond))
	}
	jsWaitMessage(t, owner, room, map[string]any{"sender": hb.BotID, "body_contains": "Network added.", "after_event_id": behind,
		"timeout_ms": 180000})
	if took := time.Since(sentAt); took > 3*time.Minute {
		t.Fatalf("the command behind the refused event was answered %s after it, want within a few minutes", took)
	} else {
		t.Logf("the command behind the refused event was answered %s after it", took.Round(time.Millisecond))
	}
	tries := rec.tries(poison.EventID)
	if len(tries) < 2 || tries[len(tries)-1] != http.StatusOK ||
		slices.ContainsFunc(tries[:len(tries)-1], func(s int) bool { return s != http.StatusInternalServerError }) {
		t.Fatalf("heisenbridge answered %v to the deliveries of the event, want 500s, then 200 for it as it arrived", tries)
	}
	if st := gw.gatewayStatus(t); st.DeadLetterCount != 0 {
		t.Fatalf("GET /status lists %+v set aside, want nothing: heisenbridge took the event as it arrived", st)
	}
	if _, types := rec.accepted(room); !slices.Contains(types, "m.room.encrypted") {
		t.Fatalf("heisenbridge took %v in the room, want the refused event as it arrived, m.room.encrypted", types)
	}

	// Without the fallback, a second such event is set aside.
	if err := os.WriteFile(faults, []byte("gateway_unbounded_content,gateway_no_fallback"), 0o600); err != nil {
		t.Fatal(err)
	}
	apiOK(t, "POST", "/puppets/"+p.UserID+"/rooms/"+room+"/messages", deepContent("heisenbridge cannot parse this either"), &poison)
	eventually(t, 3*time.Minute, "heirloom to set the second event aside", func() (bool, string) {
		st := gw.gatewayStatus(t)
		return st.DeadLetterCount == 1, fmt.Sprintf("%+v", st)
	})
	st := gw.gatewayStatus(t)
	if st.DeadLetterCount != 1 || len(st.DeadLetters) != 1 || st.DeadLetters[0].EventID != poison.EventID || st.DeadLetters[0].RoomID != room ||
		!strings.Contains(st.DeadLetters[0].LastError, "500") {
		t.Fatalf("GET /status lists %+v, want %s set aside, refused with 500", st, poison.EventID)
	}
	if v, ok := metricValue(scrape(t, gwURL+"/metrics"), "heirloom_gateway_dead_letters_total "); !ok || v != 1 {
		t.Fatalf("heirloom_gateway_dead_letters_total is %g (%t), want 1", v, ok)
	}

	// The operator sees it through heirloom's bot, and has the bot deliver it again.
	bot := fmt.Sprintf("@%s:%s", e.profiles["gw-irc"].bot, domain)
	var admin jsUser
	e.peer(t, "register", map[string]any{"username": name(adminPrefix), "cross_signing": true}, &admin)
	var dm struct {
		RoomID string `json:"room_id"`
	}
	e.peer(t, "createRoom", map[string]any{"user": admin.UserID, "history_visibility": "shared", "invite": []string{bot}}, &dm)
	e.peer(t, "waitForMessage", map[string]any{"user": admin.UserID, "room_id": dm.RoomID, "sender": bot, "body": botGreeting,
		"timeout_ms": 60000}, nil)
	ask(t, admin, dm.RoomID, bot, "status", "gateway events set aside (the bridge refused them every time): 1", poison.EventID)
	before := len(rec.tries(poison.EventID))
	ask(t, admin, dm.RoomID, bot, "resend "+poison.EventID, "Delivering 1 event(s) to the bridge again")
	eventually(t, 30*time.Second, "heirloom to deliver the event again", func() (bool, string) {
		return len(rec.tries(poison.EventID)) > before, fmt.Sprint(rec.tries(poison.EventID))
	})
	eventually(t, 3*time.Minute, "heirloom to set the event aside again", func() (bool, string) {
		st := gw.gatewayStatus(t)
		return st.DeadLetterCount == 1, fmt.Sprintf("%+v", st)
	})
	before = len(rec.tries(poison.EventID))
	var resent struct {
		Requeued int `json:"requeued"`
	}
	if code, err := gw.api("POST", "/gateway/dead_letters/resend", map[string]any{"event_id": poison.EventID}, &resent); err != nil || code != 200 || resent.Requeued != 1 {
		t.Fatalf("POST /gateway/dead_letters/resend: %d %v %+v", code, err, resent)
	}
	eventually(t, 30*time.Second, "heirloom to deliver the event again", func() (bool, string) {
		return len(rec.tries(poison.EventID)) > before, fmt.Sprint(rec.tries(poison.EventID))
	})

	// heisenbridge is down for a while: a bridge that is down refuses nothing.
	hb.proc.stop(15 * time.Second)
	var written []string
	for i := range 3 {
		written = append(written, jsSendID(t, owner, other, fmt.Sprintf("while heisenbridge is down %d %s", i, name(""))))
		time.Sleep(2 * time.Second)
	}
	startHeisenbridge(t, hbOpts)
	eventually(t, 90*time.Second, "heisenbridge to take what was written while it was down", func() (bool, string) {
		ids, _ := rec.accepted(other)
		var order []string
		for _, id := range ids {
			if slices.Contains(written, id) {
				order = append(order, id)
			}
		}
		return slices.Equal(order, written), fmt.Sprint(order)
	})
	for _, id := range written {
		for _, status := range rec.tries(id) {
			if status == http.StatusInternalServerError {
				t.Fatalf("heisenbridge refused %s: %v", id, rec.tries(id))
			}
		}
	}
	for _, dead := range gw.gatewayStatus(t).DeadLetters {
		if dead.EventID != poison.EventID {
			t.Fatalf("heirloom set aside %s while heisenbridge was down", dead.EventID)
		}
	}
}
