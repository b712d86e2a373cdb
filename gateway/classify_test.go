package gateway_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const formType = "application/x-www-form-urlencoded"

// doWith sends a request to heirloom's listener with the bridge's token and the given headers
// (each pair a name and a value; a name may repeat).
func (h *harness) doWith(t *testing.T, method, target string, headers []string, body string) response {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+bridgeAS)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	rec := httptest.NewRecorder()
	h.handler.ServeHTTP(rec, req)
	return response{status: rec.Code, body: rec.Body.Bytes()}
}

// requireQuery checks the query of a forwarded request is exactly the one parameter.
func requireQuery(t *testing.T, r seen, key, value string) {
	t.Helper()
	q, err := url.ParseQuery(r.Query)
	require.NoError(t, err, r.Query)
	require.Equal(t, url.Values{key: {value}}, q, "query %q", r.Query)
}

// requireMatrixError checks an answer is a Matrix error, {"errcode","error"} and nothing else.
func requireMatrixError(t *testing.T, resp response, status int, errcode string) {
	t.Helper()
	require.Equal(t, status, resp.status, "%s", resp.body)
	var body map[string]any
	require.NoError(t, json.Unmarshal(resp.body, &body), "error body: %s", resp.body)
	require.Equal(t, errcode, body["errcode"], "%s", resp.body)
	msg, ok := body["error"].(string)
	require.True(t, ok && msg != "", "an error message: %s", resp.body)
	require.Len(t, body, 2, "only errcode and error: %s", resp.body)
}

// Synapse runs on Twisted, which merges the body of a POST with a form content type into the
// request's parameters (splitting on & and ;), and takes the appservice's user_id (and device_id)
// from those parameters, while it parses the same body as JSON. heirloom's token, which the
// homeserver sees, covers heirloom's own puppets and bot: no body the homeserver would read
// parameters from reaches it.
func TestFormBodiesNeverReachTheHomeserver(t *testing.T) {
	h := newHarness(t)
	h.hs.setAnswer(answerJSON(http.StatusOK, `{"access_token":"openid-token","token_type":"Bearer","matrix_server_name":"localhost","expires_in":3600}`))
	const bot, puppet = "@heirloombot:localhost", "@heirloom_bob:localhost"
	multipart := "--b\r\nContent-Disposition: form-data; name=\"user_id\"\r\n\r\n" + puppet + "\r\n--b--\r\n"
	for _, tc := range []struct {
		name, method, target string
		headers              []string
		body                 string
	}{
		{"openid token as heirloom's bot", http.MethodPost, "/_matrix/client/v3/user/" + bot + "/openid/request_token",
			[]string{"Content-Type", formType}, `{"x":"&user_id=` + bot + `&"}`},
		{"content type in capitals, with a parameter", http.MethodPost, "/_matrix/client/v3/user/" + puppet + "/openid/request_token",
			[]string{"Content-Type", "Application/X-WWW-Form-URLEncoded; charset=utf-8"}, `{"x":"&user_id=` + puppet + `&"}`},
		{"semicolon separator", http.MethodPost, "/_matrix/client/r0/logout/all",
			[]string{"Content-Type", formType}, `{"x":";user_id=` + puppet + `;"}`},
		{"invite as a puppet, the body's user_id replacing the query's", http.MethodPost,
			"/_matrix/client/v3/rooms/!r:localhost/invite?user_id=@irc_alice:localhost",
			[]string{"Content-Type", formType}, `{"user_id":"@mallory:evil.example","x":"&user_id=` + puppet + `&"}`},
		{"deactivate a puppet", http.MethodPost, "/_matrix/client/v3/account/deactivate",
			[]string{"Content-Type", formType}, `{"x":"&user_id=` + puppet + `&"}`},
		{"replace a puppet's cross-signing keys", http.MethodPost, "/_matrix/client/unstable/keys/device_signing/upload",
			[]string{"Content-Type", formType}, `{"master_key":{},"x":"&user_id=` + puppet + `&"}`},
		{"send as a puppet", http.MethodPost, "/_matrix/client/v3/rooms/!r:localhost/send/m.room.message",
			[]string{"Content-Type", formType}, `{"msgtype":"m.text","body":"&user_id=` + puppet + `&"}`},
		{"leave as heirloom's bot", http.MethodPost, "/_matrix/client/v3/rooms/!r:localhost/leave",
			[]string{"Content-Type", formType}, `{"reason":"&user_id=` + bot + `&"}`},
		{"join as a puppet", http.MethodPost, "/_matrix/client/api/v1/join/!r:localhost",
			[]string{"Content-Type", formType}, `{"reason":"&user_id=` + puppet + `&"}`},
		{"a puppet's device", http.MethodPost, "/_matrix/client/v3/rooms/!r:localhost/leave?user_id=@irc_alice:localhost",
			[]string{"Content-Type", formType}, `{"reason":"&device_id=HEIRLOOMDEVICE&"}`},
		{"form type as the second Content-Type", http.MethodPost, "/_matrix/client/v3/account/deactivate",
			[]string{"Content-Type", "application/json", "Content-Type", formType}, `{"x":"&user_id=` + puppet + `&"}`},
		{"multipart form", http.MethodPost, "/_matrix/client/v3/logout/all",
			[]string{"Content-Type", "multipart/form-data; boundary=b"}, multipart},
		{"multipart form with a comment in its type", http.MethodPost, "/_matrix/client/v3/logout/all",
			[]string{"Content-Type", "multipart (x)/form-data; boundary=b"}, multipart},
		{"media upload as a puppet", http.MethodPost, "/_matrix/media/v3/upload?filename=a.txt",
			[]string{"Content-Type", formType}, "user_id=" + puppet},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(h.hs.seen())
			resp := h.doWith(t, tc.method, tc.target, tc.headers, tc.body)
			require.GreaterOrEqual(t, resp.status, 400, "refused: %s", resp.body)
			require.NotContains(t, string(resp.body), "openid-token")
			require.Len(t, h.hs.seen(), before, "nothing reached the homeserver")
		})
	}

	// Twisted reads no parameters from an empty body: such a request goes on.
	resp := h.doWith(t, http.MethodPost, "/_matrix/client/v3/rooms/!r:localhost/leave?user_id=@irc_alice:localhost",
		[]string{"Content-Type", formType}, "")
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
	got := h.hs.seen()
	require.Len(t, got, 1)
	requireQuery(t, got[0], "user_id", "@irc_alice:localhost")
}

