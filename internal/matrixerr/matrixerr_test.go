package matrixerr_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"

	"github.com/heirloom-matrix/heirloom/internal/matrixerr"
)

func answer(t *testing.T, err error) (int, map[string]any, string) {
	t.Helper()
	var logs bytes.Buffer
	r := httptest.NewRequest(http.MethodGet, "/x", nil)
	r = r.WithContext(zerolog.New(&logs).WithContext(r.Context()))
	w := httptest.NewRecorder()
	status := matrixerr.Write(w, r, err)
	require.Equal(t, status, w.Code)
	require.Equal(t, "application/json", w.Header().Get("Content-Type"))
	var body map[string]any
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &body), w.Body.String())
	return status, body, logs.String()
}

func TestWrite(t *testing.T) {
	// heirloom's own error: as it is, only errcode and error.
	status, body, _ := answer(t, mautrix.MExclusive.WithMessage("not yours").WithStatus(http.StatusForbidden))
	require.Equal(t, http.StatusForbidden, status)
	require.Equal(t, map[string]any{"errcode": "M_EXCLUSIVE", "error": "not yours"}, body)

	// The homeserver's error, wrapped: its errcode, status and fields.
	hsErr := &mautrix.RespError{}
	require.NoError(t, json.Unmarshal([]byte(`{"errcode":"M_LIMIT_EXCEEDED","error":"slow down","retry_after_ms":500}`), hsErr))
	wrapped := fmt.Errorf("failed to send: %w", mautrix.HTTPError{Response: &http.Response{StatusCode: 429}, RespError: hsErr})
	status, body, _ = answer(t, wrapped)
	require.Equal(t, http.StatusTooManyRequests, status)
	require.Equal(t, map[string]any{"errcode": "M_LIMIT_EXCEEDED", "error": "homeserver: slow down", "retry_after_ms": 500.0}, body)

	// A homeserver that answered without a Matrix error, or not at all: 502.
	status, body, _ = answer(t, mautrix.HTTPError{Response: &http.Response{StatusCode: 504}, Message: "<html>gateway timeout</html>"})
	require.Equal(t, http.StatusBadGateway, status)
	require.Equal(t, map[string]any{"errcode": "M_UNKNOWN", "error": "the homeserver answered 504"}, body)
	status, _, _ = answer(t, mautrix.HTTPError{WrappedError: errors.New("dial tcp: connection refused")})
	require.Equal(t, http.StatusBadGateway, status)

	// Anything else: logged, and a generic answer.
	status, body, logs := answer(t, errors.New("failed to look up a send: sql: database is closed"))
	require.Equal(t, http.StatusInternalServerError, status)
	require.Equal(t, map[string]any{"errcode": "M_UNKNOWN", "error": "internal error: see heirloom's log"}, body)
	require.Contains(t, logs, "database is closed")
}
