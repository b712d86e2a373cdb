package server

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
)

// heirloom answers errors Matrix-style, as mautrix.RespError: {"errcode": "M_…", "error": "…"}
// with the error's StatusCode. They are written by writeJSON rather than RespError.Write, which
// adds browser CORS headers (Access-Control-Allow-Origin: *) that this API, called by a bridge
// and a homeserver, sends on no other answer.

func errBadJSON(msg string) error      { return mautrix.MBadJSON.WithMessage(msg) }
func errNotJSON(msg string) error      { return mautrix.MNotJSON.WithMessage(msg) }
func errInvalidParam(msg string) error { return mautrix.MInvalidParam.WithMessage(msg) }
func errNotFound(msg string) error     { return mautrix.MNotFound.WithMessage(msg) }
func errTooLarge(msg string) error     { return mautrix.MTooLarge.WithMessage(msg) }
func errConflict(msg string) error {
	return mautrix.MInvalidParam.WithMessage(msg).WithStatus(http.StatusConflict)
}

var (
	errUnknownToken  = mautrix.MUnknownToken.WithMessage("Unknown or missing access token")
	errMissingToken  = mautrix.MMissingToken.WithMessage("Missing access token")
	errBadHSToken    = mautrix.MForbidden.WithMessage("Bad homeserver token")
	errUnrecognized  = mautrix.MUnrecognized.WithMessage("Unrecognized request")
	errInternalError = mautrix.MUnknown.WithMessage("internal error: see heirloom's log")
	errBridgeBacklog = mautrix.MUnknown.WithMessage("the bridge is behind (gateway.max_outbox_size): send this transaction again later").
				WithStatus(http.StatusServiceUnavailable)
)

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// writeRespError writes a Matrix-style error with its status.
func writeRespError(w http.ResponseWriter, e mautrix.RespError) int {
	writeJSON(w, e.StatusCode, &e)
	return e.StatusCode
}

// writeError answers with err as a Matrix-style error and returns the status it wrote. Homeserver
// errors keep their errcode; anything unexpected becomes a logged 500 without internals in the
// answer.
func writeError(w http.ResponseWriter, r *http.Request, err error) int {
	var he mautrix.HTTPError
	var re mautrix.RespError
	switch {
	case errors.As(err, &he) && he.RespError != nil:
		status := http.StatusBadGateway
		if he.Response != nil && he.Response.StatusCode >= 400 {
			status = he.Response.StatusCode
		}
		return writeRespError(w, mautrix.RespError{ErrCode: he.RespError.ErrCode, Err: "homeserver: " + he.RespError.Err, StatusCode: status})
	case errors.As(err, &re) && re.StatusCode != 0:
		return writeRespError(w, re)
	default:
		zerolog.Ctx(r.Context()).Err(err).Str("path", r.URL.Path).Msg("Request failed")
		return writeRespError(w, errInternalError)
	}
}

// requireHSToken reports whether the request carries the homeserver's token, and answers 403 if not.
func (s *Server) requireHSToken(w http.ResponseWriter, r *http.Request) bool {
	if s.checkHSToken(r) {
		return true
	}
	writeRespError(w, errBadHSToken)
	return false
}
