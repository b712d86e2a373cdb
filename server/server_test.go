package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/history"
	"github.com/heirloom-matrix/heirloom/server"
)

const (
	hsToken      = "hs-token-0123456789abcdef"
	asToken      = "as-token-0123456789abcdef"
	sharedSecret = "api-secret-0123456789abcdef"
	puppet       = id.UserID("@heirloom_bob:localhost")
)

type harness struct {
	handler http.Handler
	srv     *server.Server
	db      *database.Database
	cfg     *config.Config
	// asked lists the requests the homeserver got ("METHOD path?query").
	asked *requestLog
}

// requestLog is the list of requests a test homeserver got.
type requestLog struct {
	lock     sync.Mutex
	requests []string
}

func (l *requestLog) add(r *http.Request) {
	l.lock.Lock()
	defer l.lock.Unlock()
	l.requests = append(l.requests, r.Method+" "+r.URL.RequestURI())
}

// matching returns the requests that contain every one of parts.
func (l *requestLog) matching(parts ...string) []string {
	l.lock.Lock()
	defer l.lock.Unlock()
	var out []string
	for _, r := range l.requests {
		if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(r, p) }) {
			out = append(out, r)
		}
	}
	return out
}

// newHarness builds the real server over a real SQLite database, with a homeserver that knows
// nothing (every request answers 404).
func newHarness(t *testing.T) *harness {
	t.Helper()
	asked := &requestLog{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.add(r)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`)
	}))
	t.Cleanup(hs.Close)
	cfg := &config.Config{
		Homeserver: config.Homeserver{Address: hs.URL, Domain: "localhost"},
		AppService: config.AppService{
			Address: "http://127.0.0.1:29400", Hostname: "127.0.0.1", Port: 29400, ID: "heirloom",
			BotUsername: "heirloombot", PuppetPrefix: "heirloom_", ASToken: asToken, HSToken: hsToken,
		},
		Database: config.Database{
			Type: "sqlite3-fk-wal", URI: "file:" + filepath.Join(t.TempDir(), "t.db") + "?_txlock=immediate", MaxOpenConns: 5, MaxIdleConns: 1,
		},
		Encryption:     config.Encryption{PickleKey: "pickle-key-0123456789abcdef"},
		Provisioning:   config.Provisioning{SharedSecret: sharedSecret},
		HistorySharing: config.HistorySharing{ShareOnInvite: true, AcceptWindow: 24 * time.Hour, MaxBundleSize: 1 << 20},
		Logging:        config.Logging{Level: "info", Format: "json"},
	}
	require.NoError(t, cfg.Validate())
	db, err := database.Open(cfg.Database, zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	require.NoError(t, db.Upgrade(context.Background()))
	e2ee.RegisterContentTypes()
	mgr, err := e2ee.NewManager(cfg, db, http.DefaultClient, zerolog.Nop())
	require.NoError(t, err)
	sharing := history.NewService(cfg, db, mgr)
	mgr.OnRoomKeyBundle = sharing.ReceiveBundle
	s := server.NewServer(cfg, db, mgr, sharing, zerolog.Nop())
	return &harness{handler: s.Handler(), srv: s, db: db, cfg: cfg, asked: asked}
}

// provision stores a ready puppet as provisioning would leave it, without a homeserver.
func (h *harness) provision(t *testing.T, userID id.UserID) {
	t.Helper()
	require.NoError(t, h.db.PutPuppet(context.Background(), &database.Puppet{UserID: userID, DeviceID: "BOBDEV", Ready: true}))
}

type response struct {
	status int
	body   []byte
}

func (r response) matrixError(t *testing.T) (errcode, message string) {
	t.Helper()
	var body struct {
		ErrCode string `json:"errcode"`
		Error   string `json:"error"`
	}
	require.NoError(t, json.Unmarshal(r.body, &body), "error body: %s", r.body)
	return body.ErrCode, body.Error
}

func (h *harness) do(t *testing.T, method, path, auth string, body io.Reader) response {
	t.Helper()
	req := httptest.NewRequest(method, path, body)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	h.handler.ServeHTTP(rec, req)
	return response{status: rec.Code, body: rec.Body.Bytes()}
}

func (h *harness) processed(t *testing.T, txnID string) bool {
	t.Helper()
	var n int
	require.NoError(t, h.db.Raw.QueryRow(context.Background(), `SELECT COUNT(*) FROM heirloom_txn WHERE txn_id=$1`, txnID).Scan(&n))
	return n > 0
}

func (h *harness) metric(t *testing.T, line string) bool {
	t.Helper()
	resp := h.do(t, http.MethodGet, "/metrics", "", nil)
	require.Equal(t, http.StatusOK, resp.status)
	for _, l := range strings.Split(string(resp.body), "\n") {
		if l == line {
			return true
		}
	}
	return false
}

const emptyTxn = `{"events":[],"ephemeral":[],"to_device":[]}`

func TestTransactionAuth(t *testing.T) {
	for _, tc := range []struct {
		name, path, auth string
		wantStatus       int
	}{
		{"bearer token", "/_matrix/app/v1/transactions/t1", "Bearer " + hsToken, http.StatusOK},
		{"legacy path", "/transactions/t1", "Bearer " + hsToken, http.StatusOK},
		{"access_token query parameter", "/_matrix/app/v1/transactions/t1?access_token=" + hsToken, "", http.StatusOK},
		{"no token", "/_matrix/app/v1/transactions/t1", "", http.StatusForbidden},
		{"wrong token", "/_matrix/app/v1/transactions/t1", "Bearer not-the-hs-token", http.StatusForbidden},
		{"the as_token", "/_matrix/app/v1/transactions/t1", "Bearer " + asToken, http.StatusForbidden},
		{"the API secret", "/_matrix/app/v1/transactions/t1", "Bearer " + sharedSecret, http.StatusForbidden},
		{"token as a prefix", "/_matrix/app/v1/transactions/t1", "Bearer " + hsToken[:len(hsToken)-1], http.StatusForbidden},
		{"wrong query token", "/_matrix/app/v1/transactions/t1?access_token=nope", "", http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			resp := h.do(t, http.MethodPut, tc.path, tc.auth, strings.NewReader(emptyTxn))
			require.Equal(t, tc.wantStatus, resp.status, "body: %s", resp.body)
			if tc.wantStatus == http.StatusOK {
				require.JSONEq(t, `{}`, string(resp.body))
				require.True(t, h.processed(t, "t1"), "an accepted transaction is recorded")
				return
			}
			errcode, _ := resp.matrixError(t)
			require.Equal(t, "M_FORBIDDEN", errcode)
			require.False(t, h.processed(t, "t1"), "a refused transaction must not be recorded as processed")
			require.True(t, h.metric(t, `heirloom_transactions_total{outcome="rejected"} 1`))
		})
	}
}

func historyVisibility(evtID, visibility string) string {
	return `{"type":"m.room.history_visibility","state_key":"","room_id":"!room:localhost","sender":"@a:localhost",` +
		`"event_id":"` + evtID + `","origin_server_ts":1,"content":{"history_visibility":"` + visibility + `"}}`
}

func (h *harness) rotateAfter(t *testing.T) time.Time {
	t.Helper()
	after, err := h.db.RotateAfter(context.Background(), "!room:localhost")
	require.NoError(t, err)
	return after
}

func TestTransactionProcessedOnce(t *testing.T) {
	h := newHarness(t)
	resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/txn-1", "Bearer "+hsToken,
		strings.NewReader(`{"events":[`+historyVisibility("$hv1", "shared")+`]}`))
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	require.True(t, h.rotateAfter(t).IsZero(), "the first visibility heirloom learns is no change")

	body := `{"events":[` + historyVisibility("$hv2", "joined") + `]}`
	for range 3 {
		resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/txn-42", "Bearer "+hsToken, strings.NewReader(body))
		require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
		require.JSONEq(t, `{}`, string(resp.body))
	}
	require.True(t, h.processed(t, "txn-42"))
	require.True(t, h.metric(t, `heirloom_transactions_total{outcome="processed"} 2`))
	require.True(t, h.metric(t, `heirloom_transactions_total{outcome="duplicate"} 2`))
	require.True(t, h.metric(t, `heirloom_events_total{section="events",type="m.room.history_visibility"} 2`), "each event was handled once")
	// The change was applied: the room's outbound sessions must rotate.
	require.False(t, h.rotateAfter(t).IsZero())
}

func TestTransactionVisibilityRotation(t *testing.T) {
	for _, tc := range []struct {
		from, to string
		rotate   bool
	}{
		{"shared", "joined", true},
		{"shared", "world_readable", true},
		{"joined", "invited", true},
		{"invited", "shared", true},
		{"shared", "shared", false},
	} {
		t.Run(tc.from+" to "+tc.to, func(t *testing.T) {
			h := newHarness(t)
			for i, visibility := range []string{tc.from, tc.to} {
				txnID := fmt.Sprint("t", i)
				resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/"+txnID, "Bearer "+hsToken,
					strings.NewReader(`{"events":[`+historyVisibility("$"+txnID, visibility)+`]}`))
				require.Equal(t, http.StatusOK, resp.status)
			}
			require.Equal(t, tc.rotate, !h.rotateAfter(t).IsZero())
		})
	}
}

func TestTransactionMembershipRotation(t *testing.T) {
	member := func(evtID, sender, target, membership string) string {
		return `{"type":"m.room.member","state_key":"` + target + `","room_id":"!room:localhost","sender":"` + sender +
			`","event_id":"` + evtID + `","origin_server_ts":1,"content":{"membership":"` + membership + `"}}`
	}
	for _, tc := range []struct {
		name   string
		event  string
		rotate bool
	}{
		{"member leaves", member("$1", "@a:localhost", "@a:localhost", "leave"), true},
		{"member kicked", member("$2", "@mod:localhost", "@a:localhost", "leave"), true},
		{"member banned", member("$3", "@mod:localhost", "@a:localhost", "ban"), true},
		{"member joins", member("$4", "@a:localhost", "@a:localhost", "join"), false},
		{"member invited", member("$5", "@mod:localhost", "@a:localhost", "invite"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/t", "Bearer "+hsToken, strings.NewReader(`{"events":[`+tc.event+`]}`))
			require.Equal(t, http.StatusOK, resp.status)
			require.Equal(t, tc.rotate, !h.rotateAfter(t).IsZero())
		})
	}
}

func TestTransactionMalformed(t *testing.T) {
	h := newHarness(t)
	resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/bad", "Bearer "+hsToken, strings.NewReader(`not json`))
	require.Equal(t, http.StatusBadRequest, resp.status)
	errcode, _ := resp.matrixError(t)
	require.Equal(t, "M_NOT_JSON", errcode)
	require.False(t, h.processed(t, "bad"))

	// Garbage inside a valid object is skipped, the rest processed, and the transaction done.
	resp = h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/partly", "Bearer "+hsToken,
		strings.NewReader(`{"events":[5,{"no":"type"}],"to_device":"x"}`))
	require.Equal(t, http.StatusOK, resp.status)
	require.True(t, h.processed(t, "partly"))
	require.True(t, h.metric(t, `heirloom_errors_total{where="transaction_parse"} 3`))
}

