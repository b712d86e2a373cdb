package server

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
)

// APIPrefix is where the bridge-facing API lives.
const APIPrefix = "/_heirloom/v1"

// maxAPIBody caps API request bodies; message and state contents are far smaller in practice
// (the homeserver itself refuses events over 64 KiB).
const maxAPIBody = 1 << 20

// apiHandler is an API endpoint: it returns the JSON answer for a 200, or an error.
type apiHandler = func(r *http.Request) (any, error)

// wrap adds bearer authentication, the body limit, metrics and Matrix-style errors.
func (s *Server) wrap(h apiHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		if auth == "" {
			s.metrics.apiRequests.WithLabelValues("401").Inc()
			writeError(w, r, errMissingToken)
			return
		}
		token, ok := strings.CutPrefix(auth, "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(token), []byte(s.cfg.Provisioning.SharedSecret)) != 1 {
			s.metrics.apiRequests.WithLabelValues("401").Inc()
			writeError(w, r, errUnknownToken)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxAPIBody)
		resp, err := h(r)
		if err != nil {
			status := writeError(w, r, err)
			s.metrics.apiRequests.WithLabelValues(strconv.Itoa(status)).Inc()
			return
		}
		s.metrics.apiRequests.WithLabelValues("200").Inc()
		writeJSON(w, http.StatusOK, resp)
	})
}

func (s *Server) apiRoutes(mux *http.ServeMux) {
	p := APIPrefix
	mux.Handle("GET "+p+"/status", s.wrap(s.apiStatus))
	mux.Handle("PUT "+p+"/puppets/{userID}", s.wrap(s.apiProvision))
	mux.Handle("POST "+p+"/puppets/{userID}/rooms", s.wrap(s.apiCreateRoom))
	mux.Handle("POST "+p+"/puppets/{userID}/rooms/{roomID}/leave", s.wrap(s.apiLeave))
	mux.Handle("PUT "+p+"/puppets/{userID}/rooms/{roomID}/state/{type}", s.wrap(s.apiSetState))
	mux.Handle("PUT "+p+"/puppets/{userID}/rooms/{roomID}/state/{type}/{stateKey...}", s.wrap(s.apiSetState))
	mux.Handle("POST "+p+"/puppets/{userID}/rooms/{roomID}/messages", s.wrap(s.apiSend))
	mux.Handle("GET "+p+"/puppets/{userID}/rooms/{roomID}/messages", s.wrap(s.apiMessages))
	mux.Handle("POST "+p+"/puppets/{userID}/rooms/{roomID}/join", s.wrap(s.apiJoin))
	mux.Handle("POST "+p+"/puppets/{userID}/rooms/{roomID}/invite", s.wrap(s.apiInvite))
	mux.Handle("POST "+p+"/puppets/{userID}/rooms/{roomID}/reshare", s.wrap(s.apiReshare))
	mux.Handle("POST "+p+"/puppets/{userID}/rooms/{roomID}/retry", s.wrap(s.apiRetry))
	mux.Handle("GET "+p+"/puppets/{userID}/bundles", s.wrap(s.apiBundles))
	mux.Handle("GET "+p+"/identities/{userID}", s.wrap(s.apiGetIdentity))
	mux.Handle("PUT "+p+"/identities/{userID}", s.wrap(s.apiConfirmIdentity))
	mux.Handle("POST "+p+"/gateway/dead_letters/resend", s.wrap(s.apiResendDeadLetters))
	mux.Handle(p+"/", s.wrap(func(r *http.Request) (any, error) {
		return nil, errUnrecognized
	}))
}

// decodeBody reads a JSON object from the request into v.
func decodeBody(r *http.Request, v any) error {
	data, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errTooLarge(fmt.Sprintf("request body over %d bytes", mbe.Limit))
		}
		return errBadJSON("failed to read request body")
	}
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return errNotJSON("request body must be a JSON object")
	}
	if err = json.Unmarshal(data, v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return errBadJSON(fmt.Sprintf("field %q must be %s", typeErr.Field, typeErr.Type))
		}
		return errBadJSON("malformed JSON: " + err.Error())
	}
	return nil
}

// userParam returns the {userID} path parameter, checked to be a user ID.
func userParam(r *http.Request) (id.UserID, error) {
	userID := id.UserID(r.PathValue("userID"))
	if _, _, err := userID.Parse(); err != nil {
		return "", errInvalidParam(fmt.Sprintf("%q is not a valid user ID", userID))
	}
	return userID, nil
}

