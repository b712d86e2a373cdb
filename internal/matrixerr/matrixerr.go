// Package matrixerr writes heirloom's HTTP answers: JSON, and errors as Matrix errors
// ({"errcode": "M_…", "error": "…"}) with a fitting status, for the HTTP API and the gateway alike.
// What went wrong inside heirloom stays in its log; the caller gets a generic message.
package matrixerr

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
)

// Internal is the answer to a failure inside heirloom: its cause is in heirloom's log only.
var Internal = mautrix.MUnknown.WithMessage("internal error: see heirloom's log")

// Unreachable is the answer when heirloom could not get an answer from the homeserver.
var Unreachable = mautrix.MUnknown.WithMessage("heirloom could not reach the homeserver").WithStatus(http.StatusBadGateway)

// JSON writes v as a JSON answer with status. The answers are written whole, with their length:
// a bridge may retry a truncated answer as a new request.
func JSON(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		status, data = http.StatusInternalServerError, []byte(`{"errcode":"M_UNKNOWN","error":"failed to encode the answer"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(status)
	_, _ = w.Write(data)
}

// Respond writes a Matrix error heirloom made itself, with its status (500 if it has none), and
// returns the status written. It is written with RespError's own encoding, without the browser CORS
// headers RespError.Write adds: heirloom's callers are a bridge and a homeserver.
func Respond(w http.ResponseWriter, e mautrix.RespError) int {
	if e.StatusCode == 0 {
		e.StatusCode = http.StatusInternalServerError
	}
	for k, v := range e.ExtraHeader {
		w.Header().Set(k, v)
	}
	JSON(w, e.StatusCode, &e)
	return e.StatusCode
}

// Write answers err and returns the status written:
//   - the homeserver's Matrix error keeps its errcode, its fields (retry_after_ms) and its status;
//   - a homeserver that did not answer, or not with a Matrix error, is a 502 M_UNKNOWN;
//   - a mautrix.RespError heirloom made itself is written as it is;
//   - anything else is logged (zerolog from the request's context) and answered Internal.
func Write(w http.ResponseWriter, r *http.Request, err error) int {
	var he mautrix.HTTPError
	var re mautrix.RespError
	switch {
	case errors.As(err, &he) && he.RespError != nil:
		e := *he.RespError
		e.Err, e.StatusCode = "homeserver: "+e.Err, http.StatusBadGateway
		if he.Response != nil && he.Response.StatusCode >= 400 {
			e.StatusCode = he.Response.StatusCode
		}
		e.ExtraHeader = nil
		return Respond(w, e)
	case errors.As(err, &he):
		zerolog.Ctx(r.Context()).Warn().Err(err).Str("path", r.URL.Path).Msg("The homeserver did not answer a request with a Matrix error")
		if he.Response != nil {
			return Respond(w, mautrix.MUnknown.WithMessage("the homeserver answered %d", he.Response.StatusCode).WithStatus(http.StatusBadGateway))
		}
		return Respond(w, Unreachable)
	case errors.As(err, &re) && re.StatusCode != 0:
		return Respond(w, re)
	default:
		zerolog.Ctx(r.Context()).Err(err).Str("path", r.URL.Path).Msg("Request failed")
		return Respond(w, Internal)
	}
}