// spaces is an endless body of whitespace.
type spaces struct{}

func (spaces) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = ' '
	}
	return len(p), nil
}

func TestTransactionTooLarge(t *testing.T) {
	h := newHarness(t)
	body := io.MultiReader(strings.NewReader(`{"events":[]`), io.LimitReader(spaces{}, 64<<20), strings.NewReader(`}`))
	resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/huge", "Bearer "+hsToken, body)
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.status)
	errcode, _ := resp.matrixError(t)
	require.Equal(t, "M_TOO_LARGE", errcode)
	require.False(t, h.processed(t, "huge"))
}

func TestPingAndQueries(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		name, method, path, auth string
		wantStatus               int
		wantErrcode              string
	}{
		{"ping", http.MethodPost, "/_matrix/app/v1/ping", "Bearer " + hsToken, http.StatusOK, ""},
		{"ping with a wrong token", http.MethodPost, "/_matrix/app/v1/ping", "Bearer nope", http.StatusForbidden, "M_FORBIDDEN"},
		{"ping without a token", http.MethodPost, "/_matrix/app/v1/ping", "", http.StatusForbidden, "M_FORBIDDEN"},
		{"user query", http.MethodGet, "/_matrix/app/v1/users/@heirloom_x:localhost", "Bearer " + hsToken, http.StatusNotFound, "M_NOT_FOUND"},
		{"user query with a wrong token", http.MethodGet, "/_matrix/app/v1/users/@heirloom_x:localhost", "Bearer nope", http.StatusForbidden, "M_FORBIDDEN"},
		{"alias query", http.MethodGet, "/_matrix/app/v1/rooms/%23a:localhost", "Bearer " + hsToken, http.StatusNotFound, "M_NOT_FOUND"},
		{"alias query with a wrong token", http.MethodGet, "/_matrix/app/v1/rooms/%23a:localhost", "", http.StatusForbidden, "M_FORBIDDEN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := h.do(t, tc.method, tc.path, tc.auth, strings.NewReader(`{"transaction_id":"ping-1"}`))
			require.Equal(t, tc.wantStatus, resp.status, "body: %s", resp.body)
			if tc.wantErrcode == "" {
				require.JSONEq(t, `{}`, string(resp.body))
				return
			}
			errcode, _ := resp.matrixError(t)
			require.Equal(t, tc.wantErrcode, errcode)
		})
	}
}

