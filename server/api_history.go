package server

import (
	"errors"
	"fmt"
	"net/http"

	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/history"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

type inviteRequest struct {
	UserID       id.UserID `json:"user_id"`
	ShareHistory *bool     `json:"share_history"`
}

// otherUser checks a request's user_id: given, a valid user ID, and not the puppet's own (self
// says why not).
func otherUser(userID, puppet id.UserID, self string) error {
	if userID == "" {
		return errBadJSON("user_id is required")
	} else if _, _, err := userID.Parse(); err != nil {
		return errInvalidParam(fmt.Sprintf("user_id %q is not a valid user ID", userID))
	} else if userID == puppet {
		return errInvalidParam(self)
	}
	return nil
}

// towardUser loads the puppet and room of r and decodes its body into req, whose *user must be
// another user than the puppet (self says why when it is the puppet itself).
func (s *Server) towardUser(r *http.Request, req any, user *id.UserID, self string) (*e2ee.Puppet, id.RoomID, error) {
	p, roomID, err := s.loadPuppetInRoom(r)
	if err != nil {
		return nil, "", err
	}
	if err = decodeBody(r, req); err != nil {
		return nil, "", err
	}
	if err = otherUser(*user, p.UserID, self); err != nil {
		return nil, "", err
	}
	return p, roomID, nil
}

func (s *Server) apiInvite(r *http.Request) (any, error) {
	var req inviteRequest
	p, roomID, err := s.towardUser(r, &req, &req.UserID, "a puppet cannot invite itself")
	if err != nil {
		return nil, err
	}
	share := req.ShareHistory == nil || *req.ShareHistory
	resp, err := s.history.Invite(r.Context(), p, roomID, req.UserID, share)
	if errors.Is(err, keybundle.ErrBundleTooLarge) {
		return nil, errTooLarge(err.Error() + "; the invite was not sent (retry with share_history: false to invite without history)")
	}
	return resp, mapRoomError(err)
}

func (s *Server) apiJoin(r *http.Request) (any, error) {
	p, roomID, err := s.loadPuppetInRoom(r)
	if err != nil {
		return nil, err
	}
	resp, err := s.history.Join(r.Context(), p, roomID)
	return resp, mapRoomError(err)
}

func (s *Server) apiBundles(r *http.Request) (any, error) {
	userID, err := s.puppetParam(r)
	if err != nil {
		return nil, err
	}
	return s.history.Bundles(r.Context(), userID)
}

type reshareRequest struct {
	UserID id.UserID `json:"user_id"`
}

// apiReshare builds and delivers a fresh bundle of the room's history to a user who is invited or
// joined already.
func (s *Server) apiReshare(r *http.Request) (any, error) {
	var req reshareRequest
	p, roomID, err := s.towardUser(r, &req, &req.UserID, "a puppet cannot share history with itself")
	if err != nil {
		return nil, err
	}
	resp, err := s.history.Reshare(r.Context(), p, roomID, req.UserID)
	switch {
	case errors.Is(err, history.ErrNotMember):
		return nil, errConflict(fmt.Sprintf("%s is neither invited to nor joined in %s: invite them instead", req.UserID, roomID))
	case errors.Is(err, keybundle.ErrBundleTooLarge):
		return nil, errTooLarge(err.Error())
	}
	return resp, mapRoomError(err)
}

// apiRetry retries now the puppet's failed received bundles for the room.
func (s *Server) apiRetry(r *http.Request) (any, error) {
	p, roomID, err := s.loadPuppetInRoom(r)
	if err != nil {
		return nil, err
	}
	return s.history.RetryReceived(r.Context(), p, roomID)
}
