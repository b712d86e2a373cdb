package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"strconv"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
)

// maxJSONBody caps the bodies of the calls the gateway reads (sends, invites, createRoom): the
// homeserver refuses events over 64 KiB anyway.
const maxJSONBody = 1 << 20

// newProxy returns the handler that carries a bridge request to the homeserver unchanged but for
// the token: heirloom's as_token replaces the bridge's (the homeserver knows only heirloom's), and
// an access_token query parameter is dropped. Bodies stream both ways; status and headers are
// kept. Errors of its own are Matrix-style JSON: a bridge may retry a non-JSON 5xx as a new send.
func (g *Gateway) newProxy() http.Handler {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(g.hsURL) // keeps the bridge's own escaping of the path
			q := pr.Out.URL.Query()
			if q.Has("access_token") {
				q.Del("access_token")
				pr.Out.URL.RawQuery = q.Encode()
			}
			pr.Out.Header.Set("Authorization", "Bearer "+g.cfg.AppService.ASToken)
		},
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			zerolog.Ctx(r.Context()).Warn().Err(err).Str("path", r.URL.Path).Msg("Failed to forward a bridge request to the homeserver")
			writeMatrixError(w, http.StatusBadGateway, "M_UNKNOWN", "heirloom could not reach the homeserver")
		},
	}
}

// forwardBody forwards the request with body instead of the one it arrived with.
func (g *Gateway) forwardBody(w http.ResponseWriter, r *http.Request, body []byte) {
	out := r.Clone(r.Context())
	out.Body = io.NopCloser(bytes.NewReader(body))
	out.ContentLength = int64(len(body))
	out.Header.Set("Content-Length", strconv.Itoa(len(body)))
	g.proxy.ServeHTTP(w, out)
}

// forwardRecorded forwards the request with body and returns the homeserver's answer without
// writing it, for the calls the gateway acts on afterwards.
func (g *Gateway) forwardRecorded(r *http.Request, body []byte) *recorder {
	rec := &recorder{header: http.Header{}, status: http.StatusOK}
	plain := r.Clone(r.Context())
	plain.Header.Del("Accept-Encoding") // the gateway reads the answer: no compression
	g.forwardBody(rec, plain, body)
	return rec
}

// recorder is an http.ResponseWriter that keeps what was written.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *recorder) WriteHeader(status int)      { r.status = status }

// writeTo writes the recorded answer, with body in place of the recorded one if it is not nil.
func (r *recorder) writeTo(w http.ResponseWriter, body []byte) {
	if body == nil {
		body = r.body.Bytes()
	}
	for k, v := range r.header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(r.status)
	_, _ = w.Write(body)
}

// readBody reads a JSON request body within the cap.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxJSONBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeMatrixError(w, http.StatusRequestEntityTooLarge, mautrix.MTooLarge.ErrCode, fmt.Sprintf("request body over %d bytes", mbe.Limit))
		} else {
			writeMatrixError(w, http.StatusBadRequest, mautrix.MBadJSON.ErrCode, "failed to read request body")
		}
		return nil, false
	}
	return body, true
}

// writeMatrixError writes a Matrix-style error.
func writeMatrixError(w http.ResponseWriter, status int, errcode, message string) {
	writeJSON(w, status, &mautrix.RespError{ErrCode: errcode, Err: message})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		status, data = http.StatusInternalServerError, []byte(`{"errcode":"M_UNKNOWN","error":"failed to encode answer"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(status)
	_, _ = w.Write(data)
}

// writeHomeserverError passes a homeserver error on as the homeserver gave it (status and
// Matrix error); any other error is a 500 M_UNKNOWN with a short description.
func writeHomeserverError(w http.ResponseWriter, r *http.Request, err error) {
	var he mautrix.HTTPError
	if errors.As(err, &he) && he.Response != nil {
		status := he.Response.StatusCode
		if he.RespError != nil {
			writeJSON(w, status, he.RespError)
			return
		}
		writeMatrixError(w, status, "M_UNKNOWN", he.Message)
		return
	}
	zerolog.Ctx(r.Context()).Err(err).Str("path", r.URL.Path).Msg("Failed to handle a bridge request")
	writeMatrixError(w, http.StatusInternalServerError, "M_UNKNOWN", "heirloom could not complete the request: "+err.Error())
}