// puppetParam returns the {userID} path parameter, checked to be in the puppet namespace.
func (s *Server) puppetParam(r *http.Request) (id.UserID, error) {
	userID, err := userParam(r)
	if err != nil {
		return "", err
	}
	if !s.cfg.IsPuppet(userID) {
		return "", errInvalidParam(fmt.Sprintf("%s is not in the puppet namespace (@%s…:%s)",
			userID, s.cfg.AppService.PuppetPrefix, s.cfg.Homeserver.Domain))
	}
	return userID, nil
}

// loadPuppet returns the provisioned puppet named by the path.
func (s *Server) loadPuppet(r *http.Request) (*e2ee.Puppet, error) {
	userID, err := s.puppetParam(r)
	if err != nil {
		return nil, err
	}
	p, err := s.mgr.Get(r.Context(), userID)
	if errors.Is(err, e2ee.ErrNotProvisioned) {
		return nil, errNotFound(fmt.Sprintf("%s is not provisioned: PUT %s/puppets/%s first", userID, APIPrefix, userID))
	}
	return p, err
}

// loadPuppetInRoom returns the provisioned puppet and the room the path names.
func (s *Server) loadPuppetInRoom(r *http.Request) (*e2ee.Puppet, id.RoomID, error) {
	p, err := s.loadPuppet(r)
	if err != nil {
		return nil, "", err
	}
	roomID, err := roomParam(r)
	if err != nil {
		return nil, "", err
	}
	return p, roomID, nil
}

// roomParam returns the {roomID} path parameter, checked for shape.
func roomParam(r *http.Request) (id.RoomID, error) {
	roomID := id.RoomID(r.PathValue("roomID"))
	// Room IDs start with "!"; newer room versions drop the ":server" part, so that is not required.
	if len(roomID) < 2 || roomID[0] != '!' || strings.ContainsAny(string(roomID), "/ ") {
		return "", errInvalidParam(fmt.Sprintf("%q is not a room ID", roomID))
	}
	return roomID, nil
}

// mapRoomError turns "the homeserver does not know this room" into a 404, and "the room is
// encrypted with settings heirloom cannot use" into a 502 (nothing was sent).
func mapRoomError(err error) error {
	switch {
	case errors.Is(err, e2ee.ErrUnknownRoom):
		return errNotFound(err.Error())
	case errors.Is(err, e2ee.ErrUnusableEncryption):
		return mautrix.MUnknown.WithMessage("the room's encryption is not one heirloom can encrypt with; nothing was sent").
			WithStatus(http.StatusBadGateway)
	}
	return err
}

// statusResponse is what GET /status answers.
type statusResponse struct {
	Version string `json:"version"`
	// Role is the process's role: active (it acts), standby (it waits for the lease) or lost.
	Role string `json:"role"`
	// Lease names the database lease and the process that holds it.
	Lease               *LeaseStatus `json:"lease,omitempty"`
	HomeserverReachable bool         `json:"homeserver_reachable"`
	Puppets             int          `json:"puppets"`
	LoadedMachines      int          `json:"loaded_machines"`
	// LastHomeserverPing is when the homeserver last pinged heirloom, in Unix milliseconds (0: never).
	LastHomeserverPing   int64 `json:"last_homeserver_ping"`
	UptimeSeconds        int   `json:"uptime_seconds"`
	HistorySharingActive bool  `json:"history_sharing_active"`
	// Bundles counts the bundles that wait or went wrong.
	Bundles statusBundles `json:"bundles"`
	// DeviceProblems lists the puppet devices the homeserver lost and heirloom could not restore:
	// those puppets can neither send nor read encrypted messages until it is fixed.
	DeviceProblems []e2ee.DeviceProblem `json:"device_problems"`
	// Bot is heirloom's bot, once its device is provisioned.
	Bot *BotStatus `json:"bot,omitempty"`
	// Gateway is gateway mode's state; absent when it is off.
	Gateway *GatewayStatus `json:"gateway,omitempty"`
}

