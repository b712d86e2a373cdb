package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/matrixerr"
)

// handleInvite runs MSC4268 for a bridge user's invite into an encrypted room: the room's
// shareable history goes to the invitee's cross-signed devices before the invite is forwarded.
// The bridge inviting its own users shares nothing: heirloom already holds every key they could get
// (heisenbridge's bot invites each ghost right before it first speaks; a bundle each time would
// slow every first line down).
func (g *Gateway) handleInvite(w http.ResponseWriter, r *http.Request, user id.UserID, roomID id.RoomID) {
	ctx := r.Context()
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	invitee, err := inviteeOf(body)
	if errors.Is(err, errAmbiguousJSON) {
		matrixerr.Respond(w, mautrix.MBadJSON.WithMessage("%s", err.Error()))
		return
	}
	if err != nil || invitee == "" || g.cfg.IsBridgeUser(invitee) {
		// An unreadable body is the homeserver's to refuse.
		g.forwardBody(w, r, body)
		return
	}
	log := zerolog.Ctx(ctx).With().Stringer("room_id", roomID).Stringer("invitee", invitee).Logger()
	ctx = log.WithContext(ctx)
	if encrypted, err := g.roomEncrypted(ctx, user, roomID); err != nil || !encrypted {
		g.forwardBody(w, r, body)
		return
	}
	p, err := g.identity(ctx, user)
	if err != nil {
		matrixerr.Write(w, r, err)
		return
	}
	b, err := g.history.ShareBeforeInvite(ctx, p, roomID, invitee, true)
	if err != nil {
		// A bundle over the size cap: the invite goes on without history rather than not at all
		// (the bridge cannot be told to retry without history, as heirloom's own API says).
		log.Warn().Err(err).Msg("History sharing failed; inviting without it")
		if b, err = g.history.ShareBeforeInvite(ctx, p, roomID, invitee, false); err != nil {
			matrixerr.Write(w, r, err)
			return
		}
	}
	rec := g.forwardRecorded(r.WithContext(ctx), body)
	var inviteErr error
	if rec.status != http.StatusOK {
		inviteErr = &forwardError{status: rec.status}
	}
	g.history.InviteDone(ctx, p, b, inviteErr)
	g.metrics.bundles.WithLabelValues(b.State).Inc()
	rec.writeTo(w, nil)
}

// inviteeOf reads the user an invite names the way the homeserver does: the body's exact
// "user_id" key.
func inviteeOf(body []byte) (id.UserID, error) {
	members, err := decodeObject(body)
	if err != nil {
		return "", err
	}
	var invitee string
	if raw, ok := members["user_id"]; ok && json.Unmarshal(raw, &invitee) != nil {
		return "", nil
	}
	return id.UserID(invitee), nil
}

// forwardError is a homeserver's refusal of a forwarded request.
type forwardError struct{ status int }

func (e *forwardError) Error() string { return "the homeserver answered " + http.StatusText(e.status) }

// handleJoin forwards a bridge user's join, recording first which invite it accepts, and then
// imports the inviter's bundle (MSC4268), as a join through heirloom's own API does. Joins of
// users without an E2EE identity only record the invite (the device the bundle went to is needed
// to read it), unless the user is the first reader of an encrypted room (readerForJoin).
func (g *Gateway) handleJoin(w http.ResponseWriter, r *http.Request, user id.UserID, roomOrAlias string) {
	ctx := r.Context()
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	// The homeserver's word that the room is unencrypted, given to the user before, may be the
	// room's state at their leave: it never outlives a join.
	joining := id.RoomID("") // a join by alias: every room
	if strings.HasPrefix(roomOrAlias, "!") {
		joining = id.RoomID(roomOrAlias)
	}
	g.mgr.ForgetPlaintext(joining, user) // before the join, and after it
	defer g.mgr.ForgetPlaintext(joining, user)
	p, err := g.mgr.Get(ctx, user)
	if errors.Is(err, e2ee.ErrNotProvisioned) && strings.HasPrefix(roomOrAlias, "!") {
		p, err = g.readerForJoin(ctx, user, id.RoomID(roomOrAlias))
	}
	if err != nil || !strings.HasPrefix(roomOrAlias, "!") {
		// No device (or a join by alias, resolved by the homeserver): the join's echo in the
		// transaction stream records it (history.ObserveJoin).
		g.forwardBody(w, r, body)
		return
	}
	roomID := id.RoomID(roomOrAlias)
	inv, err := g.history.BeforeJoin(ctx, p, roomID)
	if err != nil {
		matrixerr.Write(w, r, err)
		return
	}
	rec := g.forwardRecorded(r, body)
	if rec.status == http.StatusOK {
		if _, err = g.history.AfterJoin(ctx, p, roomID, inv); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Stringer("room_id", roomID).Msg("Failed to accept the invite's key bundle after the join")
		}
	}
	rec.writeTo(w, nil)
}

