package gateway_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/attachment"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/gateway"
	"github.com/heirloom-matrix/heirloom/history"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
	"github.com/heirloom-matrix/heirloom/server"
)

const (
	heirloomAS = "heirloom-as-token-0123456789abcdef"
	heirloomHS = "heirloom-hs-token-0123456789abcdef"
	bridgeAS   = "bridge-as-token-0123456789abcdef"
	bridgeHS   = "bridge-hs-token-0123456789abcdef"
)

// seen is one request as a fake peer (homeserver or bridge) received it.
type seen struct {
	Method, RawPath, Query, Auth string
	Body                         []byte
}

// peer is a fake HTTP peer that records every request and answers with its handler.
type peer struct {
	*httptest.Server
	mu       sync.Mutex
	requests []seen
	answer   func(w http.ResponseWriter, r *http.Request, body []byte)
}

func newPeer(t *testing.T, answer func(w http.ResponseWriter, r *http.Request, body []byte)) *peer {
	p := &peer{answer: answer}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		p.mu.Lock()
		p.requests = append(p.requests, seen{Method: r.Method, RawPath: r.URL.EscapedPath(), Query: r.URL.RawQuery,
			Auth: r.Header.Get("Authorization"), Body: body})
		answer := p.answer
		p.mu.Unlock()
		answer(w, r, body)
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *peer) seen() []seen {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]seen(nil), p.requests...)
}

func (p *peer) setAnswer(answer func(w http.ResponseWriter, r *http.Request, body []byte)) {
	p.mu.Lock()
	p.answer = answer
	p.mu.Unlock()
}