// Device masquerading (device_id, MSC3202's org.matrix.msc3202.device_id) would let the bridge act
// as the E2EE devices heirloom holds for its users: refused wherever it is given.
func TestDeviceMasqueradingRefused(t *testing.T) {
	h := newHarness(t)
	h.hs.setAnswer(answerJSON(http.StatusOK, `{}`))
	for _, query := range []string{"device_id=HEIRLOOMDEVICE", "org.matrix.msc3202.device_id=HEIRLOOMDEVICE",
		"user_id=@irc_alice:localhost;device_id=HEIRLOOMDEVICE"} {
		resp := h.do(t, http.MethodGet, "/_matrix/client/v3/joined_rooms?"+query, bridgeAS, "")
		requireMatrixError(t, resp, http.StatusForbidden, "M_FORBIDDEN")
	}
	require.Empty(t, h.hs.seen())
}

// e2eeHomeserver answers what creating a bridge user's device and sending an encrypted event
// need, for an encrypted room whose only member is the sender: it keeps the keys uploaded and
// answers key queries with them. Every other call gets {}.
func e2eeHomeserver(room string) func(w http.ResponseWriter, r *http.Request, body []byte) {
	var mu sync.Mutex
	keys := map[string]json.RawMessage{}
	return encryptedRoomState(room, func(w http.ResponseWriter, r *http.Request, body []byte) {
		p := r.URL.Path
		mu.Lock()
		defer mu.Unlock()
		switch {
		case strings.HasSuffix(p, "/members"):
			answerJSON(http.StatusOK, `{"chunk":[]}`)(w, r, body)
		case strings.HasSuffix(p, "/keys/upload"):
			var up struct {
				DeviceKeys json.RawMessage `json:"device_keys"`
			}
			_ = json.Unmarshal(body, &up)
			if up.DeviceKeys != nil {
				keys["device"] = up.DeviceKeys
			}
			answerJSON(http.StatusOK, `{"one_time_key_counts":{"signed_curve25519":50}}`)(w, r, body)
		case strings.HasSuffix(p, "/keys/device_signing/upload"):
			var up map[string]json.RawMessage
			_ = json.Unmarshal(body, &up)
			for k, v := range up {
				keys[k] = v
			}
			answerJSON(http.StatusOK, `{}`)(w, r, body)
		case strings.HasSuffix(p, "/keys/query"):
			answerJSON(http.StatusOK, keyQueryAnswer(keys))(w, r, body)
		case strings.Contains(p, "/send/m.room.encrypted/"):
			answerJSON(http.StatusOK, `{"event_id":"$encrypted"}`)(w, r, body)
		case strings.Contains(p, "/send/"):
			answerJSON(http.StatusOK, `{"event_id":"$plaintext"}`)(w, r, body)
		default:
			answerJSON(http.StatusOK, `{}`)(w, r, body)
		}
	})
}