func TestAPIAuth(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		name, auth  string
		wantStatus  int
		wantErrcode string
	}{
		{"no Authorization", "", http.StatusUnauthorized, "M_MISSING_TOKEN"},
		{"wrong secret", "Bearer wrong", http.StatusUnauthorized, "M_UNKNOWN_TOKEN"},
		{"not a bearer token", "Basic " + sharedSecret, http.StatusUnauthorized, "M_UNKNOWN_TOKEN"},
		{"the hs_token", "Bearer " + hsToken, http.StatusUnauthorized, "M_UNKNOWN_TOKEN"},
		{"the as_token", "Bearer " + asToken, http.StatusUnauthorized, "M_UNKNOWN_TOKEN"},
		{"right secret", "Bearer " + sharedSecret, http.StatusOK, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := h.do(t, http.MethodGet, "/_heirloom/v1/status", tc.auth, nil)
			require.Equal(t, tc.wantStatus, resp.status, "body: %s", resp.body)
			if tc.wantErrcode != "" {
				errcode, _ := resp.matrixError(t)
				require.Equal(t, tc.wantErrcode, errcode)
			}
		})
	}
	// Authentication comes before routing: an unknown endpoint does not answer strangers either.
	resp := h.do(t, http.MethodGet, "/_heirloom/v1/nope", "", nil)
	require.Equal(t, http.StatusUnauthorized, resp.status)
}

