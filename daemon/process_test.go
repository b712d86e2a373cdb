package daemon

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/server"
)

// freePort returns a port nothing listens on (taken, then given back).
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return port
}

// relayingHomeserver answers /versions and, for the appservice ping, pings heirloom's URL with
// hs_token as Synapse does, reporting heirloom's answer; everything else is unknown to it.
func relayingHomeserver(t *testing.T, cfg *config.Config, answered *atomic.Int32) *httptest.Server {
	t.Helper()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/_matrix/client/versions":
			_, _ = w.Write([]byte(`{"versions":["v1.11"]}`))
		case strings.HasSuffix(r.URL.Path, "/appservice/"+cfg.RegisteredID()+"/ping"):
			req, _ := http.NewRequestWithContext(r.Context(), http.MethodPost, cfg.AppService.Address+"/_matrix/app/v1/ping",
				bytes.NewReader([]byte(`{"transaction_id":"t"}`)))
			req.Header.Set("Authorization", "Bearer "+cfg.AppService.HSToken)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				w.WriteHeader(http.StatusBadGateway)
				_, _ = w.Write([]byte(`{"errcode":"M_CONNECTION_FAILED","error":"Connection failed"}`))
				return
			}
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				w.WriteHeader(http.StatusBadGateway)
				_, _ = fmt.Fprintf(w, `{"errcode":"M_BAD_STATUS","status":%d}`, resp.StatusCode)
				return
			}
			answered.Add(1)
			_, _ = w.Write([]byte(`{"duration_ms":1}`))
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`))
		}
	}))
	t.Cleanup(hs.Close)
	return hs
}

// A start on an SQLite database: heirloom takes the lease, upgrades the schema, listens, is
// reached by the homeserver's ping with its hs_token, and reports itself ready; on SIGTERM it
// stops with ExitOK and gives the lease back, so the next start may take it.
func TestProcessStartsAndStops(t *testing.T) {
	port := freePort(t)
	cfg, _ := testConfig(t, "http://127.0.0.1:1")
	cfg.AppService.Port = port
	cfg.AppService.Address = fmt.Sprintf("http://127.0.0.1:%d", port)
	var answered atomic.Int32
	hs := relayingHomeserver(t, cfg, &answered)
	cfg.Homeserver.Address = hs.URL
	cfg.Database = config.Database{Type: "sqlite3-fk-wal", URI: "file:" + filepath.Join(t.TempDir(), "heirloom.db") + "?_txlock=immediate",
		MaxOpenConns: 5, MaxIdleConns: 1}

	ctx, stop := context.WithCancel(zerolog.Nop().WithContext(context.Background()))
	defer stop()
	lse, code := openLease(ctx, cfg.Database)
	require.Equal(t, ExitOK, code)
	db, err := database.OpenFenced(cfg.Database, zerolog.Nop(), lse.Me().ID)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	p, err := build(cfg, db, lse.Lease, zerolog.Nop())
	require.NoError(t, err)
	exit := make(chan int, 1)
	go func() { exit <- p.run(ctx) }()

	require.EventuallyWithT(t, func(c *assert.CollectT) {
		resp, err := http.Get(cfg.AppService.Address + server.APIPrefix + "/ready")
		if !assert.NoError(c, err) {
			return
		}
		_ = resp.Body.Close()
		assert.Equal(c, http.StatusOK, resp.StatusCode)
	}, 30*time.Second, 50*time.Millisecond)
	require.GreaterOrEqual(t, answered.Load(), int32(1), "the homeserver reached heirloom with the hs_token")
	n, err := db.CountPuppets(ctx)
	require.NoError(t, err, "the schema is upgraded")
	require.Zero(t, n)

	stop()
	select {
	case code = <-exit:
		require.Equal(t, ExitOK, code)
	case <-time.After(30 * time.Second):
		t.Fatal("heirloom did not stop")
	}
	_, err = http.Get(cfg.AppService.Address + server.APIPrefix + "/ready")
	require.Error(t, err, "the listener is closed")
	lse.close()
	next, code := openLease(context.Background(), cfg.Database)
	require.Equal(t, ExitOK, code, "the lease was given back")
	next.close()
}
