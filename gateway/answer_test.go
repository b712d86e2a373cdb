package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/appservice"

	"github.com/heirloom-matrix/heirloom/config"
)

// What heirloom makes of the bridge's answer to a transaction: a refusal of its content, no answer
// to a request it took (a hang, a connection closed after the request, a proxy's 504), or a bridge
// that is down (nothing listening, or an answer that is not about the events).
func TestWhatABridgesAnswerMeans(t *testing.T) {
	hang := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // the server notices the client leaving once the body is read
		<-r.Context().Done()
	}
	closeConn := func(w http.ResponseWriter, r *http.Request) {
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			_ = conn.Close()
		}
	}
	status := func(code int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(code) }
	}
	for _, tc := range []struct {
		name                string
		handler             http.HandlerFunc
		refused, unanswered bool
	}{
		{"taken", status(http.StatusOK), false, false},
		{"refused", status(http.StatusInternalServerError), true, false},
		{"no answer in time", hang, false, true},
		{"connection closed after the request", closeConn, false, true},
		{"a proxy's 504", status(http.StatusGatewayTimeout), false, true},
		{"unavailable", status(http.StatusServiceUnavailable), false, false},
		{"nothing listening", nil, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := "http://" + closedAddress(t)
			if tc.handler != nil {
				srv := httptest.NewServer(tc.handler)
				t.Cleanup(srv.Close)
				url = srv.URL
			}
			g := &Gateway{bridge: &config.Bridge{URL: url, Registration: &appservice.Registration{}}, deliverer: &http.Client{Transport: bridgeTransport()}}
			err := g.deliver(context.Background(), 1, nil, 300*time.Millisecond)
			if tc.name == "taken" {
				require.NoError(t, err)
				return
			}
			var de *deliveryError
			require.True(t, errors.As(err, &de), "%v", err)
			require.Equal(t, tc.refused, de.refused, "refused: %v", err)
			require.Equal(t, tc.unanswered, de.unanswered, "unanswered: %v", err)
		})
	}
}

// closedAddress is an address nothing listens on.
func closedAddress(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}