// GatewayStatus is the state of gateway mode's delivery to the bridge.
type GatewayStatus struct {
	// Bridge is the bridge's appservice ID.
	Bridge string `json:"bridge"`
	// OutboxEvents counts the events stored for the bridge and not yet acknowledged by it.
	OutboxEvents int `json:"outbox_events"`
	// DeliveryFailing is set while the oldest transaction fails to reach the bridge: Attempts
	// tries so far, LastError the last reason.
	DeliveryFailing bool   `json:"delivery_failing"`
	Attempts        int    `json:"attempts,omitempty"`
	LastError       string `json:"last_error,omitempty"`
	// OutboxBytes is the bytes of those events; at MaxOutboxBytes (gateway.max_outbox_size) the
	// outbox is full (OutboxFull): heirloom refuses the homeserver's transactions, which the
	// homeserver holds and sends again once the bridge has caught up.
	OutboxBytes    int64 `json:"outbox_bytes"`
	MaxOutboxBytes int64 `json:"max_outbox_size"`
	OutboxFull     bool  `json:"outbox_full"`
	// DeadLetters lists the most recent events the bridge refused every time and heirloom set
	// aside (DeadLetterCount in all); POST /_heirloom/v1/gateway/dead_letters/resend delivers
	// them again.
	DeadLetterCount int          `json:"dead_letter_count"`
	DeadLetters     []DeadLetter `json:"dead_letters"`
}

// DeadLetter is an event the bridge refused every time, set aside so that delivery goes on.
type DeadLetter struct {
	// EventID is the event's ID ("" for an ephemeral event); Key is what the outbox knows it by.
	EventID id.EventID `json:"event_id,omitempty"`
	Key     string     `json:"key"`
	RoomID  id.RoomID  `json:"room_id,omitempty"`
	Kind    string     `json:"kind"`
	// Refusals is how many times the bridge refused it alone; LastError its last answer.
	Refusals  int    `json:"refusals"`
	LastError string `json:"last_error"`
	// SetAsideAt is when it was set aside (unix ms).
	SetAsideAt int64 `json:"set_aside_at"`
}

// BotStatus names heirloom's bot's device and identity, for admins to check in their client.
type BotStatus struct {
	UserID    id.UserID   `json:"user_id"`
	DeviceID  id.DeviceID `json:"device_id"`
	MasterKey id.Ed25519  `json:"master_key"`
}

// statusBundles is GET /status's count of bundles: sent ones being delivered or failed, received
// ones pending, retrying or failed.
type statusBundles struct {
	Sending    int `json:"sending"`
	SendFailed int `json:"send_failed"`
	Pending    int `json:"pending"`
	Retrying   int `json:"retrying"`
	Failed     int `json:"failed"`
}

func (s *Server) apiStatus(r *http.Request) (any, error) {
	if !s.acting() {
		// The database is the active process's: a standby reports its role and who is active.
		return &standbyStatus{Version: Version, Role: s.Role().String(), Lease: s.leaseStatus(),
			UptimeSeconds: int(time.Since(s.startedAt).Seconds())}, nil
	}
	ctx := r.Context()
	puppets, err := s.db.CountPuppets(ctx, s.cfg.BotUserID())
	if err != nil {
		return nil, err
	}
	counts, err := s.db.CountBundles(ctx)
	if err != nil {
		return nil, err
	}
	cli := s.mgr.Client(ctx, s.cfg.BotUserID())
	cli.DefaultHTTPRetries = 0 // an answer now, not after mautrix's retries against a homeserver that is down
	_, versionsErr := cli.Versions(ctx)
	bot, err := s.mgr.ProvisionedIdentity(ctx, s.cfg.BotUserID())
	if err != nil {
		return nil, err
	}
	var gatewayStatus *GatewayStatus
	if s.gateway != nil {
		if gatewayStatus, err = s.gateway.Status(ctx); err != nil {
			return nil, err
		}
	}
	var botStatus *BotStatus
	if bot != nil {
		botStatus = &BotStatus{UserID: bot.UserID, DeviceID: bot.DeviceID, MasterKey: bot.MasterKey}
	}
	return &statusResponse{
		Version:              Version,
		Role:                 s.Role().String(),
		Lease:                s.leaseStatus(),
		HomeserverReachable:  versionsErr == nil,
		Puppets:              puppets,
		LoadedMachines:       s.mgr.LoadedCount(),
		LastHomeserverPing:   s.lastPing.Load(),
		UptimeSeconds:        int(time.Since(s.startedAt).Seconds()),
		HistorySharingActive: s.cfg.HistorySharing.ShareOnInvite,
		Bundles: statusBundles{Sending: counts.Sending, SendFailed: counts.SendFailed, Pending: counts.Pending,
			Retrying: counts.Retrying, Failed: counts.Failed},
		DeviceProblems: s.mgr.DeviceProblems(),
		Bot:            botStatus,
		Gateway:        gatewayStatus,
	}, nil
}

