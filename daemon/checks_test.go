package daemon

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/config"
)

// testConfig is the example config with the placeholders an admin edits filled in, pointing at
// homeserver, loaded as heirloom loads it.
func testConfig(t *testing.T, homeserver string) (*config.Config, string) {
	t.Helper()
	example, err := os.ReadFile("../config.example.yaml")
	require.NoError(t, err)
	data := strings.Replace(string(example), "https://matrix.example.com", homeserver, 1)
	data = strings.Replace(data, "domain: example.com", "domain: localhost", 1)
	path := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(path, []byte(data), 0o600))
	cfg, err := config.Load(path)
	require.NoError(t, err)
	return cfg, path
}

// pingAnswer is how the homeserver answers a ping: the status and the body Synapse sends.
type pingAnswer struct {
	status int
	body   map[string]any
}

// pingingHomeserver answers the appservice ping with the answers in turn (the last one repeats),
// and /versions with versions.
func pingingHomeserver(t *testing.T, versions int, answers ...pingAnswer) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var pings atomic.Int32
	var mu sync.Mutex
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/_matrix/client/versions":
			w.WriteHeader(versions)
			_, _ = w.Write([]byte(`{"versions":["v1.11"],"errcode":"M_UNKNOWN_TOKEN","error":"Invalid access token"}`))
		case strings.HasSuffix(r.URL.Path, "/ping") && r.Method == http.MethodPost:
			mu.Lock()
			n := int(pings.Add(1))
			answer := answers[min(n, len(answers))-1]
			mu.Unlock()
			w.WriteHeader(answer.status)
			_ = json.NewEncoder(w).Encode(answer.body)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	t.Cleanup(hs.Close)
	return hs, &pings
}

var pingOK = pingAnswer{http.StatusOK, map[string]any{"duration_ms": 12}}

func badStatus(status int) pingAnswer {
	return pingAnswer{http.StatusBadGateway, map[string]any{"errcode": "M_BAD_STATUS", "error": "Bad status", "status": status, "body": ""}}
}

var connectionFailed = pingAnswer{http.StatusBadGateway, map[string]any{"errcode": "M_CONNECTION_FAILED", "error": "Connection failed"}}

// The startup ping: accepted at once; retried while a load balancer routes to no process yet (the
// homeserver cannot connect, or gets 502, 503 or 504); and any other refusal explained to the
// operator at once, with what to check.
func TestRegistrationCheck(t *testing.T) {
	ctx := zerolog.Nop().WithContext(context.Background())
	for _, tc := range []struct {
		name    string
		answers []pingAnswer
		pings   int32
		explain string
	}{
		{"accepted", []pingAnswer{pingOK}, 1, ""},
		{"no route yet", []pingAnswer{connectionFailed, badStatus(http.StatusServiceUnavailable), badStatus(http.StatusBadGateway),
			badStatus(http.StatusGatewayTimeout), pingOK}, 5, ""},
		{"timeout, then routed", []pingAnswer{{http.StatusGatewayTimeout, map[string]any{"errcode": "M_CONNECTION_TIMEOUT"}}, pingOK}, 2, ""},
		{"hs_token refused", []pingAnswer{badStatus(http.StatusForbidden), pingOK}, 1, "does hs_token match the registration?"},
		{"as_token unknown", []pingAnswer{{http.StatusUnauthorized, map[string]any{"errcode": "M_UNKNOWN_TOKEN", "error": "Invalid token"}}},
			1, "the homeserver rejects appservice.as_token"},
		{"as_token of another appservice", []pingAnswer{{http.StatusForbidden, map[string]any{"errcode": "M_FORBIDDEN"}}},
			1, "the homeserver rejects appservice.as_token"},
		{"no url", []pingAnswer{{http.StatusBadRequest, map[string]any{"errcode": "M_URL_NOT_SET"}}}, 1, "the registration has no url"},
		{"anything else", []pingAnswer{{http.StatusInternalServerError, map[string]any{"errcode": "M_UNKNOWN"}}}, 1, "appservice ping failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs, pings := pingingHomeserver(t, http.StatusOK, tc.answers...)
			cfg, _ := testConfig(t, hs.URL)
			cli, err := checkClient(cfg)
			require.NoError(t, err)
			err = checkRegistration(ctx, cli, cfg)
			require.Equal(t, tc.pings, pings.Load(), "pings")
			if tc.explain == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.explain)
		})
	}
}

// A homeserver that cannot reach heirloom at all (no load balancer in between) is named with the
// address the operator configured.
func TestUnreachableAppserviceIsExplained(t *testing.T) {
	hs, _ := pingingHomeserver(t, http.StatusOK, connectionFailed)
	cfg, _ := testConfig(t, hs.URL)
	cli, err := checkClient(cfg)
	require.NoError(t, err)
	_, err = cli.AppservicePing(context.Background(), cfg.RegisteredID(), "t")
	require.Error(t, err)
	require.True(t, balancerNotReady(err), "retried first: a load balancer may not route yet")
	require.ErrorContains(t, explainPing(err, cfg), "the homeserver cannot reach heirloom at appservice.address "+cfg.AppService.Address)
	require.False(t, balancerNotReady(context.DeadlineExceeded), "no answer from the homeserver is no balancer's")
}

// A stopped heirloom stops waiting for the homeserver to route to it.
func TestRegistrationCheckEndsWithTheProcess(t *testing.T) {
	hs, _ := pingingHomeserver(t, http.StatusOK, connectionFailed)
	cfg, _ := testConfig(t, hs.URL)
	cli, err := checkClient(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(zerolog.Nop().WithContext(context.Background()), 100*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, checkRegistration(ctx, cli, cfg), context.DeadlineExceeded)
}

// Any HTTP answer from /versions means the homeserver is up, even an error (an as_token it has
// not loaded is for the ping to explain); a homeserver not listening yet is tried again.
func TestHomeserverReachable(t *testing.T) {
	ctx := zerolog.Nop().WithContext(context.Background())
	t.Run("error answer", func(t *testing.T) {
		hs, _ := pingingHomeserver(t, http.StatusUnauthorized, pingOK)
		cfg, _ := testConfig(t, hs.URL)
		cli, err := checkClient(cfg)
		require.NoError(t, err)
		require.NoError(t, checkHomeserverReachable(ctx, cli, cfg))
	})
	t.Run("not listening, then up", func(t *testing.T) {
		// A port nothing listens on: take one, then close it.
		closed := httptest.NewServer(http.NotFoundHandler())
		addr := closed.Listener.Addr().String()
		closed.Close()
		cfg, _ := testConfig(t, "http://"+addr)
		cli, err := checkClient(cfg)
		require.NoError(t, err)

		// The homeserver starts listening on it a moment later.
		up := make(chan *httptest.Server, 1)
		time.AfterFunc(500*time.Millisecond, func() {
			l, err := net.Listen("tcp", addr)
			if err != nil {
				up <- nil
				return
			}
			hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				_, _ = w.Write([]byte(`{"versions":["v1.11"]}`))
			}))
			hs.Listener = l
			hs.Start()
			up <- hs
		})
		start := time.Now()
		require.NoError(t, checkHomeserverReachable(ctx, cli, cfg))
		require.GreaterOrEqual(t, time.Since(start), 2*time.Second, "retried after a pause")
		hs := <-up
		require.NotNil(t, hs, "the port was taken meanwhile")
		hs.Close()

		stopped, cancel := context.WithCancel(ctx)
		cancel()
		require.ErrorIs(t, checkHomeserverReachable(stopped, cli, cfg), context.Canceled)
	})
}
