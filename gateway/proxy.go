package gateway

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"strconv"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"

	"github.com/heirloom-matrix/heirloom/internal/matrixerr"
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
			pr.SetURL(g.hsURL) // the escaped path heirloom classified, as it is
			// The query as heirloom checked it: Twisted's reading of the bridge's, re-encoded.
			pr.Out.URL.RawQuery = forwardedQuery(pr.In.URL.RawQuery)
			pr.Out.Header.Set("Authorization", "Bearer "+g.cfg.AppService.ASToken)
			// No protocol switch: behind a 101 the bridge could speak to the homeserver unread.
			pr.Out.Header.Del("Upgrade")
			pr.Out.Header.Del("Connection")
		},
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			zerolog.Ctx(r.Context()).Warn().Err(err).Str("path", r.URL.Path).Msg("Failed to forward a bridge request to the homeserver")
			matrixerr.Respond(w, matrixerr.Unreachable)
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
			matrixerr.Respond(w, mautrix.MTooLarge.WithMessage("request body over %d bytes", mbe.Limit))
		} else {
			matrixerr.Respond(w, mautrix.MBadJSON.WithMessage("failed to read request body"))
		}
		return nil, false
	}
	return body, true
}