func answerJSON(status int, body string) func(w http.ResponseWriter, r *http.Request, _ []byte) {
	return func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

type harness struct {
	hs, bridge *peer
	handler    http.Handler
	gw         *gateway.Gateway
	db         *database.Database
	mgr        *e2ee.Manager
	logs       *syncBuffer
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newHarness runs heirloom's real listener in gateway mode over a real SQLite database, between
// a fake homeserver and a fake bridge (both record what they receive). Each option changes the
// configuration before heirloom starts.
func newHarness(t *testing.T, options ...func(*config.Config)) *harness {
	t.Helper()
	h := &harness{logs: &syncBuffer{}}
	h.hs = newPeer(t, answerJSON(http.StatusNotFound, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`))
	h.bridge = newPeer(t, answerJSON(http.StatusOK, `{}`))
	registration := filepath.Join(t.TempDir(), "bridge.yaml")
	require.NoError(t, os.WriteFile(registration, []byte(`id: testbridge
url: `+h.bridge.URL+`
as_token: `+bridgeAS+`
hs_token: `+bridgeHS+`
sender_localpart: testbot
namespaces:
  users:
  - regex: '@irc_.*'
    exclusive: true
  aliases:
  - regex: '#irc_.*'
    exclusive: true
`), 0o600))
	cfg := &config.Config{
		Homeserver: config.Homeserver{Address: h.hs.URL, Domain: "localhost"},
		AppService: config.AppService{
			Address: "http://127.0.0.1:29400", Hostname: "127.0.0.1", Port: 29400, ID: "heirloom",
			BotUsername: "heirloombot", PuppetPrefix: "heirloom_", ASToken: heirloomAS, HSToken: heirloomHS,
		},
		Database:       testdb.SQLite(t),
		Encryption:     config.Encryption{PickleKey: "pickle-key-0123456789abcdef"},
		Provisioning:   config.Provisioning{SharedSecret: "api-secret-0123456789abcdef"},
		HistorySharing: config.HistorySharing{ShareOnInvite: true, AcceptWindow: 24 * time.Hour, MaxBundleSize: 1 << 20},
		Gateway:        config.Gateway{Registration: registration, DecryptWait: time.Second},
		Logging:        config.Logging{Level: "debug", Format: "json"},
	}
	for _, option := range options {
		option(cfg)
	}
	require.NoError(t, cfg.Validate())
	var err error
	cfg.Bridge, err = cfg.LoadBridge()
	require.NoError(t, err)
	log := zerolog.New(h.logs).Level(zerolog.DebugLevel)
	h.db, err = database.Open(cfg.Database, log)
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.db.Close() })
	require.NoError(t, h.db.Upgrade(context.Background()))
	e2ee.RegisterContentTypes()
	mgr, err := e2ee.NewManager(cfg, h.db, http.DefaultClient, log)
	require.NoError(t, err)
	h.mgr = mgr
	sharing := history.NewService(cfg, h.db, mgr)
	srv := server.NewServer(cfg, h.db, mgr, sharing, log)
	h.gw, err = gateway.New(cfg, h.db, mgr, sharing, gateway.NewMetrics(srv.MetricsRegistry()), log)
	require.NoError(t, err)
	mgr.SetSessionHook(h.gw.KeysArrived)
	srv.UseGateway(h.gw)
	h.handler = srv.Handler()
	return h
}

// run starts the delivery to the bridge until the test ends.
func (h *harness) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.gw.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

type response struct {
	status int
	body   []byte
}

func (r response) errcode(t *testing.T) string {
	t.Helper()
	var body struct {
		ErrCode string `json:"errcode"`
	}
	require.NoError(t, json.Unmarshal(r.body, &body), "error body: %s", r.body)
	return body.ErrCode
}

// do sends a request to heirloom's listener as the bridge (or whoever holds auth) would.
func (h *harness) do(t *testing.T, method, target, auth string, body string) response {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", "Bearer "+auth)
	}
	rec := httptest.NewRecorder()
	h.handler.ServeHTTP(rec, req)
	return response{status: rec.Code, body: rec.Body.Bytes()}
}

// Only the bridge's as_token opens the bridge's API; heirloom is no proxy for anyone else's token,
// and nothing of a refused request reaches the homeserver.
func TestBridgeAPIRequiresTheBridgesToken(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct{ name, target, auth string }{
		{"no token", "/_matrix/client/v3/joined_rooms", ""},
		{"wrong token", "/_matrix/client/v3/joined_rooms", "not-a-token"},
		{"heirloom's own as_token", "/_matrix/client/v3/joined_rooms", heirloomAS},
		{"the bridge's hs_token", "/_matrix/client/v3/joined_rooms", bridgeHS},
		{"wrong access_token parameter", "/_matrix/client/v3/joined_rooms?access_token=nope", ""},
		{"a user's token on media", "/_matrix/media/v3/upload", "syt_user_token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := h.do(t, http.MethodGet, tc.target, tc.auth, "")
			require.Equal(t, http.StatusUnauthorized, resp.status)
			require.Equal(t, "M_UNKNOWN_TOKEN", resp.errcode(t))
		})
	}
	require.Empty(t, h.hs.seen(), "refused requests never reach the homeserver")
}

// A call the gateway does not handle reaches the homeserver as the bridge made it (method, path
// with the bridge's own escaping, user_id, body) but with heirloom's as_token in place of the
// bridge's, and the homeserver's answer comes back as it was.
func TestBridgeCallForwardedWithHeirloomsToken(t *testing.T) {
	h := newHarness(t)
	h.hs.setAnswer(func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Homeserver", "yes")
		w.WriteHeader(http.StatusConflict)
		_, _ = io.WriteString(w, `{"errcode":"M_EXAMPLE","error":"as the homeserver said"}`)
	})
	resp := h.do(t, http.MethodPut, "/_matrix/client/v3/profile/%40irc_alice%3Alocalhost/displayname?user_id=%40irc_alice%3Alocalhost", bridgeAS,
		`{"displayname":"alice (IRC)"}`)
	require.Equal(t, http.StatusConflict, resp.status)
	require.JSONEq(t, `{"errcode":"M_EXAMPLE","error":"as the homeserver said"}`, string(resp.body))
	got := h.hs.seen()
	require.Len(t, got, 1)
	require.Equal(t, http.MethodPut, got[0].Method)
	require.Equal(t, "/_matrix/client/v3/profile/%40irc_alice%3Alocalhost/displayname", got[0].RawPath)
	require.Equal(t, "user_id=%40irc_alice%3Alocalhost", got[0].Query)
	require.Equal(t, "Bearer "+heirloomAS, got[0].Auth)
	require.JSONEq(t, `{"displayname":"alice (IRC)"}`, string(got[0].Body))

	// The legacy access_token parameter is accepted from the bridge and never passed on.
	resp = h.do(t, http.MethodGet, "/_matrix/client/v3/joined_rooms?access_token="+bridgeAS+"&user_id=%40testbot%3Alocalhost", "", "")
	require.Equal(t, http.StatusConflict, resp.status)
	got = h.hs.seen()
	require.Len(t, got, 2)
	require.Equal(t, "user_id=%40testbot%3Alocalhost", got[1].Query)
	require.Equal(t, "Bearer "+heirloomAS, got[1].Auth)
	for _, r := range got {
		require.NotContains(t, r.Auth+r.Query+string(r.Body), bridgeAS, "the bridge's token never reaches the homeserver")
	}
}

// The bridge's token acts only as the bridge's bot and users: never as heirloom's own puppets,
// never as anyone else.
func TestBridgeActsOnlyAsItsOwnUsers(t *testing.T) {
	h := newHarness(t)
	for _, user := range []string{"@alice:localhost", "@heirloom_bob:localhost", "@heirloombot:localhost", "@irc_alice:elsewhere.example"} {
		resp := h.do(t, http.MethodGet, "/_matrix/client/v3/joined_rooms?user_id="+user, bridgeAS, "")
		require.Equal(t, http.StatusForbidden, resp.status, user)
		require.Equal(t, "M_EXCLUSIVE", resp.errcode(t), user)
	}
	resp := h.do(t, http.MethodGet, "/_matrix/client/v3/joined_rooms?user_id=@irc_alice:localhost&user_id=@heirloom_bob:localhost", bridgeAS, "")
	require.Equal(t, http.StatusBadRequest, resp.status, "a second user_id is refused, whichever one the homeserver would read")
	require.Empty(t, h.hs.seen())
}

// A send into an unencrypted room goes to the homeserver as it is; when heirloom cannot tell
// whether the room is encrypted, it refuses the send rather than risk it in the clear.
func TestSendEncryptionStateDecides(t *testing.T) {
	h := newHarness(t)
	const room = "!plain:localhost"
	h.hs.setAnswer(func(w http.ResponseWriter, r *http.Request, _ []byte) {
		switch {
		case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/state"):
			answerJSON(http.StatusOK, `[{"type":"m.room.create","state_key":"","sender":"@alice:localhost","event_id":"$create","room_id":"`+room+`","origin_server_ts":1,"content":{"room_version":"10"}}]`)(w, r, nil)
		case r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/state/m.room.encryption"):
			answerJSON(http.StatusNotFound, `{"errcode":"M_NOT_FOUND","error":"Event not found."}`)(w, r, nil)
		case r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/state/m.room.member/"):
			answerJSON(http.StatusOK, `{"membership":"join"}`)(w, r, nil)
		default:
			answerJSON(http.StatusOK, `{"event_id":"$sent"}`)(w, r, nil)
		}
	})
	resp := h.do(t, http.MethodPut, "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/txn1?user_id=@irc_alice:localhost", bridgeAS,
		`{"msgtype":"m.text","body":"hello"}`)
	require.Equal(t, http.StatusOK, resp.status)
	require.JSONEq(t, `{"event_id":"$sent"}`, string(resp.body))
	got := h.hs.seen()
	last := got[len(got)-1]
	require.Equal(t, "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/txn1", last.RawPath)
	require.JSONEq(t, `{"msgtype":"m.text","body":"hello"}`, string(last.Body))

	h.hs.setAnswer(answerJSON(http.StatusInternalServerError, `{"errcode":"M_UNKNOWN","error":"database is down"}`))
	before := len(h.hs.seen())
	resp = h.do(t, http.MethodPut, "/_matrix/client/v3/rooms/!unknown:localhost/send/m.room.message/txn2?user_id=@irc_alice:localhost", bridgeAS,
		`{"msgtype":"m.text","body":"secret"}`)
	require.Equal(t, http.StatusBadGateway, resp.status)
	require.Equal(t, "M_UNKNOWN", resp.errcode(t), "a JSON error with an errcode: bridges do not resend it under a new transaction ID")
	for _, r := range h.hs.seen()[before:] {
		require.NotContains(t, r.RawPath, "/send/", "nothing was sent")
	}
}

// The homeserver's user and alias queries in the bridge's namespace are the bridge's to answer,
// asked with the bridge's hs_token; others stay heirloom's.
func TestQueriesForwardedToTheBridge(t *testing.T) {
	h := newHarness(t)
	h.bridge.setAnswer(answerJSON(http.StatusOK, `{}`))
	resp := h.do(t, http.MethodGet, "/_matrix/app/v1/users/@irc_zed:localhost", heirloomHS, "")
	require.Equal(t, http.StatusOK, resp.status)
	resp = h.do(t, http.MethodGet, "/_matrix/app/v1/rooms/%23irc_chan:localhost", heirloomHS, "")
	require.Equal(t, http.StatusOK, resp.status)
	got := h.bridge.seen()
	require.Len(t, got, 2)
	require.Equal(t, "/_matrix/app/v1/users/@irc_zed:localhost", got[0].RawPath)
	require.Equal(t, "/_matrix/app/v1/rooms/%23irc_chan:localhost", got[1].RawPath)
	for _, r := range got {
		require.Equal(t, "Bearer "+bridgeHS, r.Auth)
	}

	h.bridge.setAnswer(answerJSON(http.StatusNotFound, `{"errcode":"M_NOT_FOUND"}`))
	resp = h.do(t, http.MethodGet, "/_matrix/app/v1/users/@irc_nobody:localhost", heirloomHS, "")
	require.Equal(t, http.StatusNotFound, resp.status)
	resp = h.do(t, http.MethodGet, "/_matrix/app/v1/users/@someone:localhost", heirloomHS, "")
	require.Equal(t, http.StatusNotFound, resp.status)
	require.Len(t, h.bridge.seen(), 3, "a user outside the bridge's namespace is not the bridge's question")
	resp = h.do(t, http.MethodGet, "/_matrix/app/v1/users/@irc_zed:localhost", bridgeHS, "")
	require.Equal(t, http.StatusForbidden, resp.status, "the homeserver's token only")
}

type bridgeTxn struct {
	ID        string
	Auth      string
	Events    []map[string]any `json:"events"`
	Ephemeral []map[string]any `json:"de.sorunome.msc2409.ephemeral"`
}

func bridgeTxns(t require.TestingT, p *peer) []bridgeTxn {
	var out []bridgeTxn
	for _, r := range p.seen() {
		if !strings.HasPrefix(r.RawPath, "/_matrix/app/v1/transactions/") {
			continue
		}
		var txn bridgeTxn
		require.NoError(t, json.Unmarshal(r.Body, &txn))
		txn.ID, txn.Auth = strings.TrimPrefix(r.RawPath, "/_matrix/app/v1/transactions/"), r.Auth
		out = append(out, txn)
	}
	return out
}

func eventsOf(txns []bridgeTxn) []string {
	var out []string
	for _, txn := range txns {
		for _, e := range txn.Events {
			out = append(out, e["event_id"].(string))
		}
	}
	return out
}

func memberEvent(eventID, sender, target, membership string) string {
	return `{"type":"m.room.member","event_id":"` + eventID + `","room_id":"!r:localhost","sender":"` + sender + `","state_key":"` + target +
		`","origin_server_ts":1,"content":{"membership":"` + membership + `"}}`
}

func messageEvent(eventID, sender, body string) string {
	return `{"type":"m.room.message","event_id":"` + eventID + `","room_id":"!r:localhost","sender":"` + sender +
		`","origin_server_ts":2,"content":{"msgtype":"m.text","body":"` + body + `"}}`
}

// What the homeserver sends the bridge's users reaches the bridge with the bridge's hs_token, in
// order and once: a bridge that fails gets the same transaction again, under the same ID, and a
// homeserver that repeats a transaction adds nothing. Events of rooms without the bridge's users
// are not the bridge's.
func TestTransactionsDeliveredInOrderOnce(t *testing.T) {
	h := newHarness(t)
	var mu sync.Mutex
	fail := 1
	h.bridge.setAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) {
		mu.Lock()
		defer mu.Unlock()
		if fail > 0 {
			fail--
			answerJSON(http.StatusServiceUnavailable, `{"errcode":"M_UNKNOWN"}`)(w, r, body)
			return
		}
		answerJSON(http.StatusOK, `{}`)(w, r, body)
	})
	h.run(t)
	txn := `{"events":[` + memberEvent("$join", "@irc_alice:localhost", "@irc_alice:localhost", "join") + `,` +
		messageEvent("$m1", "@alice:localhost", "one") + `,` + messageEvent("$m2", "@alice:localhost", "two") + `]}`
	resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/100", heirloomHS, txn)
	require.Equal(t, http.StatusOK, resp.status)
	// The homeserver retries (it timed out waiting for the answer).
	resp = h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/100", heirloomHS, txn)
	require.Equal(t, http.StatusOK, resp.status)
	other := `{"events":[{"type":"m.room.message","event_id":"$elsewhere","room_id":"!other:localhost","sender":"@alice:localhost","origin_server_ts":3,"content":{"msgtype":"m.text","body":"x"}}]}`
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/101", heirloomHS, other).status)
	more := `{"events":[` + messageEvent("$m3", "@alice:localhost", "three") + `]}`
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/102", heirloomHS, more).status)

	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.GreaterOrEqual(c, len(eventsOf(bridgeTxns(c, h.bridge))), 6)
	}, 15*time.Second, 50*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	txns := bridgeTxns(t, h.bridge)
	require.Equal(t, txns[0].ID, txns[1].ID, "the failed transaction is retried under its ID")
	require.Equal(t, eventsOf(txns[:1]), eventsOf(txns[1:2]), "with the same events")
	require.Equal(t, []string{"$join", "$m1", "$m2", "$m3"}, eventsOf(txns[1:]), "in order, once, and only the bridge's rooms")
	for _, txn := range txns {
		require.Equal(t, "Bearer "+bridgeHS, txn.Auth)
	}
	depth := 0
	require.Eventually(t, func() bool {
		var err error
		depth, err = h.db.CountGatewayEvents(context.Background())
		return err == nil && depth == 0
	}, 5*time.Second, 50*time.Millisecond, "the outbox empties once the bridge acknowledged")
}

// encryptedRoomState answers the room's state as an encrypted room's, and every other call with
// answer.
func encryptedRoomState(room string, answer func(w http.ResponseWriter, r *http.Request, body []byte)) func(w http.ResponseWriter, r *http.Request, body []byte) {
	return func(w http.ResponseWriter, r *http.Request, body []byte) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/state") {
			answerJSON(http.StatusOK, `[{"type":"m.room.create","state_key":"","sender":"@alice:localhost","event_id":"$create","room_id":"`+room+`","origin_server_ts":1,"content":{"room_version":"10"}},`+
				`{"type":"m.room.encryption","state_key":"","sender":"@alice:localhost","event_id":"$enc","room_id":"`+room+`","origin_server_ts":1,"content":{"algorithm":"m.megolm.v1.aes-sha2"}}]`)(w, r, body)
			return
		}
		answer(w, r, body)
	}
}