// keyQueryAnswer is a /keys/query answer with the one user's uploaded device and cross-signing keys.
func keyQueryAnswer(keys map[string]json.RawMessage) string {
	var dev struct {
		UserID   string `json:"user_id"`
		DeviceID string `json:"device_id"`
	}
	if json.Unmarshal(keys["device"], &dev) != nil || dev.UserID == "" {
		return `{}`
	}
	answer := map[string]any{"device_keys": map[string]any{dev.UserID: map[string]json.RawMessage{dev.DeviceID: keys["device"]}}}
	for field, key := range map[string]string{"master_keys": "master_key", "self_signing_keys": "self_signing_key", "user_signing_keys": "user_signing_key"} {
		if keys[key] != nil {
			answer[field] = map[string]json.RawMessage{dev.UserID: keys[key]}
		}
	}
	out, _ := json.Marshal(answer)
	return string(out)
}

// Every form of a send the homeserver serves is a send to heirloom: a POST without a transaction
// ID, the unstable and api/v1 prefixes, a transaction ID with an escaped slash (one path segment
// to the homeserver), an empty transaction ID. Into an encrypted room each goes out encrypted.
func TestEverySendFormIsEncrypted(t *testing.T) {
	const room = "!secret:localhost"
	for _, tc := range []struct{ name, method, target string }{
		{"POST without a transaction ID", http.MethodPost, "/_matrix/client/v3/rooms/" + room + "/send/m.room.message"},
		{"unstable prefix", http.MethodPut, "/_matrix/client/unstable/rooms/" + room + "/send/m.room.message/t1"},
		{"api/v1 prefix", http.MethodPut, "/_matrix/client/api/v1/rooms/" + room + "/send/m.room.message/t2"},
		{"r0 prefix, escaped room ID", http.MethodPut, "/_matrix/client/r0/rooms/%21secret%3Alocalhost/send/m.room.message/t3"},
		{"escaped slash in the transaction ID", http.MethodPut, "/_matrix/client/v3/rooms/" + room + "/send/m.room.message/a%2Fb"},
		{"empty transaction ID", http.MethodPut, "/_matrix/client/v3/rooms/" + room + "/send/m.room.message/"},
		{"escaped dot in the event type", http.MethodPut, "/_matrix/client/v3/rooms/" + room + "/send/m.room%2Emessage/t4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.hs.setAnswer(e2eeHomeserver(room))
			secret := "top secret " + tc.name
			resp := h.doWith(t, tc.method, tc.target+"?user_id=@irc_alice:localhost", []string{"Content-Type", "application/json"},
				`{"msgtype":"m.text","body":"`+secret+`"}`)
			for _, r := range h.hs.seen() {
				require.NotContains(t, string(r.Body), secret, "plaintext reached the homeserver: %s %s", r.Method, r.RawPath)
			}
			require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
			require.JSONEq(t, `{"event_id":"$encrypted"}`, string(resp.body))
		})
	}
}