func TestAPIStatus(t *testing.T) {
	h := newHarness(t)
	h.provision(t, puppet)
	resp := h.do(t, http.MethodGet, "/_heirloom/v1/status", "Bearer "+sharedSecret, nil)
	require.Equal(t, http.StatusOK, resp.status)
	var status struct {
		Version             string `json:"version"`
		HomeserverReachable *bool  `json:"homeserver_reachable"`
		Puppets             *int   `json:"puppets"`
		HistorySharing      *bool  `json:"history_sharing_active"`
	}
	require.NoError(t, json.Unmarshal(resp.body, &status), "body: %s", resp.body)
	require.Equal(t, server.Version, status.Version)
	require.NotEmpty(t, status.Version)
	require.NotNil(t, status.Puppets)
	require.Equal(t, 1, *status.Puppets)
	require.NotNil(t, status.HomeserverReachable)
	require.False(t, *status.HomeserverReachable, "the test homeserver answers 404 to /versions")
	require.NotNil(t, status.HistorySharing)
	require.True(t, *status.HistorySharing, "history_sharing.share_on_invite is on in the harness")
	var more struct {
		Bundles        map[string]int    `json:"bundles"`
		DeviceProblems []json.RawMessage `json:"device_problems"`
		Bot            *json.RawMessage  `json:"bot"`
	}
	require.NoError(t, json.Unmarshal(resp.body, &more))
	require.Equal(t, map[string]int{"sending": 0, "send_failed": 0, "pending": 0, "retrying": 0, "failed": 0}, more.Bundles)
	require.NotNil(t, more.DeviceProblems, "device_problems is a list, empty when every device is in place")
	require.Empty(t, more.DeviceProblems)
	require.Nil(t, more.Bot, "no bot device is provisioned in the harness")

	// The bot is provisioned like a puppet, but not counted as one.
	require.NoError(t, h.db.PutPuppet(context.Background(), &database.Puppet{UserID: h.cfg.BotUserID(), DeviceID: "BOTDEV",
		MasterKey: "Qk9U", Ready: true}))
	resp = h.do(t, http.MethodGet, "/_heirloom/v1/status", "Bearer "+sharedSecret, nil)
	require.NoError(t, json.Unmarshal(resp.body, &status))
	require.Equal(t, 1, *status.Puppets)
	var withBot struct {
		Bot server.BotStatus `json:"bot"`
	}
	require.NoError(t, json.Unmarshal(resp.body, &withBot))
	require.Equal(t, server.BotStatus{UserID: h.cfg.BotUserID(), DeviceID: "BOTDEV", MasterKey: "Qk9U"}, withBot.Bot)
}

// Retrying a room where the puppet has no failed bundle retries nothing and says so.
func TestAPIRetryNothing(t *testing.T) {
	h := newHarness(t)
	h.provision(t, puppet)
	resp := h.do(t, http.MethodPost, "/_heirloom/v1/puppets/"+string(puppet)+"/rooms/!room:localhost/retry", "Bearer "+sharedSecret, strings.NewReader(`{}`))
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	require.JSONEq(t, `{"bundles":[]}`, string(resp.body))
}