// In an encrypted room, what heirloom cannot or must not encrypt goes to the homeserver as the
// bridge sent it: an event the bridge encrypted itself (with one warning in the log, however many
// there are), and content that is not JSON, which the homeserver refuses with its own error.
func TestSendPassesThroughWhatItMustNotEncrypt(t *testing.T) {
	h := newHarness(t)
	const room = "!secret:localhost"
	h.hs.setAnswer(encryptedRoomState(room, func(w http.ResponseWriter, r *http.Request, body []byte) {
		if !json.Valid(body) {
			answerJSON(http.StatusBadRequest, `{"errcode":"M_NOT_JSON","error":"Content not JSON."}`)(w, r, body)
			return
		}
		answerJSON(http.StatusOK, `{"event_id":"$theirs"}`)(w, r, body)
	}))
	ciphertext := `{"algorithm":"m.megolm.v1.aes-sha2","ciphertext":"AwgA","sender_key":"k","session_id":"s","device_id":"D"}`
	for _, txnID := range []string{"e1", "e2"} {
		resp := h.do(t, http.MethodPut, "/_matrix/client/v3/rooms/"+room+"/send/m.room.encrypted/"+txnID+"?user_id=@irc_alice:localhost", bridgeAS, ciphertext)
		require.Equal(t, http.StatusOK, resp.status)
		got := h.hs.seen()
		require.JSONEq(t, ciphertext, string(got[len(got)-1].Body), "forwarded untouched")
	}
	require.Equal(t, 1, strings.Count(h.logs.String(), "sends m.room.encrypted events itself"), "warned once")

	resp := h.do(t, http.MethodPut, "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/bad?user_id=@irc_alice:localhost", bridgeAS, `{"msgtype":`)
	require.Equal(t, http.StatusBadRequest, resp.status)
	require.Equal(t, "M_NOT_JSON", resp.errcode(t), "the homeserver's own error")
}