// A call heirloom does not know is refused, never forwarded: whatever could send an event or act
// as a user and is not recognised stays on heirloom's side.
func TestUnrecognisedCallsRefused(t *testing.T) {
	h := newHarness(t)
	h.hs.setAnswer(answerJSON(http.StatusOK, `{"event_id":"$sent"}`))
	const room = "!r:localhost"
	for _, tc := range []struct {
		method, target string
		status         int
		errcode        string
	}{
		{http.MethodPost, "/_matrix/client/unstable/org.matrix.msc2716/rooms/" + room + "/batch_send", 404, "M_UNRECOGNIZED"},
		{http.MethodPut, "/_matrix/client/v3/rooms/" + room + "/send/m.room.message/t1/extra", 404, "M_UNRECOGNIZED"},
		{http.MethodPut, "/_matrix/client/v4/rooms/" + room + "/send/m.room.message/t1", 404, "M_UNRECOGNIZED"},
		{http.MethodPut, "/_matrix/client/V3/rooms/" + room + "/send/m.room.message/t1", 404, "M_UNRECOGNIZED"},
		{http.MethodPut, "/_matrix/client/v3/rooms/" + room + "/%73end/m.room.message/t1", 404, "M_UNRECOGNIZED"},
		{http.MethodGet, "/_matrix/client/unstable/fi.mau.as_sync", 404, "M_UNRECOGNIZED"},
		{http.MethodPost, "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/d1/send", 404, "M_UNRECOGNIZED"},
		{http.MethodDelete, "/_matrix/client/v3/rooms/" + room + "/send/m.room.message/t1", 405, "M_UNRECOGNIZED"},
		{"put", "/_matrix/client/v3/rooms/" + room + "/send/m.room.message/t1", 405, "M_UNRECOGNIZED"},
		{http.MethodOptions, "/_matrix/client/v3/rooms/" + room + "/send/m.room.message/t1", 405, "M_UNRECOGNIZED"},
		{http.MethodPost, "/_matrix/client/v3/keys/upload", 403, "M_FORBIDDEN"},
		{http.MethodPost, "/_matrix/client/v3/keys/device_signing/upload", 403, "M_FORBIDDEN"},
		{http.MethodPut, "/_matrix/client/v3/sendToDevice/m.room_key_request/t1", 403, "M_FORBIDDEN"},
		{http.MethodPost, "/_matrix/client/v3/logout/all", 403, "M_FORBIDDEN"},
		{http.MethodPost, "/_matrix/client/r0/account/deactivate", 403, "M_FORBIDDEN"},
		{http.MethodDelete, "/_matrix/client/v3/devices/HEIRLOOMDEVICE", 403, "M_FORBIDDEN"},
		{http.MethodPost, "/_synapse/admin/v1/deactivate/@heirloom_bob:localhost", 403, "M_FORBIDDEN"},
		{http.MethodPost, "/_synapse/admin/v1/media/quarantine/localhost/abc", 403, "M_FORBIDDEN"},
	} {
		t.Run(tc.method+" "+tc.target, func(t *testing.T) {
			resp := h.doWith(t, tc.method, tc.target+"?user_id=@irc_alice:localhost", []string{"Content-Type", "application/json"}, `{"msgtype":"m.text","body":"x"}`)
			requireMatrixError(t, resp, tc.status, tc.errcode)
		})
	}
	require.Empty(t, h.hs.seen(), "nothing reached the homeserver")
}