func TestAPIErrors(t *testing.T) {
	const room = "/_heirloom/v1/puppets/" + string(puppet) + "/rooms/!room:localhost"
	for _, tc := range []struct {
		name, method, path, body string
		wantStatus               int
		wantErrcode              string
		wantMessage              string
	}{
		{"puppet outside the namespace", http.MethodPut, "/_heirloom/v1/puppets/@alice:localhost", ``,
			http.StatusBadRequest, "M_INVALID_PARAM", "puppet namespace (@heirloom_…:localhost)"},
		{"puppet on another server", http.MethodPut, "/_heirloom/v1/puppets/@heirloom_x:elsewhere", ``,
			http.StatusBadRequest, "M_INVALID_PARAM", "puppet namespace"},
		{"the prefix alone", http.MethodPut, "/_heirloom/v1/puppets/@heirloom_:localhost", ``,
			http.StatusBadRequest, "M_INVALID_PARAM", "puppet namespace"},
		{"not a user ID", http.MethodPut, "/_heirloom/v1/puppets/bob", ``,
			http.StatusBadRequest, "M_INVALID_PARAM", "not a valid user ID"},
		{"provision with a body that is not JSON", http.MethodPut, "/_heirloom/v1/puppets/@heirloom_new:localhost", `displayname=x`,
			http.StatusBadRequest, "M_NOT_JSON", "JSON object"},
		{"unprovisioned puppet", http.MethodPost, "/_heirloom/v1/puppets/@heirloom_ghost:localhost/rooms", `{}`,
			http.StatusNotFound, "M_NOT_FOUND", "not provisioned"},

		{"create room: not JSON", http.MethodPost, "/_heirloom/v1/puppets/" + string(puppet) + "/rooms", `name=x`,
			http.StatusBadRequest, "M_NOT_JSON", "JSON object"},
		{"create room: empty body", http.MethodPost, "/_heirloom/v1/puppets/" + string(puppet) + "/rooms", ``,
			http.StatusBadRequest, "M_NOT_JSON", "JSON object"},
		{"create room: array", http.MethodPost, "/_heirloom/v1/puppets/" + string(puppet) + "/rooms", `[]`,
			http.StatusBadRequest, "M_NOT_JSON", "JSON object"},
		{"create room: truncated", http.MethodPost, "/_heirloom/v1/puppets/" + string(puppet) + "/rooms", `{"name":`,
			http.StatusBadRequest, "M_BAD_JSON", "malformed JSON"},
		{"create room: wrong field type", http.MethodPost, "/_heirloom/v1/puppets/" + string(puppet) + "/rooms", `{"name":5}`,
			http.StatusBadRequest, "M_BAD_JSON", `"name"`},
		{"create room: bad visibility", http.MethodPost, "/_heirloom/v1/puppets/" + string(puppet) + "/rooms", `{"history_visibility":"everyone"}`,
			http.StatusBadRequest, "M_INVALID_PARAM", "history_visibility"},
		{"create room: bad invitee", http.MethodPost, "/_heirloom/v1/puppets/" + string(puppet) + "/rooms", `{"invite":["carol"]}`,
			http.StatusBadRequest, "M_INVALID_PARAM", "carol"},

		{"message: not JSON", http.MethodPost, room + "/messages", `hello`, http.StatusBadRequest, "M_NOT_JSON", "JSON object"},
		{"message: trailing garbage", http.MethodPost, room + "/messages", `{"msgtype":"m.text","body":"x"} {}`, http.StatusBadRequest, "M_BAD_JSON", ""},
		{"message: no msgtype", http.MethodPost, room + "/messages", `{"body":"x"}`, http.StatusBadRequest, "M_BAD_JSON", "msgtype"},
		{"message: body not a string", http.MethodPost, room + "/messages", `{"msgtype":"m.text","body":5}`, http.StatusBadRequest, "M_BAD_JSON", "body"},
		{"message: bad room ID", http.MethodPost, "/_heirloom/v1/puppets/" + string(puppet) + "/rooms/%23alias:localhost/messages", `{"msgtype":"m.text","body":"x"}`,
			http.StatusBadRequest, "M_INVALID_PARAM", "not a room ID"},
		{"messages: bad limit", http.MethodGet, room + "/messages?limit=0", ``, http.StatusBadRequest, "M_INVALID_PARAM", "limit"},

		{"invite: not JSON", http.MethodPost, room + "/invite", `@carol:localhost`, http.StatusBadRequest, "M_NOT_JSON", "JSON object"},
		{"invite: no user_id", http.MethodPost, room + "/invite", `{}`, http.StatusBadRequest, "M_BAD_JSON", "user_id"},
		{"invite: user_id not a string", http.MethodPost, room + "/invite", `{"user_id":5}`, http.StatusBadRequest, "M_BAD_JSON", "user_id"},
		{"invite: share_history not a boolean", http.MethodPost, room + "/invite", `{"user_id":"@carol:localhost","share_history":"yes"}`,
			http.StatusBadRequest, "M_BAD_JSON", "share_history"},
		{"invite: bad user_id", http.MethodPost, room + "/invite", `{"user_id":"carol"}`, http.StatusBadRequest, "M_INVALID_PARAM", "carol"},
		{"invite: itself", http.MethodPost, room + "/invite", `{"user_id":"` + string(puppet) + `"}`, http.StatusBadRequest, "M_INVALID_PARAM", "itself"},
		{"invite: the homeserver's error is kept", http.MethodPost, room + "/invite", `{"user_id":"@carol:localhost"}`,
			http.StatusNotFound, "M_UNRECOGNIZED", "homeserver"},

		{"reshare: not JSON", http.MethodPost, room + "/reshare", `@carol:localhost`, http.StatusBadRequest, "M_NOT_JSON", "JSON object"},
		{"reshare: no user_id", http.MethodPost, room + "/reshare", `{}`, http.StatusBadRequest, "M_BAD_JSON", "user_id"},
		{"reshare: bad user_id", http.MethodPost, room + "/reshare", `{"user_id":"carol"}`, http.StatusBadRequest, "M_INVALID_PARAM", "carol"},
		{"reshare: itself", http.MethodPost, room + "/reshare", `{"user_id":"` + string(puppet) + `"}`, http.StatusBadRequest, "M_INVALID_PARAM", "itself"},
		{"reshare: unprovisioned puppet", http.MethodPost, "/_heirloom/v1/puppets/@heirloom_ghost:localhost/rooms/!room:localhost/reshare",
			`{"user_id":"@carol:localhost"}`, http.StatusNotFound, "M_NOT_FOUND", "not provisioned"},
		{"reshare: the homeserver's error is kept", http.MethodPost, room + "/reshare", `{"user_id":"@carol:localhost"}`,
			http.StatusNotFound, "M_UNRECOGNIZED", "homeserver"},
		{"retry: bad room ID", http.MethodPost, "/_heirloom/v1/puppets/" + string(puppet) + "/rooms/room/retry", `{}`,
			http.StatusBadRequest, "M_INVALID_PARAM", "not a room ID"},
		{"retry: unprovisioned puppet", http.MethodPost, "/_heirloom/v1/puppets/@heirloom_ghost:localhost/rooms/!room:localhost/retry", `{}`,
			http.StatusNotFound, "M_NOT_FOUND", "not provisioned"},
		{"state: not JSON", http.MethodPut, room + "/state/m.room.topic", `topic`, http.StatusBadRequest, "M_NOT_JSON", "JSON object"},
		{"unknown endpoint", http.MethodGet, "/_heirloom/v1/nope", ``, http.StatusNotFound, "M_UNRECOGNIZED", ""},
		{"unknown endpoint under a puppet", http.MethodPost, "/_heirloom/v1/puppets/" + string(puppet) + "/teleport", `{}`,
			http.StatusNotFound, "M_UNRECOGNIZED", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.provision(t, puppet)
			resp := h.do(t, tc.method, tc.path, "Bearer "+sharedSecret, strings.NewReader(tc.body))
			require.Equal(t, tc.wantStatus, resp.status, "body: %s", resp.body)
			errcode, message := resp.matrixError(t)
			require.Equal(t, tc.wantErrcode, errcode, "message: %s", message)
			require.Contains(t, message, tc.wantMessage)
		})
	}
}