// With gateway.encrypt_new_rooms off (the default) the bridge's createRoom is forwarded as it is;
// the rest of this behaviour is covered end to end.
func TestCreateRoomUntouchedByDefault(t *testing.T) {
	h := newHarness(t)
	h.hs.setAnswer(answerJSON(http.StatusOK, `{"room_id":"!new:localhost"}`))
	body := `{"preset":"private_chat","name":"#chan","com.beeper.auto_join_invites":true}`
	resp := h.do(t, http.MethodPost, "/_matrix/client/v3/createRoom?user_id=@testbot:localhost", bridgeAS, body)
	require.Equal(t, http.StatusOK, resp.status)
	got := h.hs.seen()
	require.JSONEq(t, body, string(got[0].Body))
}

// A bridge that is back (it calls heirloom's client-server API, as every bridge does when it
// starts) gets what waits for it at once, not after the rest of its backoff. The backoff follows
// the database's clock: no retry comes before the clock says it is due.
func TestBridgeCallEndsTheDeliveryBackoff(t *testing.T) {
	h := newHarness(t)
	clock := useFakeClock(h)
	var mu sync.Mutex
	fails := 3
	h.bridge.setAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) {
		mu.Lock()
		defer mu.Unlock()
		if fails > 0 {
			fails--
			answerJSON(http.StatusServiceUnavailable, `{"errcode":"M_UNKNOWN"}`)(w, r, body)
			return
		}
		answerJSON(http.StatusOK, `{}`)(w, r, body)
	})
	h.run(t)
	txn := `{"events":[` + memberEvent("$join", "@irc_alice:localhost", "@irc_alice:localhost", "join") + `]}`
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS, txn).status)
	tries := func(t require.TestingT) int { return len(bridgeTxns(t, h.bridge)) }
	require.EventuallyWithT(t, func(c *assert.CollectT) { require.Equal(c, 1, tries(c)) }, 5*time.Second, 10*time.Millisecond)
	// Three failures: retried after 1 s, then 2 s, of the clock, and not before.
	for i, backoff := range []time.Duration{time.Second, 2 * time.Second} {
		time.Sleep(600 * time.Millisecond)
		require.Equal(t, i+1, tries(t), "no retry before the backoff's %s passed on the clock", backoff)
		clock.Advance(backoff)
		require.EventuallyWithT(t, func(c *assert.CollectT) { require.Equal(c, i+2, tries(c)) }, 5*time.Second, 10*time.Millisecond)
	}
	var status struct {
		Gateway *server.GatewayStatus `json:"gateway"`
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		resp := h.do(t, http.MethodGet, "/_heirloom/v1/status", "api-secret-0123456789abcdef", "")
		require.Equal(c, http.StatusOK, resp.status, "%s", resp.body)
		require.NoError(c, json.Unmarshal(resp.body, &status))
		require.NotNil(c, status.Gateway)
		require.Equal(c, 3, status.Gateway.Attempts)
	}, 5*time.Second, 20*time.Millisecond)
	require.True(t, status.Gateway.DeliveryFailing, "what an operator reads in GET /status: %+v", status.Gateway)
	require.Equal(t, 1, status.Gateway.OutboxEvents)
	require.Equal(t, "the bridge answered 503", status.Gateway.LastError)
	require.Empty(t, status.Gateway.DeadLetters, "a bridge that is down refuses no event")
	// The bridge calls: it is tried again within a second of the clock, not after the 4 s backoff.
	h.do(t, http.MethodGet, "/_matrix/client/v3/account/whoami", bridgeAS, "")
	clock.Advance(time.Second)
	require.EventuallyWithT(t, func(c *assert.CollectT) { require.Equal(c, 4, tries(c)) }, 5*time.Second, 10*time.Millisecond,
		"delivered when the bridge called, not 4 s later")
	require.Equal(t, []string{"$join"}, eventsOf(bridgeTxns(t, h.bridge)[3:]))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		resp := h.do(t, http.MethodGet, "/_heirloom/v1/status", "api-secret-0123456789abcdef", "")
		status.Gateway = nil
		require.NoError(c, json.Unmarshal(resp.body, &status))
		require.NotNil(c, status.Gateway)
		require.False(c, status.Gateway.DeliveryFailing)
		require.Zero(c, status.Gateway.OutboxEvents)
		require.Zero(c, status.Gateway.Attempts)
	}, 5*time.Second, 20*time.Millisecond, "delivered: nothing waits, nothing fails")
}