// What the bridge's own users may do that heirloom has nothing to add to goes to the homeserver as
// the bridge sent it, on every prefix the homeserver serves it under: state, redactions, typing,
// receipts, profiles, media, the admin check heisenbridge makes.
func TestKnownCallsForwarded(t *testing.T) {
	h := newHarness(t)
	h.hs.setAnswer(answerJSON(http.StatusOK, `{}`))
	const room = "%21r%3Alocalhost"
	var calls [][2]string
	for _, v := range []string{"r0", "v3", "unstable", "api/v1"} {
		p := "/_matrix/client/" + v
		calls = append(calls,
			[2]string{http.MethodPut, p + "/rooms/" + room + "/state/m.room.topic/"},
			[2]string{http.MethodPut, p + "/rooms/" + room + "/state/m.room.topic"},
			[2]string{http.MethodPut, p + "/rooms/" + room + "/state/m.room.name/a%2Fb"},
			[2]string{http.MethodGet, p + "/rooms/" + room + "/state"},
			[2]string{http.MethodPut, p + "/rooms/" + room + "/redact/%24ev/t1"},
			[2]string{http.MethodPost, p + "/rooms/" + room + "/redact/%24ev"},
			[2]string{http.MethodPost, p + "/rooms/" + room + "/leave"},
			[2]string{http.MethodPut, p + "/rooms/" + room + "/typing/%40irc_alice%3Alocalhost"},
			[2]string{http.MethodPut, p + "/profile/%40irc_alice%3Alocalhost/displayname"},
			[2]string{http.MethodGet, p + "/rooms/" + room + "/joined_members"},
			[2]string{http.MethodPut, p + "/directory/room/%23irc_x%3Alocalhost"},
			[2]string{http.MethodPut, p + "/presence/%40irc_alice%3Alocalhost/status"},
			[2]string{http.MethodGet, p + "/joined_rooms"},
		)
	}
	for _, v := range []string{"r0", "v3", "unstable"} {
		p := "/_matrix/client/" + v
		calls = append(calls,
			[2]string{http.MethodPost, p + "/rooms/" + room + "/receipt/m.read/%24ev"},
			[2]string{http.MethodPut, p + "/user/%40irc_alice%3Alocalhost/account_data/irc"},
			[2]string{http.MethodGet, p + "/account/whoami"},
			[2]string{http.MethodGet, p + "/capabilities"},
			[2]string{http.MethodPost, p + "/user/%40irc_alice%3Alocalhost/openid/request_token"},
			[2]string{http.MethodPost, p + "/keys/query"},
		)
	}
	calls = append(calls,
		[2]string{http.MethodGet, "/_matrix/client/versions"},
		[2]string{http.MethodPost, "/_matrix/media/v3/upload"},
		[2]string{http.MethodPost, "/_matrix/media/v1/create"},
		[2]string{http.MethodGet, "/_matrix/client/v1/media/config"},
		[2]string{http.MethodPost, "/_matrix/client/v1/appservice/testbridge/ping"},
		[2]string{http.MethodGet, "/_synapse/admin/v1/users/%40testbot%3Alocalhost/admin"},
		[2]string{http.MethodHead, "/_matrix/client/v3/rooms/" + room + "/state"},
	)
	for i, c := range calls {
		resp := h.doWith(t, c[0], c[1]+"?user_id=@irc_alice:localhost", []string{"Content-Type", "application/json"}, `{}`)
		require.Equal(t, http.StatusOK, resp.status, "%s %s: %s", c[0], c[1], resp.body)
		got := h.hs.seen()
		require.Len(t, got, i+1, "%s %s", c[0], c[1])
		require.Equal(t, c[0], got[i].Method)
		require.Equal(t, c[1], got[i].RawPath, "forwarded with the bridge's own escaping")
		requireQuery(t, got[i], "user_id", "@irc_alice:localhost")
	}
}