func TestAPIBodyTooLarge(t *testing.T) {
	big := func() io.Reader {
		return io.MultiReader(strings.NewReader(`{"msgtype":"m.text","body":"`), io.LimitReader(spaces{}, 1<<20), strings.NewReader(`"}`))
	}
	for _, tc := range []struct{ name, method, path string }{
		{"provision", http.MethodPut, "/_heirloom/v1/puppets/@heirloom_new:localhost"},
		{"message", http.MethodPost, "/_heirloom/v1/puppets/" + string(puppet) + "/rooms/!room:localhost/messages"},
		{"state", http.MethodPut, "/_heirloom/v1/puppets/" + string(puppet) + "/rooms/!room:localhost/state/m.room.topic"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.provision(t, puppet)
			resp := h.do(t, tc.method, tc.path, "Bearer "+sharedSecret, big())
			require.Equal(t, http.StatusRequestEntityTooLarge, resp.status, "body: %.200s", resp.body)
			errcode, _ := resp.matrixError(t)
			require.Equal(t, "M_TOO_LARGE", errcode)
		})
	}
	// A body of exactly the limit is read in full, then judged on its content.
	h := newHarness(t)
	resp := h.do(t, http.MethodPut, "/_heirloom/v1/puppets/@heirloom_new:localhost", "Bearer "+sharedSecret,
		bytes.NewReader(bytes.Repeat([]byte{' '}, 1<<20)))
	require.Equal(t, http.StatusBadRequest, resp.status, "body: %s", resp.body)
	errcode, _ := resp.matrixError(t)
	require.Equal(t, "M_NOT_JSON", errcode)
}