// An encrypted attachment heirloom hands out decrypted is served to the bridge only if the
// ciphertext the homeserver returns is the one the event names (its SHA-256): a swapped file is
// refused before a byte of plaintext goes out.
func TestDecryptedMediaChecksTheHash(t *testing.T) {
	h := newHarness(t)
	plaintext := []byte("a picture, honestly " + strings.Repeat("x", 1000))
	file := attachment.NewEncryptedFile()
	ciphertext := append([]byte(nil), plaintext...)
	file.EncryptInPlace(ciphertext)
	var served atomic.Value
	served.Store(ciphertext)
	h.hs.setAnswer(func(w http.ResponseWriter, r *http.Request, _ []byte) {
		if strings.Contains(r.URL.Path, "/download/localhost/cipher") {
			w.Header().Set("Content-Type", "application/octet-stream")
			_, _ = w.Write(served.Load().([]byte))
			return
		}
		answerJSON(http.StatusNotFound, `{"errcode":"M_NOT_FOUND"}`)(w, r, nil)
	})
	info := event.EncryptedFileInfo{EncryptedFile: *file, URL: "mxc://localhost/cipher"}
	raw, err := json.Marshal(map[string]any{"msgtype": "m.image", "body": "pic.png", "file": info})
	require.NoError(t, err)
	var content map[string]any
	require.NoError(t, json.Unmarshal(raw, &content))
	require.NoError(t, h.gw.ExposeMedia(context.Background(), content))
	uri, _ := content["url"].(string)
	require.True(t, strings.HasPrefix(uri, "mxc://localhost/heirloom_"), "content after: %v", content)
	require.NotContains(t, content, "file")
	mediaID := strings.TrimPrefix(uri, "mxc://localhost/")

	resp := h.do(t, http.MethodGet, "/_matrix/client/v1/media/download/localhost/"+mediaID+"/pic.png?user_id=@irc_alice:localhost", bridgeAS, "")
	require.Equal(t, http.StatusOK, resp.status)
	require.Equal(t, plaintext, resp.body)

	tampered := append([]byte(nil), ciphertext...)
	tampered[10] ^= 0xff
	served.Store(tampered)
	resp = h.do(t, http.MethodGet, "/_matrix/media/v3/download/localhost/"+mediaID+"?user_id=@irc_alice:localhost", bridgeAS, "")
	require.Equal(t, http.StatusBadGateway, resp.status)
	require.Equal(t, "M_UNKNOWN", resp.errcode(t))
	require.NotContains(t, string(resp.body), "picture")

	// Media heirloom did not hand out is the homeserver's.
	resp = h.do(t, http.MethodGet, "/_matrix/client/v1/media/download/localhost/heirloom_unknown", bridgeAS, "")
	require.Equal(t, http.StatusNotFound, resp.status)
}

