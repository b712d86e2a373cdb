package server

import (
	"net/http"

	"maunium.net/go/mautrix"

	"github.com/heirloom-matrix/heirloom/internal/matrixerr"
)

// heirloom answers errors Matrix-style, as mautrix.RespError ({"errcode": "M_…", "error": "…"}
// with the error's StatusCode), through internal/matrixerr: the same writer as the gateway's.

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
	errInternalError = matrixerr.Internal
	errBridgeBacklog = mautrix.MUnknown.WithMessage("the bridge is behind (gateway.max_outbox_size): send this transaction again later").
				WithStatus(http.StatusServiceUnavailable)
)

func writeJSON(w http.ResponseWriter, status int, body any) { matrixerr.JSON(w, status, body) }

// writeRespError writes a Matrix-style error with its status.
func writeRespError(w http.ResponseWriter, e mautrix.RespError) int { return matrixerr.Respond(w, e) }

// writeError answers with err as a Matrix-style error and returns the status it wrote. Homeserver
// errors keep their errcode; anything unexpected becomes a logged 500 without internals in the
// answer.
func writeError(w http.ResponseWriter, r *http.Request, err error) int {
	return matrixerr.Write(w, r, err)
}

// requireHSToken reports whether the request carries the homeserver's token, and answers 403 if not.
func (s *Server) requireHSToken(w http.ResponseWriter, r *http.Request) bool {
	if s.checkHSToken(r) {
		return true
	}
	writeRespError(w, errBadHSToken)
	return false
}