// Synapse on SQLite numbers its transactions from 1 again after a restart: a known ID with a new
// body is a new transaction and must be processed, not acknowledged as a duplicate.
func TestTransactionIDReusedAfterHomeserverRestart(t *testing.T) {
	h := newHarness(t)
	first := `{"events":[` + historyVisibility("$hv1", "shared") + `]}`
	resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", "Bearer "+hsToken, strings.NewReader(first))
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	reused := `{"events":[` + historyVisibility("$hv2", "joined") + `]}`
	resp = h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", "Bearer "+hsToken, strings.NewReader(reused))
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	require.True(t, h.metric(t, `heirloom_transactions_total{outcome="processed"} 2`))
	require.True(t, h.metric(t, `heirloom_events_total{section="events",type="m.room.history_visibility"} 2`))
	require.False(t, h.rotateAfter(t).IsZero(), "the second transaction's visibility change was applied")
}

// A repeated transaction means the homeserver held heirloom to be down, and Synapse drops the
// device-list changes of what it queued meanwhile: every tracked list must be fetched again.
func TestRepeatedTransactionMarksDeviceListsOutdated(t *testing.T) {
	h := newHarness(t)
	outdated := h.trackedList(t, "@alice:localhost")
	resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/txn-7", "Bearer "+hsToken, strings.NewReader(emptyTxn))
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	require.False(t, outdated(), "a transaction delivered once leaves a current list current")
	resp = h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/txn-7", "Bearer "+hsToken, strings.NewReader(emptyTxn))
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	require.True(t, outdated(), "after a repeated transaction the list is fetched again before the next share")

	// Synapse's retry of a transaction it queued carries only its events: same ID, another body.
	h.setCurrent(t, "@alice:localhost")
	withKeys := `{"events":[],"org.matrix.msc3202.device_one_time_keys_count":{"@heirloom_bob:localhost":{"BOBDEV":{"signed_curve25519":3}}}}`
	resp = h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/txn-8", "Bearer "+hsToken, strings.NewReader(withKeys))
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	require.False(t, outdated())
	resp = h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/txn-8", "Bearer "+hsToken, strings.NewReader(`{"events":[]}`))
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	require.True(t, outdated(), "the last transaction back with another body marks the lists outdated")

	// Synapse on SQLite numbers its transactions afresh after a restart: an older ID with a new
	// body is a new transaction, not a retry, and must not mark every list outdated each time.
	h.setCurrent(t, "@alice:localhost")
	resp = h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/txn-7", "Bearer "+hsToken, strings.NewReader(`{"events":[],"ephemeral":[]}`))
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	require.True(t, h.processed(t, "txn-7"))
	require.False(t, outdated(), "an older ID again is a renumbering homeserver, not a retry")
}

// Synapse also drops the to-device messages it queues while it holds heirloom down: once it sends
// again, the inboxes of the loaded puppets are swept (the sweep waits a moment for the rest of the
// homeserver's retries; the maintenance loop would sweep only on its timer).
func TestRepeatedTransactionSweepsTheInboxes(t *testing.T) {
	h := newHarness(t)
	h.provision(t, puppet)
	loads := `{"events":[],"org.matrix.msc3202.device_one_time_keys_count":{"` + string(puppet) + `":{"BOBDEV":{"signed_curve25519":50}}}}`
	resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/txn-1", "Bearer "+hsToken, strings.NewReader(loads))
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	syncs := func() []string {
		return h.asked.matching("GET /_matrix/client/v3/sync?", "user_id="+url.QueryEscape(string(puppet)))
	}
	time.Sleep(2500 * time.Millisecond)
	require.Empty(t, syncs(), "a transaction delivered once sweeps nothing")

	resp = h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/txn-1", "Bearer "+hsToken, strings.NewReader(loads))
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	require.Eventually(t, func() bool { return len(syncs()) > 0 }, 10*time.Second, 20*time.Millisecond,
		"the loaded puppet's inbox is swept after the homeserver repeated its last transaction")
}