// remoteSender is a sender's megolm session outside heirloom: it encrypts room events that a
// bridge user can read only once it holds the session's key.
type remoteSender struct {
	ogs       *crypto.OutboundGroupSession
	senderKey id.SenderKey
	signing   id.Ed25519
	sessKey   string
}

func newRemoteSender(t *testing.T, roomID id.RoomID) *remoteSender {
	ogs, err := crypto.NewOutboundGroupSession(roomID, nil, nil)
	require.NoError(t, err)
	ogs.Shared = true
	curve := make([]byte, 32)
	_, _ = rand.Read(curve)
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	return &remoteSender{ogs: ogs, senderKey: id.SenderKey(base64.RawStdEncoding.EncodeToString(curve)),
		signing: id.Ed25519(base64.RawStdEncoding.EncodeToString(pub)), sessKey: ogs.Internal.Key()}
}

// event returns an m.room.encrypted event of the session, as the homeserver pushes it.
func (s *remoteSender) event(t *testing.T, eventID string, roomID id.RoomID, body string) string {
	plain, err := json.Marshal(map[string]any{"type": "m.room.message", "room_id": roomID,
		"content": map[string]any{"msgtype": "m.text", "body": body}})
	require.NoError(t, err)
	ciphertext, err := s.ogs.Encrypt(plain)
	require.NoError(t, err)
	content, err := json.Marshal(map[string]any{"algorithm": id.AlgorithmMegolmV1, "ciphertext": string(ciphertext),
		"sender_key": s.senderKey, "device_id": "REMOTE", "session_id": s.ogs.ID()})
	require.NoError(t, err)
	return `{"type":"m.room.encrypted","event_id":"` + eventID + `","room_id":"` + string(roomID) + `","sender":"@alice:localhost",` +
		`"origin_server_ts":5,"content":` + string(content) + `}`
}