// handleCreateRoom adds m.room.encryption and gateway.history_visibility to the rooms the bridge
// creates, when gateway.encrypt_new_rooms asks for it and the request does not set them itself.
// A room created with m.room.encryption is recorded encrypted as soon as the homeserver answers,
// before the bridge hears of it: the bridge may send into it before the room's state reaches
// heirloom in a transaction. With encrypt_new_rooms, a body heirloom cannot read is refused rather
// than forwarded: the room would be created unencrypted.
func (g *Gateway) handleCreateRoom(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	req, err := decodeContent(body)
	if err != nil && g.cfg.Gateway.EncryptNewRooms {
		matrixerr.Respond(w, mautrix.MNotJSON.WithMessage("the createRoom body is not a JSON object heirloom can read to encrypt the room; "+
			"no room was created"))
		return
	} else if err != nil {
		g.forwardBody(w, r, body)
		return
	}
	if g.cfg.Gateway.EncryptNewRooms {
		if body, err = g.encryptNewRoom(req); err != nil {
			matrixerr.Write(w, r, err)
			return
		}
	}
	encryption := initialEncryption(req)
	if encryption == nil {
		g.forwardBody(w, r, body)
		return
	}
	rec := g.forwardRecorded(r, body)
	if rec.status == http.StatusOK {
		g.recordCreatedRoom(r.Context(), rec.body.Bytes(), encryption)
	}
	rec.writeTo(w, nil)
}

// encryptNewRoom adds m.room.encryption and the history visibility to a createRoom request's
// initial state, unless it sets them, and returns the request's new body.
func (g *Gateway) encryptNewRoom(req map[string]any) ([]byte, error) {
	initial, _ := req["initial_state"].([]any)
	has := map[string]bool{}
	for _, raw := range initial {
		if t, ok := roomStateType(raw); ok {
			has[t] = true
		}
	}
	if !has[event.StateEncryption.Type] {
		initial = append(initial, map[string]any{"type": event.StateEncryption.Type, "state_key": "",
			"content": map[string]any{"algorithm": id.AlgorithmMegolmV1}})
	}
	if !has[event.StateHistoryVisibility.Type] {
		initial = append(initial, map[string]any{"type": event.StateHistoryVisibility.Type, "state_key": "",
			"content": map[string]any{"history_visibility": g.cfg.Gateway.Visibility()}})
	}
	req["initial_state"] = initial
	return json.Marshal(req)
}

// roomStateType returns the type of an initial_state entry that is the room's state of that type
// (state key "", or none: Synapse reads a missing one as ""), and false for any other entry (one
// with another state key, a null one, or no type), which sets no room-wide state.
func roomStateType(raw any) (string, bool) {
	evt, ok := raw.(map[string]any)
	if !ok {
		return "", false
	}
	t, ok := evt["type"].(string)
	if key, has := evt["state_key"]; !ok || has && key != "" {
		return "", false
	}
	return t, true
}

// initialEncryption returns the content of the m.room.encryption a createRoom request puts in the
// room's initial state (the last one, as Synapse keeps it), or nil.
func initialEncryption(req map[string]any) json.RawMessage {
	initial, _ := req["initial_state"].([]any)
	var content json.RawMessage
	for _, raw := range initial {
		if t, ok := roomStateType(raw); !ok || t != event.StateEncryption.Type {
			continue
		}
		if data, err := json.Marshal(raw.(map[string]any)["content"]); err == nil {
			content = data
		}
	}
	return content
}

// recordCreatedRoom records the encryption of a room the homeserver just created (its createRoom
// answer names it). If it cannot, the room's first send asks the homeserver instead.
func (g *Gateway) recordCreatedRoom(ctx context.Context, answer []byte, encryption json.RawMessage) {
	var created struct {
		RoomID id.RoomID `json:"room_id"`
	}
	if err := json.Unmarshal(answer, &created); err != nil || created.RoomID == "" {
		zerolog.Ctx(ctx).Warn().Msg("The homeserver's createRoom answer names no room; its encryption is not recorded")
		return
	}
	if err := g.mgr.RecordEncryption(ctx, created.RoomID, encryption); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Stringer("room_id", created.RoomID).Msg("Failed to record a new room's encryption")
	}
}