// Synapse retries what it stored while it held heirloom down as transactions of room events only
// (none, for one that held only to-device messages or receipts), without the one-time key counts
// its live transactions carry for the appservice's sender. However heirloom was held down (here
// unreachable: it never saw a failure), the first retry marks the device lists outdated and sweeps
// the loaded puppets' inboxes, and so does the first live transaction after the retries (the
// homeserver dropped what it queued until then). Until a transaction counted the sender's keys
// (a sender with no device yet: counts of other users only), nothing is taken for a retry.
func TestStoredTransactionRetriesShowTheHoldDown(t *testing.T) {
	h := newHarness(t)
	h.provision(t, puppet)
	outdated := h.trackedList(t, "@alice:localhost")
	put := func(h *harness, txnID, body string) {
		t.Helper()
		resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/"+txnID, "Bearer "+hsToken, strings.NewReader(body))
		require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	}
	counts := func(users ...id.UserID) string {
		var parts []string
		for _, u := range users {
			parts = append(parts, `"`+string(u)+`":{"DEV":{"signed_curve25519":50}}`)
		}
		return `"org.matrix.msc3202.device_one_time_keys_count":{` + strings.Join(parts, ",") + `}`
	}
	bot := h.cfg.SenderUserID()
	live := func(evtID string, users ...id.UserID) string {
		return `{"events":[` + historyVisibility(evtID, "shared") + `],` + counts(users...) + `}`
	}
	stored := func(evtID string) string {
		return `{"events":[` + historyVisibility(evtID, "shared") + `],"ephemeral":[]}`
	}
	const storedEmpty = `{"events":[],"ephemeral":[],"de.sorunome.msc2409.ephemeral":[],"de.sorunome.msc2409.to_device":[]}`

	put(h, "40", live("$a0", puppet))
	put(h, "41", stored("$a1"))
	require.False(t, outdated(), "counts without the sender's: no retry told apart yet")
	put(h, "42", live("$a2", bot, puppet))
	require.False(t, outdated(), "a live transaction")
	put(h, "43", stored("$b"))
	require.True(t, outdated(), "the first retry of a stored transaction")
	h.setCurrent(t, "@alice:localhost")
	put(h, "44", stored("$c"))
	require.False(t, outdated(), "the retries that follow: once per hold-down")
	put(h, "45", live("$d", bot))
	require.True(t, outdated(), "the first live transaction after the retries")
	h.setCurrent(t, "@alice:localhost")
	put(h, "46", live("$e", bot))
	require.False(t, outdated(), "and not the next")
	put(h, "47", storedEmpty)
	require.True(t, outdated(), "the retry of a stored transaction that had no room event")
	require.Eventually(t, func() bool {
		return len(h.asked.matching("GET /_matrix/client/v3/sync?", "user_id="+url.QueryEscape(string(puppet)))) > 0
	}, 15*time.Second, 20*time.Millisecond, "the loaded puppet's inbox is swept")

	other := newHarness(t)
	outdated = other.trackedList(t, "@alice:localhost")
	for i := range 3 {
		put(other, fmt.Sprint(i), stored(fmt.Sprintf("$s%d", i)))
		put(other, fmt.Sprint(i)+"e", storedEmpty)
	}
	require.False(t, outdated(), "a homeserver that sends no counts: events alone are its every transaction")
}

// While heirloom answers transactions with an error the homeserver holds it down, and drops the
// device lists of what it queues: the lists are marked outdated when a transaction fails, and again
// at the first one taken after it (a fetch in between made them current from before the outage's end).
func TestFailedTransactionMarksDeviceListsOutdated(t *testing.T) {
	h := newHarness(t)
	outdated := h.trackedList(t, "@alice:localhost")
	ctx := context.Background()
	_, err := h.db.Raw.Exec(ctx, `ALTER TABLE heirloom_txn RENAME TO heirloom_txn_away`)
	require.NoError(t, err)
	resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/txn-9", "Bearer "+hsToken, strings.NewReader(emptyTxn))
	require.Equal(t, http.StatusInternalServerError, resp.status, "body: %s", resp.body)
	require.True(t, outdated(), "marked when the transaction fails")

	h.setCurrent(t, "@alice:localhost") // a send fetched the list during the outage
	_, err = h.db.Raw.Exec(ctx, `ALTER TABLE heirloom_txn_away RENAME TO heirloom_txn`)
	require.NoError(t, err)
	resp = h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/txn-10", "Bearer "+hsToken, strings.NewReader(emptyTxn))
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	require.True(t, outdated(), "marked again at the first transaction taken after the failure")
	h.setCurrent(t, "@alice:localhost")
	resp = h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/txn-11", "Bearer "+hsToken, strings.NewReader(emptyTxn))
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	require.False(t, outdated(), "and not after that")
}

// trackedList stores userID's device list as tracked and current, and returns a check of whether
// it is outdated.
func (h *harness) trackedList(t *testing.T, userID string) func() bool {
	t.Helper()
	ctx := context.Background()
	_, err := h.db.Raw.Exec(ctx, `INSERT INTO crypto_tracked_user (user_id, devices_outdated) VALUES ($1, false)`, userID)
	require.NoError(t, err)
	return func() bool {
		t.Helper()
		var v bool
		require.NoError(t, h.db.Raw.QueryRow(ctx, `SELECT devices_outdated FROM crypto_tracked_user WHERE user_id=$1`, userID).Scan(&v))
		return v
	}
}

// setCurrent marks a tracked user's device list current, as a fetch leaves it.
func (h *harness) setCurrent(t *testing.T, userID string) {
	t.Helper()
	_, err := h.db.Raw.Exec(context.Background(), `UPDATE crypto_tracked_user SET devices_outdated=false WHERE user_id=$1`, userID)
	require.NoError(t, err)
}