// giveKey stores the session's key for the bridge user, as a room key over Olm would.
func (s *remoteSender) giveKey(t *testing.T, p *e2ee.Puppet, roomID id.RoomID) {
	shared := true
	igs, err := crypto.NewInboundGroupSession(s.senderKey, s.signing, roomID, s.sessKey, 0, 0, &shared, false)
	require.NoError(t, err)
	igs.SourceUser = "@alice:localhost"
	stored, reason, err := p.StoreSession(context.Background(), igs)
	require.NoError(t, err)
	require.True(t, stored, reason)
}

func deliveredEvents(t require.TestingT, p *peer) []map[string]any {
	var out []map[string]any
	for _, txn := range bridgeTxns(t, p) {
		out = append(out, txn.Events...)
	}
	return out
}

// An encrypted event whose key has not arrived holds back its own room only. When the key
// arrives within gateway.decrypt_wait, the event goes on decrypted, in its place; when it arrives
// later, the event has gone on encrypted and its decrypted copy follows, with the same ID.
func TestLateKeysHoldBackOnlyTheirRoom(t *testing.T) {
	h := newHarness(t)
	p := h.newReader(t)
	h.run(t)
	roomX, roomY := id.RoomID("!x:localhost"), id.RoomID("!y:localhost")
	plain := func(eventID string, room id.RoomID, body string) string {
		return strings.Replace(messageEvent(eventID, "@alice:localhost", body), "!r:localhost", string(room), 1)
	}
	sender := newRemoteSender(t, roomX)
	txn := `{"events":[` + readerJoins("$jx", roomX) + `,` + readerJoins("$jy", roomY) + `,` + sender.event(t, "$secret1", roomX, "first secret") + `,` +
		plain("$afterX", roomX, "after the secret") + `,` + plain("$inY", roomY, "room Y goes on") + `]}`
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS, txn).status)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.True(c, slices.ContainsFunc(deliveredEvents(c, h.bridge), func(ev map[string]any) bool { return ev["event_id"] == "$inY" }))
	}, 5*time.Second, 20*time.Millisecond, "room Y is not held back")
	for _, ev := range deliveredEvents(t, h.bridge) {
		require.NotEqual(t, "$afterX", ev["event_id"], "room X waits for its key")
		require.NotEqual(t, "$secret1", ev["event_id"])
	}
	sender.giveKey(t, p, roomX)
	var order []string
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		order = nil
		for _, ev := range deliveredEvents(c, h.bridge) {
			if ev["room_id"] == string(roomX) && ev["type"] != "m.room.member" {
				order = append(order, ev["event_id"].(string))
			}
		}
		require.Len(c, order, 2)
	}, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, []string{"$secret1", "$afterX"}, order, "decrypted, in its place")
	for _, ev := range deliveredEvents(t, h.bridge) {
		if ev["event_id"] == "$secret1" {
			require.Equal(t, "m.room.message", ev["type"])
			require.Equal(t, "first secret", ev["content"].(map[string]any)["body"])
			enc := ev["unsigned"].(map[string]any)[gateway.EncryptionKey].(map[string]any)
			require.Equal(t, string(sender.ogs.ID()), enc["session_id"])
		}
	}

	// A second session whose key comes after decrypt_wait (1 s here).
	late := newRemoteSender(t, roomX)
	txn = `{"events":[` + late.event(t, "$secret2", roomX, "second secret") + `]}`
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/2", heirloomHS, txn).status)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		delivered := deliveredEvents(c, h.bridge)
		i := slices.IndexFunc(delivered, func(ev map[string]any) bool { return ev["event_id"] == "$secret2" })
		require.GreaterOrEqual(c, i, 0, "$secret2 not delivered yet")
		require.Equal(c, "m.room.encrypted", delivered[i]["type"])
	}, 5*time.Second, 20*time.Millisecond, "after the wait, the event goes on encrypted")
	late.giveKey(t, p, roomX)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		copies := 0
		for _, ev := range deliveredEvents(c, h.bridge) {
			if ev["event_id"] == "$secret2" && ev["type"] == "m.room.message" {
				copies++
			}
		}
		require.Equal(c, 1, copies)
	}, 5*time.Second, 20*time.Millisecond, "the decrypted copy follows, with the same ID")
}

