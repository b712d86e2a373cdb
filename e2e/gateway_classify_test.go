package e2e

// Gateway mode's classification of the bridge's requests, end to end against Synapse: the bridge's
// token acts only as the bridge's own users, however the request is dressed (form-encoded bodies
// that Twisted merges into the request's parameters), and every send form Synapse serves reaches
// an encrypted room encrypted.

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// rawRequest sends one request as a bridge would, with the given content type and body as they are.
func rawRequest(t testing.TB, method, target, token, contentType, body string) (int, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, target, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, data
}

// asHeirloom asks Synapse directly, with heirloom's own token, acting as user: what the test
// observes of Synapse's state, never through the gateway.
func asHeirloom(t testing.TB, h *instance, method, path, user string, body any, out any) int {
	t.Helper()
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	code, err := e.request(method, e.hsURL+path+sep+"user_id="+url.QueryEscape(user), "Bearer "+h.asToken, body, out)
	if err != nil {
		t.Fatalf("%s %s as %s: %v", method, path, user, err)
	}
	return code
}

// membershipOf is user's membership in roomID as Synapse has it ("" for none), read as reader.
func membershipOf(t testing.TB, h *instance, reader, roomID, user string) string {
	t.Helper()
	var content struct {
		Membership string `json:"membership"`
	}
	code := asHeirloom(t, h, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state/m.room.member/"+url.PathEscape(user), reader, nil, &content)
	if code == http.StatusNotFound {
		return ""
	} else if code != http.StatusOK {
		t.Fatalf("reading %s's membership in %s: %d", user, roomID, code)
	}
	return content.Membership
}

// devicesOf lists user's device IDs as Synapse has them.
func devicesOf(t testing.TB, h *instance, user string) []string {
	t.Helper()
	var resp struct {
		Devices []struct {
			DeviceID string `json:"device_id"`
		} `json:"devices"`
	}
	if code := asHeirloom(t, h, "GET", "/_matrix/client/v3/devices", user, nil, &resp); code != http.StatusOK {
		t.Fatalf("listing %s's devices: %d", user, code)
	}
	var out []string
	for _, d := range resp.Devices {
		out = append(out, d.DeviceID)
	}
	return out
}

// masterKeyOf is user's cross-signing master key as Synapse serves it to others.
func masterKeyOf(t testing.TB, h *instance, asker, user string) string {
	t.Helper()
	var resp struct {
		MasterKeys map[string]struct {
			Keys map[string]string `json:"keys"`
		} `json:"master_keys"`
	}
	body := map[string]any{"device_keys": map[string][]string{user: {}}}
	if code := asHeirloom(t, h, "POST", "/_matrix/client/v3/keys/query", asker, body, &resp); code != http.StatusOK {
		t.Fatalf("querying %s's keys: %d", user, code)
	}
	for _, k := range resp.MasterKeys[user].Keys {
		return k
	}
	return ""
}

// TestGatewayFormBodyCannotActAsHeirloomsUsers: with the bridge's token, a POST whose body is
// form-encoded (Twisted merges it into the parameters Synapse reads user_id from, and Synapse
// still parses it as JSON) must not act as heirloom's bot or its API-mode puppets. Each call is
// checked by what Synapse did: no OpenID token, no invite, no message, no join or leave, the same
// master key, the same devices, an account still in use.
func TestGatewayFormBodyCannotActAsHeirloomsUsers(t *testing.T) {
	gw, gwURL := startGateway(t, "gw-js", nil)
	bridgeToken := e.jsBridgeGWReg.ASToken
	bot := "@" + e.profiles["gw-js"].bot + ":" + domain
	victim := gw.newPuppet(t)
	room := gw.createRoom(t, victim, "shared")
	mallory := newJSUser(t, true)
	var public struct {
		RoomID string `json:"room_id"`
	}
	if code := asHeirloom(t, gw, "POST", "/_matrix/client/v3/createRoom", victim.UserID, map[string]any{"preset": "public_chat"}, &public); code != http.StatusOK {
		t.Fatalf("creating a public room: %d", code)
	}
	masterBefore := masterKeyOf(t, gw, victim.UserID, victim.UserID)
	if masterBefore == "" || !slices.Contains(devicesOf(t, gw, victim.UserID), victim.DeviceID) {
		t.Fatalf("the puppet %s has no master key or not its device %s", victim.UserID, victim.DeviceID)
	}
	form := func(user string, fields string) string {
		return `{` + fields + `"x":"&user_id=` + user + `&"}`
	}
	const formType = "application/x-www-form-urlencoded"
	refused := func(t *testing.T, what, method, path, contentType, body string) []byte {
		t.Helper()
		code, answer := rawRequest(t, method, gwURL+path, bridgeToken, contentType, body)
		if code < 400 {
			t.Errorf("%s: the gateway answered %d %s, want a refusal", what, code, answer)
		}
		return answer
	}

	// Control: the bridge's own bot gets an OpenID token the ordinary way.
	code, answer := rawRequest(t, "POST", gwURL+"/_matrix/client/v3/user/"+url.PathEscape(e.jsBridgeGWReg.BotID())+"/openid/request_token",
		bridgeToken, "application/json", `{}`)
	if code != http.StatusOK || !strings.Contains(string(answer), "access_token") {
		t.Fatalf("the bridge's bot asked for its own OpenID token: %d %s", code, answer)
	}

	t.Run("openid", func(t *testing.T) {
		for _, user := range []string{bot, victim.UserID} {
			answer := refused(t, "OpenID token for "+user, "POST", "/_matrix/client/v3/user/"+url.PathEscape(user)+"/openid/request_token",
				formType, form(user, ""))
			if strings.Contains(string(answer), "access_token") {
				t.Errorf("the bridge got an OpenID token for %s: %s", user, answer)
			}
		}
	})
	t.Run("invite", func(t *testing.T) {
		refused(t, "invite as the puppet", "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/invite",
			formType, form(victim.UserID, `"user_id":"`+mallory.UserID+`",`))
		if m := membershipOf(t, gw, victim.UserID, room, mallory.UserID); m != "" {
			t.Errorf("%s is %q in the puppet's room, want no membership", mallory.UserID, m)
		}
	})
	t.Run("send", func(t *testing.T) {
		forged := "forged in the puppet's name " + name("")
		refused(t, "send as the puppet", "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/send/m.room.message",
			formType, form(victim.UserID, `"msgtype":"m.text","body":"`+forged+`",`))
		refused(t, "send as the puppet (unstable, user_id in the query)", "PUT",
			"/_matrix/client/unstable/rooms/"+url.PathEscape(room)+"/send/m.room.message/f1?user_id="+url.QueryEscape(victim.UserID),
			"application/json", `{"msgtype":"m.text","body":"`+forged+`"}`)
		var msgs struct {
			Chunk []struct {
				Sender  string          `json:"sender"`
				Content json.RawMessage `json:"content"`
			} `json:"chunk"`
		}
		asHeirloom(t, gw, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/messages?dir=b&limit=100", victim.UserID, nil, &msgs)
		for _, ev := range msgs.Chunk {
			if strings.Contains(string(ev.Content), forged) {
				t.Errorf("Synapse holds the forged message from %s: %s", ev.Sender, ev.Content)
			}
		}
	})
	t.Run("join and leave", func(t *testing.T) {
		refused(t, "join as heirloom's bot", "POST", "/_matrix/client/v3/join/"+url.PathEscape(public.RoomID), formType, form(bot, ""))
		refused(t, "join as heirloom's bot (api/v1, rooms)", "POST", "/_matrix/client/api/v1/rooms/"+url.PathEscape(public.RoomID)+"/join", formType, form(bot, ""))
		if m := membershipOf(t, gw, victim.UserID, public.RoomID, bot); m != "" {
			t.Errorf("heirloom's bot is %q in the public room, want no membership", m)
		}
		refused(t, "leave as the puppet", "POST", "/_matrix/client/r0/rooms/"+url.PathEscape(room)+"/leave", formType, form(victim.UserID, ""))
		if m := membershipOf(t, gw, victim.UserID, room, victim.UserID); m != "join" {
			t.Errorf("the puppet is %q in its room, want join", m)
		}
	})
	t.Run("cross-signing keys", func(t *testing.T) {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		key := base64.RawStdEncoding.EncodeToString(pub)
		master := `"master_key":{"user_id":"` + victim.UserID + `","usage":["master"],"keys":{"ed25519:` + key + `":"` + key + `"}},`
		refused(t, "replace the puppet's master key", "POST", "/_matrix/client/v3/keys/device_signing/upload", formType, form(victim.UserID, master))
		if got := masterKeyOf(t, gw, victim.UserID, victim.UserID); got != masterBefore {
			t.Errorf("the puppet's master key is %s, was %s", got, masterBefore)
		}
	})
	t.Run("logout/all and deactivate", func(t *testing.T) {
		refused(t, "log the puppet out everywhere", "POST", "/_matrix/client/v3/logout/all", formType, form(victim.UserID, ""))
		refused(t, "deactivate the puppet", "POST", "/_matrix/client/v3/account/deactivate", formType, form(victim.UserID, ""))
		refused(t, "deactivate heirloom's bot", "POST", "/_matrix/client/unstable/account/deactivate", formType, form(bot, ""))
		if !slices.Contains(devicesOf(t, gw, victim.UserID), victim.DeviceID) {
			t.Errorf("the puppet %s lost its device %s", victim.UserID, victim.DeviceID)
		}
		// A deactivated account cannot send: the puppet still can, through heirloom's API.
		gw.send(t, victim, room, "still here "+name(""))
	})
}

// TestGatewaySendFormsEncrypted: every send form Synapse serves, made by the test bridge (on
// matrix-appservice-bridge) through heirloom into an encrypted room, reaches the js-sdk member
// encrypted: a POST without a transaction ID, the unstable and api/v1 prefixes, an escaped room ID
// on r0, a transaction ID with an escaped slash (one path segment to Synapse), an empty one.
// Redactions and state on the other prefixes are recognised and forwarded, and take effect.
func TestGatewaySendFormsEncrypted(t *testing.T) {
	gw, gwURL := startGateway(t, "gw-js", func(g *gatewayConfig) { g.encryptNewRooms = true })
	b := startJSBridge(t, jsBridgeOpts{Homeserver: gwURL, Registration: &e.jsBridgeGWReg})
	u := newJSUser(t, true)
	sc := newGhostScene(t, b, u, "jsg_f", "send forms")
	room := url.PathEscape(sc.room)
	forms := []struct{ name, method, path string }{
		{"POST without a transaction ID", "POST", "/_matrix/client/v3/rooms/" + room + "/send/m.room.message"},
		{"unstable prefix", "PUT", "/_matrix/client/unstable/rooms/" + room + "/send/m.room.message/" + name("u")},
		{"api/v1 prefix", "PUT", "/_matrix/client/api/v1/rooms/" + room + "/send/m.room.message/" + name("a")},
		{"r0 prefix", "PUT", "/_matrix/client/r0/rooms/" + room + "/send/m.room.message/" + name("r")},
		{"escaped slash in the transaction ID", "PUT", "/_matrix/client/v3/rooms/" + room + "/send/m.room.message/" + name("s") + "%2Fb"},
		{"empty transaction ID", "PUT", "/_matrix/client/v3/rooms/" + room + "/send/m.room.message/"},
	}
	type sentText struct{ form, text, eventID string }
	var sent []sentText
	for _, f := range forms {
		text := f.name + " " + name("")
		var out struct {
			EventID string `json:"event_id"`
		}
		b.call(t, "request", map[string]any{"user": sc.alice, "method": f.method, "path": f.path,
			"body": map[string]any{"msgtype": "m.text", "body": text}}, &out)
		if out.EventID == "" {
			t.Fatalf("%s: no event ID", f.name)
		}
		sent = append(sent, sentText{f.name, text, out.EventID})
	}
	for _, s := range sent {
		var m jsMessage
		e.peer(t, "waitForMessage", map[string]any{"user": u.UserID, "room_id": sc.room, "body": s.text, "timeout_ms": 60000}, &m)
		if !m.Encrypted || !m.Decrypted || m.ShieldColour != "NONE" || m.EventID != s.eventID || m.Sender != sc.alice {
			t.Errorf("%s: %s saw %+v, want event %s from %s, encrypted and decrypted without a warning", s.form, u.UserID, m, s.eventID, sc.alice)
		}
	}
	// What Synapse stores from the ghost is m.room.encrypted only: none of the texts in the clear.
	var msgs struct {
		Chunk []struct {
			Type    string          `json:"type"`
			Sender  string          `json:"sender"`
			Content json.RawMessage `json:"content"`
		} `json:"chunk"`
	}
	asHeirloom(t, gw, "GET", "/_matrix/client/v3/rooms/"+room+"/messages?dir=b&limit=100", sc.alice, nil, &msgs)
	for _, ev := range msgs.Chunk {
		if ev.Sender == sc.alice && ev.Type == "m.room.message" {
			t.Errorf("Synapse holds a plaintext message from the ghost: %s", ev.Content)
		}
	}

	// Redactions and state on the other prefixes: forwarded, and Synapse acts on them.
	var ids []string
	for _, s := range sent {
		ids = append(ids, s.eventID)
	}
	b.call(t, "request", map[string]any{"user": sc.alice, "method": "PUT",
		"path": "/_matrix/client/unstable/rooms/" + room + "/redact/" + url.PathEscape(ids[0]) + "/" + name("x"), "body": map[string]any{}}, nil)
	b.call(t, "request", map[string]any{"user": sc.alice, "method": "POST",
		"path": "/_matrix/client/api/v1/rooms/" + room + "/redact/" + url.PathEscape(ids[1]), "body": map[string]any{}}, nil)
	topic := "topic " + name("")
	b.call(t, "request", map[string]any{"user": sc.alice, "method": "PUT",
		"path": "/_matrix/client/api/v1/rooms/" + room + "/state/m.room.topic", "body": map[string]any{"topic": topic}}, nil)
	for _, id := range ids[:2] {
		var ev struct {
			Content  map[string]any `json:"content"`
			Unsigned struct {
				RedactedBecause json.RawMessage `json:"redacted_because"`
			} `json:"unsigned"`
		}
		if code := asHeirloom(t, gw, "GET", "/_matrix/client/v3/rooms/"+room+"/event/"+url.PathEscape(id), sc.alice, nil, &ev); code != http.StatusOK {
			t.Fatalf("reading %s: %d", id, code)
		}
		if len(ev.Unsigned.RedactedBecause) == 0 || len(ev.Content) != 0 {
			t.Fatalf("%s is not redacted: %+v", id, ev)
		}
	}
	var state struct {
		Topic string `json:"topic"`
	}
	asHeirloom(t, gw, "GET", "/_matrix/client/v3/rooms/"+room+"/state/m.room.topic", sc.alice, nil, &state)
	if state.Topic != topic {
		t.Fatalf("the room's topic is %q, want %q", state.Topic, topic)
	}
}