type provisionRequest struct {
	Displayname string `json:"displayname"`
}

func (s *Server) apiProvision(r *http.Request) (any, error) {
	userID, err := s.puppetParam(r)
	if err != nil {
		return nil, err
	}
	var req provisionRequest
	if r.ContentLength != 0 {
		if err = decodeBody(r, &req); err != nil {
			return nil, err
		}
	}
	return s.mgr.Provision(r.Context(), userID, req.Displayname)
}

type createRoomRequest struct {
	Name              string      `json:"name"`
	Topic             string      `json:"topic"`
	Encrypted         *bool       `json:"encrypted"`
	HistoryVisibility string      `json:"history_visibility"`
	Invite            []id.UserID `json:"invite"`
}

func (s *Server) apiCreateRoom(r *http.Request) (any, error) {
	p, err := s.loadPuppet(r)
	if err != nil {
		return nil, err
	}
	var req createRoomRequest
	if err = decodeBody(r, &req); err != nil {
		return nil, err
	}
	visibility := event.HistoryVisibility(req.HistoryVisibility)
	switch visibility {
	case "":
		visibility = event.HistoryVisibilityShared
	case event.HistoryVisibilityShared, event.HistoryVisibilityJoined, event.HistoryVisibilityInvited, event.HistoryVisibilityWorldReadable:
	default:
		return nil, errInvalidParam("history_visibility must be shared, joined, invited or world_readable")
	}
	for _, invitee := range req.Invite {
		if _, _, err = invitee.Parse(); err != nil {
			return nil, errInvalidParam(fmt.Sprintf("invite: %q is not a valid user ID", invitee))
		}
	}
	initial := []*event.Event{{
		Type:    event.StateHistoryVisibility,
		Content: event.Content{Parsed: &event.HistoryVisibilityEventContent{HistoryVisibility: visibility}},
	}}
	if req.Encrypted == nil || *req.Encrypted {
		initial = append(initial, &event.Event{
			Type:    event.StateEncryption,
			Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}},
		})
	}
	resp, err := p.Client.CreateRoom(r.Context(), &mautrix.ReqCreateRoom{
		Name:         req.Name,
		Topic:        req.Topic,
		Preset:       "private_chat",
		Invite:       req.Invite,
		InitialState: initial,
	})
	if err != nil {
		return nil, err
	}
	if req.Encrypted == nil || *req.Encrypted {
		// Encrypted from now on, whatever reaches heirloom first (e2ee.Manager.RoomEncrypted).
		if err = s.mgr.RecordEncryption(r.Context(), resp.RoomID, json.RawMessage(`{"algorithm":"`+string(id.AlgorithmMegolmV1)+`"}`)); err != nil {
			return nil, err
		}
	}
	// Learn the new room's state now, so the first send needs no transaction to have arrived.
	if _, err = p.Client.State(r.Context(), resp.RoomID); err != nil {
		zerolog.Ctx(r.Context()).Warn().Err(err).Stringer("room_id", resp.RoomID).Msg("Failed to fetch state of new room")
	}
	return &mautrix.RespCreateRoom{RoomID: resp.RoomID}, nil
}