// heirloom's token, which the homeserver sees on every forwarded call, covers heirloom's own
// puppets and bot: the bridge may register as its own users only (and log in as none:
// TestAppserviceLoginRefused).
func TestBridgeRegistersAndLogsInOnlyItsOwnUsers(t *testing.T) {
	h := newHarness(t)
	h.hs.setAnswer(answerJSON(http.StatusOK, `{"user_id":"@whoever:localhost"}`))
	for _, tc := range []struct {
		name, path, body string
		allowed          bool
	}{
		{"register a ghost", "/_matrix/client/v3/register", `{"type":"m.login.application_service","username":"irc_alice","inhibit_login":true}`, true},
		{"register the bot", "/_matrix/client/v3/register?kind=user", `{"type":"m.login.application_service","username":"testbot","inhibit_login":true}`, true},
		{"register a puppet", "/_matrix/client/v3/register", `{"type":"m.login.application_service","username":"heirloom_bob"}`, false},
		{"register heirloom's bot", "/_matrix/client/r0/register", `{"type":"m.login.application_service","username":"heirloombot"}`, false},
		{"register someone", "/_matrix/client/v3/register", `{"type":"m.login.application_service","username":"alice"}`, false},
		{"log in as a puppet", "/_matrix/client/v3/login", `{"type":"m.login.application_service","identifier":{"type":"m.id.user","user":"heirloom_bob"}}`, false},
		{"log in as heirloom's bot (legacy user)", "/_matrix/client/v3/login", `{"type":"m.login.application_service","user":"@heirloombot:localhost"}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(h.hs.seen())
			resp := h.do(t, http.MethodPost, tc.path, bridgeAS, tc.body)
			if tc.allowed {
				require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
				require.Len(t, h.hs.seen(), before+1)
				require.JSONEq(t, tc.body, string(h.hs.seen()[before].Body), "forwarded as it was")
			} else {
				require.Equal(t, http.StatusForbidden, resp.status)
				require.Equal(t, "M_EXCLUSIVE", resp.errcode(t))
				require.Len(t, h.hs.seen(), before, "never reached the homeserver")
			}
		})
	}
}
