package server

import (
	"errors"
	"net/http"

	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
)

// Identities: when a user's cross-signing identity changes, heirloom stops sharing history with
// them and refuses their bundles (MSC4268's red flag) until an admin, having checked the new key
// with the user, confirms it here.

func mapIdentityError(err error) error {
	switch {
	case errors.Is(err, e2ee.ErrUnknownIdentity):
		return errNotFound(err.Error())
	case errors.Is(err, e2ee.ErrIdentityMismatch):
		return errConflict(err.Error())
	}
	return err
}

func (s *Server) apiGetIdentity(r *http.Request) (any, error) {
	userID, err := userParam(r)
	if err != nil {
		return nil, err
	}
	status, err := s.mgr.Identity(r.Context(), userID)
	return status, mapIdentityError(err)
}

type confirmIdentityRequest struct {
	MasterKey id.Ed25519 `json:"master_key"`
}

func (s *Server) apiConfirmIdentity(r *http.Request) (any, error) {
	userID, err := userParam(r)
	if err != nil {
		return nil, err
	}
	var req confirmIdentityRequest
	if err = decodeBody(r, &req); err != nil {
		return nil, err
	} else if req.MasterKey == "" {
		return nil, errBadJSON("master_key is required: the key you checked with the user")
	}
	status, err := s.mgr.ConfirmIdentity(r.Context(), userID, req.MasterKey)
	return status, mapIdentityError(err)
}