func (s *Server) apiLeave(r *http.Request) (any, error) {
	p, roomID, err := s.loadPuppetInRoom(r)
	if err != nil {
		return nil, err
	}
	if _, err = p.Client.LeaveRoom(r.Context(), roomID); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (s *Server) apiSetState(r *http.Request) (any, error) {
	p, roomID, err := s.loadPuppetInRoom(r)
	if err != nil {
		return nil, err
	}
	evtType := event.Type{Type: r.PathValue("type"), Class: event.StateEventType}
	if evtType.Type == "" {
		return nil, errInvalidParam("missing event type")
	}
	var content map[string]any
	if err = decodeBody(r, &content); err != nil {
		return nil, err
	}
	ctx := r.Context()
	stateKey := r.PathValue("stateKey")
	// mautrix updates the state store as the event is sent: read the visibility before that. A
	// puppet's change of a visibility heirloom never knew is compared with none at all: it rotates.
	previous, err := s.db.StateStore.GetHistoryVisibility(ctx, roomID)
	if err != nil {
		return nil, fmt.Errorf("failed to read history visibility: %w", err)
	} else if previous == nil {
		previous = &event.HistoryVisibilityEventContent{}
	}
	resp, err := p.Client.SendStateEvent(ctx, roomID, evtType, stateKey, content)
	if err != nil {
		return nil, err
	}
	// The next send must already see the new state (and its rotation), without waiting for the
	// transaction.
	raw, _ := json.Marshal(content)
	evt := &event.Event{Type: evtType, RoomID: roomID, StateKey: &stateKey, Sender: p.UserID, ID: resp.EventID,
		Timestamp: time.Now().UnixMilli(), Content: event.Content{VeryRaw: raw}}
	if err = evt.Content.ParseRaw(evtType); err == nil || errors.Is(err, event.ErrUnsupportedContentType) {
		s.applyState(ctx, evt, previous)
	}
	return &mautrix.RespSendEvent{EventID: resp.EventID}, nil
}

func (s *Server) apiSend(r *http.Request) (any, error) {
	p, roomID, err := s.loadPuppetInRoom(r)
	if err != nil {
		return nil, err
	}
	var content map[string]any
	if err = decodeBody(r, &content); err != nil {
		return nil, err
	}
	if msgtype, ok := content["msgtype"].(string); !ok || msgtype == "" {
		return nil, errBadJSON("msgtype must be a non-empty string")
	}
	if _, ok := content["body"].(string); !ok {
		return nil, errBadJSON("body must be a string")
	}
	txnID, err := sendTxnID(p.UserID, r.URL.Query().Get("txn_id"))
	if err != nil {
		return nil, err
	}
	eventID, err := p.SendMessageTxn(r.Context(), roomID, event.EventMessage, content, txnID)
	if err != nil {
		return nil, mapRoomError(err)
	}
	return &mautrix.RespSendEvent{EventID: eventID}, nil
}

// maxTxnID bounds the caller's txn_id.
const maxTxnID = 255

// sendTxnID returns the homeserver transaction ID of a send the caller named txnID ("" for a new
// one each time): the same for the same puppet and txnID, so that a send retried after an unclear
// failure (a failover between two heirloom processes, say) makes no second event, within the
// homeserver's transaction cache (Synapse: 30 minutes). Synapse keys an appservice's transactions
// by room and ID only, so the puppet is part of the ID: two puppets' sends never share one.
func sendTxnID(puppet id.UserID, txnID string) (string, error) {
	if txnID == "" {
		return "", nil
	} else if len(txnID) > maxTxnID {
		return "", errInvalidParam(fmt.Sprintf("txn_id is longer than %d bytes", maxTxnID))
	}
	sum := sha256.Sum256([]byte(puppet.String() + "\x00" + txnID))
	return "heirloom." + base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// messagesResponse is what GET …/messages answers: the room's last events, oldest first.
type messagesResponse struct {
	Events []e2ee.TimelineEvent `json:"events"`
}

func (s *Server) apiMessages(r *http.Request) (any, error) {
	p, roomID, err := s.loadPuppetInRoom(r)
	if err != nil {
		return nil, err
	}
	limit := 50
	if raw := r.URL.Query().Get("limit"); raw != "" {
		limit, err = strconv.Atoi(raw)
		if err != nil || limit < 1 || limit > 1000 {
			return nil, errInvalidParam("limit must be an integer from 1 to 1000")
		}
	}
	events, err := p.Timeline(r.Context(), roomID, limit)
	if err != nil {
		return nil, mapRoomError(err)
	}
	return &messagesResponse{Events: events}, nil
}

// resendRequest names the event set aside to deliver again; without one, all are.
type resendRequest struct {
	EventID id.EventID `json:"event_id"`
}

// resendResponse says how many events set aside go to the bridge again.
type resendResponse struct {
	Requeued int `json:"requeued"`
}

func (s *Server) apiResendDeadLetters(r *http.Request) (any, error) {
	if s.gateway == nil {
		return nil, errNotFound("gateway mode is off")
	}
	var req resendRequest
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	n, err := s.gateway.Resend(r.Context(), req.EventID)
	if err != nil {
		return nil, err
	}
	if n == 0 && req.EventID != "" {
		return nil, errNotFound(fmt.Sprintf("no event set aside has the ID %s", req.EventID))
	}
	return &resendResponse{Requeued: n}, nil
}
