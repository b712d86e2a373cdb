package server

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
)

// apiError is a Matrix-style error answer: {"errcode": "M_…", "error": "…"}.
type apiError struct {
	Status  int    `json:"-"`
	ErrCode string `json:"errcode"`
	Message string `json:"error"`
}

func (e *apiError) Error() string { return e.ErrCode + ": " + e.Message }

func errBadJSON(msg string) *apiError { return &apiError{http.StatusBadRequest, "M_BAD_JSON", msg} }
func errInvalidParam(msg string) *apiError {
	return &apiError{http.StatusBadRequest, "M_INVALID_PARAM", msg}
}
func errNotFound(msg string) *apiError { return &apiError{http.StatusNotFound, "M_NOT_FOUND", msg} }
func errTooLarge(msg string) *apiError {
	return &apiError{http.StatusRequestEntityTooLarge, "M_TOO_LARGE", msg}
}

var errUnknownToken = &apiError{http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Unknown or missing access token"}
var errMissingToken = &apiError{http.StatusUnauthorized, "M_MISSING_TOKEN", "Missing access token"}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// writeError answers with err as a Matrix-style error. Homeserver errors keep their errcode;
// anything unexpected becomes a logged 500 without internals in the answer.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	var he mautrix.HTTPError
	switch {
	case errors.As(err, &ae):
		writeJSON(w, ae.Status, ae)
	case errors.As(err, &he) && he.RespError != nil:
		status := he.Response.StatusCode
		if status < 400 {
			status = http.StatusBadGateway
		}
		writeJSON(w, status, &apiError{ErrCode: he.RespError.ErrCode, Message: "homeserver: " + he.RespError.Err})
	default:
		zerolog.Ctx(r.Context()).Err(err).Str("path", r.URL.Path).Msg("Request failed")
		writeJSON(w, http.StatusInternalServerError, &apiError{ErrCode: "M_UNKNOWN", Message: "internal error: see heirloom's log"})
	}
}