// The homeserver reads a register or login body as Python's json does: exact keys, the last of
// duplicates. heirloom reads the same user out of it, on every prefix the homeserver serves the
// call under, and refuses a body it cannot read exactly that way (case-variant or repeated keys).
func TestRegisterAndLoginReadLikeTheHomeserver(t *testing.T) {
	h := newHarness(t)
	h.hs.setAnswer(answerJSON(http.StatusOK, `{"user_id":"@whoever:localhost"}`))
	const as = `"type":"m.login.application_service"`
	for _, tc := range []struct {
		name, path, body string
		status           int
		errcode          string
	}{
		{"unstable register of a puppet", "/_matrix/client/unstable/register", `{` + as + `,"username":"heirloom_bob","inhibit_login":true}`, 403, "M_EXCLUSIVE"},
		{"api/v1 login as a puppet", "/_matrix/client/api/v1/login", `{` + as + `,"identifier":{"type":"m.id.user","user":"heirloom_bob"}}`, 403, "M_EXCLUSIVE"},
		{"case-variant username", "/_matrix/client/v3/register", `{` + as + `,"username":"heirloom_bob","Username":"irc_x"}`, 400, "M_BAD_JSON"},
		{"case-variant type", "/_matrix/client/v3/login", `{` + as + `,"Type":"m.login.password","identifier":{"type":"m.id.user","user":"heirloom_bob"}}`, 400, "M_BAD_JSON"},
		{"case-variant identifier user", "/_matrix/client/v3/login", `{` + as + `,"identifier":{"type":"m.id.user","user":"heirloom_bob","USER":"irc_x"}}`, 400, "M_BAD_JSON"},
		{"repeated username", "/_matrix/client/v3/register", `{` + as + `,"username":"irc_x","username":"heirloom_bob"}`, 400, "M_BAD_JSON"},
		{"escaped underscore", "/_matrix/client/v3/register", `{` + as + `,"username":"heirloom\u005fbob"}`, 403, "M_EXCLUSIVE"},
		{"a full user ID as the localpart", "/_matrix/client/v3/register", `{` + as + `,"username":"@irc_x:localhost"}`, 403, "M_EXCLUSIVE"},
		{"not JSON", "/_matrix/client/v3/register", `{` + as + `,"username":"heirloom_bob"`, 400, "M_NOT_JSON"},
		{"not UTF-8", "/_matrix/client/v3/register", `{` + as + `,"username":"irc_x","x":"` + "\xff" + `"}`, 400, "M_NOT_JSON"},
		// The bridge's own users: an appservice login would give them a device heirloom does not manage.
		{"login as a ghost by its user ID", "/_matrix/client/r0/login", `{` + as + `,"identifier":{"type":"m.id.user","user":"@irc_x:localhost"}}`, 400, "M_APPSERVICE_LOGIN_UNSUPPORTED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(h.hs.seen())
			resp := h.doWith(t, http.MethodPost, tc.path, []string{"Content-Type", "application/json"}, tc.body)
			requireMatrixError(t, resp, tc.status, tc.errcode)
			require.Len(t, h.hs.seen(), before, "never reached the homeserver")
		})
	}
	for _, tc := range []struct{ name, path, body string }{
		{"unstable register of a ghost", "/_matrix/client/unstable/register", `{` + as + `,"username":"irc_x","inhibit_login":true}`},
		{"password login: no appservice token involved", "/_matrix/client/v3/login", `{"type":"m.login.password","identifier":{"type":"m.id.user","user":"heirloom_bob"},"password":"p"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(h.hs.seen())
			resp := h.doWith(t, http.MethodPost, tc.path, []string{"Content-Type", "application/json"}, tc.body)
			require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
			require.Len(t, h.hs.seen(), before+1)
			require.JSONEq(t, tc.body, string(h.hs.seen()[before].Body), "forwarded as it was")
		})
	}
}

// Every error heirloom writes is a Matrix error, {"errcode","error"}, with a fitting status; what
// went wrong inside heirloom stays in its log, and the homeserver's own errors keep their errcode.
func TestGatewayErrorsAreMatrixErrors(t *testing.T) {
	h := newHarness(t)
	resp := h.do(t, http.MethodGet, "/_matrix/client/v3/joined_rooms?user_id=@alice:localhost", bridgeAS, "")
	requireMatrixError(t, resp, http.StatusForbidden, "M_EXCLUSIVE")
	resp = h.do(t, http.MethodGet, "/_matrix/client/v3/joined_rooms?user_id=@a:localhost&user_id=@b:localhost", bridgeAS, "")
	requireMatrixError(t, resp, http.StatusBadRequest, "M_INVALID_PARAM")
	resp = h.do(t, http.MethodGet, "/_matrix/client/v3/joined_rooms", "", "")
	requireMatrixError(t, resp, http.StatusUnauthorized, "M_UNKNOWN_TOKEN")

	// The homeserver's refusal keeps its errcode, status and fields.
	const room = "!secret:localhost"
	h.hs.setAnswer(encryptedRoomState(room, func(w http.ResponseWriter, r *http.Request, body []byte) {
		answerJSON(http.StatusForbidden, `{"errcode":"M_FORBIDDEN","error":"Not allowed","org.example.reason":"policy"}`)(w, r, body)
	}))
	resp = h.doWith(t, http.MethodPut, "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/t1?user_id=@irc_alice:localhost",
		[]string{"Content-Type", "application/json"}, `{"msgtype":"m.text","body":"hi"}`)
	require.Equal(t, http.StatusForbidden, resp.status, "%s", resp.body)
	var refused map[string]any
	require.NoError(t, json.Unmarshal(resp.body, &refused))
	require.Equal(t, "M_FORBIDDEN", refused["errcode"])
	require.Equal(t, "policy", refused["org.example.reason"])

	// An internal failure: a generic message for the bridge, the details in heirloom's log.
	require.NoError(t, h.db.Close())
	resp = h.do(t, http.MethodGet, "/_matrix/client/v1/media/download/localhost/heirloom_abc?user_id=@irc_alice:localhost", bridgeAS, "")
	requireMatrixError(t, resp, http.StatusInternalServerError, "M_UNKNOWN")
	require.NotContains(t, strings.ToLower(string(resp.body)), "sql")
	require.NotContains(t, strings.ToLower(string(resp.body)), "database")
	require.Contains(t, strings.ToLower(h.logs.String()), "database is closed", "the cause is in the log")
}

// rawExchange writes one raw HTTP/1.1 request to addr and returns the status line of the answer.
func rawExchange(t *testing.T, addr, request string) string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(5*time.Second)))
	_, err = io.WriteString(conn, request)
	require.NoError(t, err)
	line, _ := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line)
}

// Requests as an attacker writes them on the wire, through heirloom's real listener: path tricks,
// framing tricks, parameters in odd places. None may make the homeserver send plaintext into the
// encrypted room, or act as anyone but the bridge's users.
func TestAdversarialRequestsOnTheWire(t *testing.T) {
	h := newHarness(t)
	const room = "!secret:localhost"
	h.hs.setAnswer(e2eeHomeserver(room))
	srv := httptest.NewServer(h.handler)
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	const secret = "wire secret"
	body := `{"msgtype":"m.text","body":"` + secret + `"}`
	req := func(method, target string, headers ...string) string {
		head := method + " " + target + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + bridgeAS + "\r\n"
		for _, hd := range headers {
			head += hd + "\r\n"
		}
		return head
	}
	withBody := func(method, target string, headers ...string) string {
		return req(method, target, headers...) + "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
	}
	chunked := func(method, target string, headers ...string) string {
		return req(method, target, headers...) + "Transfer-Encoding: chunked\r\n\r\n" + strconv.FormatInt(int64(len(body)), 16) + "\r\n" + body + "\r\n0\r\n\r\n"
	}
	const send = "/_matrix/client/v3/rooms/" + room + "/send/m.room.message"
	for _, tc := range []struct{ name, want, request string }{
		{"double slash", "307", withBody("PUT", "/_matrix/client/v3/rooms/"+room+"//send/m.room.message/t1")},
		{"escaped dot segments", "404", withBody("PUT", "/_matrix/client/v3/rooms/"+room+"/x/%2E%2E/send/m.room.message/t2")},
		{"escaped slash in the room", "404", withBody("PUT", "/_matrix/client/v3/rooms/"+room+"%2Fsend/m.room.message/t3")},
		{"trailing slash after the txn", "404", withBody("PUT", send+"/t4/")},
		{"semicolon parameters in the path", "200", withBody("PUT", send+";x=y/t5")},
		{"prefix in capitals", "404", withBody("PUT", "/_matrix/client/V3/rooms/"+room+"/send/m.room.message/t6")},
		{"absolute-form target", "200", withBody("PUT", "http://x/_matrix/client/unstable/rooms/"+room+"/send/m.room.message/t7")},
		{"chunked POST send", "200", chunked("POST", send)},
		{"chunked form body", "415", chunked("POST", "/_matrix/client/v3/user/@heirloombot:localhost/openid/request_token", "Content-Type: "+formType)},
		{"chunked and a Content-Length", "200", req("POST", send, "Content-Length: 3", "Transfer-Encoding: chunked") +
			"\r\n" + strconv.FormatInt(int64(len(body)), 16) + "\r\n" + body + "\r\n0\r\n\r\n"},
		{"form type in a second header line", "415", withBody("POST", "/_matrix/client/v3/account/deactivate", "Content-Type: application/json", "content-type: "+formType)},
		{"user_id of a puppet escaped", "403", withBody("PUT", send+"/t8?user%5Fid=%40heirloom_bob%3Alocalhost")},
		{"user_id after a semicolon", "403", withBody("PUT", send+"/t9?x=1;user_id=@heirloom_bob:localhost")},
		{"user_id with a NUL", "403", withBody("PUT", send+"/t10?user_id=@irc_alice:localhost%00")},
		{"access_token of the bridge in the query, header too", "403", withBody("PUT", send+"/t11?access_token="+bridgeAS+"&user_id=@heirloom_bob:localhost")},
		{"HEAD of a send", "405", req("HEAD", send+"/t12") + "\r\n"},
		{"OPTIONS of a send", "405", req("OPTIONS", send+"/t13") + "\r\n"},
		{"lower-case method", "405", withBody("put", send+"/t14")},
		{"device of a bridge user", "403", withBody("PUT", send+"/t15?user_id=@irc_alice:localhost&device_id=HEIRLOOMDEVICE")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status := rawExchange(t, addr, tc.request)
			require.True(t, strings.HasPrefix(status, "HTTP/1.1 "+tc.want), "answered %q, want %s", status, tc.want)
			for _, r := range h.hs.seen() {
				require.NotContains(t, string(r.Body), secret, "plaintext reached the homeserver: %s %s", r.Method, r.RawPath)
				q, _ := url.ParseQuery(r.Query)
				require.NotContains(t, q.Get("user_id"), "heirloom", "acting as heirloom's users: %s %s?%s", r.Method, r.RawPath, r.Query)
				require.NotContains(t, r.RawPath, "openid", "%s %s", r.Method, r.RawPath)
				require.NotContains(t, r.RawPath, "deactivate", "%s %s", r.Method, r.RawPath)
				require.NotContains(t, r.Query, "HEIRLOOMDEVICE", "%s %s?%s", r.Method, r.RawPath, r.Query)
			}
		})
	}
}

// A forwarded request never asks the homeserver to switch protocols: behind a 101 the bridge would
// speak to the homeserver without heirloom reading a word.
func TestNoProtocolSwitchForwarded(t *testing.T) {
	h := newHarness(t)
	var upgrade atomic.Value
	upgrade.Store("")
	h.hs.setAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) {
		upgrade.Store(r.Header.Get("Upgrade") + r.Header.Get("Connection"))
		answerJSON(http.StatusOK, `{"joined_rooms":[]}`)(w, r, body)
	})
	srv := httptest.NewServer(h.handler)
	t.Cleanup(srv.Close)
	status := rawExchange(t, strings.TrimPrefix(srv.URL, "http://"), "GET /_matrix/client/v3/joined_rooms HTTP/1.1\r\nHost: x\r\n"+
		"Authorization: Bearer "+bridgeAS+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	require.Equal(t, "HTTP/1.1 200 OK", status)
	require.Len(t, h.hs.seen(), 1)
	require.Empty(t, upgrade.Load(), "the homeserver was asked to switch protocols")
}

// A send as a user the homeserver does not let see the room is answered with the homeserver's
// refusal, never forwarded: a join completing between heirloom's look at the room and the send
// would let it into an encrypted room in the clear.
func TestSendIntoAnUnseenRoomRefused(t *testing.T) {
	h := newHarness(t)
	h.hs.setAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) {
		if strings.HasSuffix(r.URL.Path, "/state") {
			answerJSON(http.StatusForbidden, `{"errcode":"M_FORBIDDEN","error":"User not in room"}`)(w, r, body)
			return
		}
		answerJSON(http.StatusOK, `{"event_id":"$plaintext"}`)(w, r, body)
	})
	resp := h.doWith(t, http.MethodPut, "/_matrix/client/v3/rooms/!r:localhost/send/m.room.message/t1?user_id=@irc_alice:localhost",
		[]string{"Content-Type", "application/json"}, `{"msgtype":"m.text","body":"not yet joined"}`)
	requireMatrixError(t, resp, http.StatusForbidden, "M_FORBIDDEN")
	for _, r := range h.hs.seen() {
		require.NotContains(t, r.RawPath, "/send/", "nothing was sent")
	}
}
