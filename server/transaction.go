package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/fault"
)

// maxTransactionSize caps a transaction body. Synapse sends at most 100 PDUs, 100 EDUs and a
// bounded number of to-device messages per transaction; this leaves ample room.
const maxTransactionSize = 64 << 20

// rawTransaction holds each section unparsed, so one malformed event spoils only itself. It is not
// mautrix's appservice.Transaction, which decodes the whole body in one go: one event with a field
// of the wrong type (a string origin_server_ts) would fail every event of the transaction.
type rawTransaction struct {
	Events           []json.RawMessage `json:"events"`
	Ephemeral        []json.RawMessage `json:"ephemeral"`
	MSC2409Ephemeral []json.RawMessage `json:"de.sorunome.msc2409.ephemeral"`
	ToDevice         []json.RawMessage `json:"to_device"`
	MSC2409ToDevice  []json.RawMessage `json:"de.sorunome.msc2409.to_device"`

	DeviceLists        json.RawMessage `json:"device_lists"`
	MSC3202DeviceLists json.RawMessage `json:"org.matrix.msc3202.device_lists"`
	OTKCounts          json.RawMessage `json:"device_one_time_keys_count"`
	MSC3202OTKCounts   json.RawMessage `json:"org.matrix.msc3202.device_one_time_keys_count"`
	Fallback           json.RawMessage `json:"device_unused_fallback_key_types"`
	MSC3202Fallback    json.RawMessage `json:"org.matrix.msc3202.device_unused_fallback_key_types"`
}

// transaction is a parsed appservice transaction: every section as far as it was valid.
type transaction struct {
	ID          string
	Events      []*event.Event
	Ephemeral   []*event.Event
	ToDevice    []*event.Event
	DeviceLists mautrix.DeviceLists
	OTKCounts   map[id.UserID]map[id.DeviceID]mautrix.OTKCount
	// UnusedFallback lists, per device, the fallback key types the homeserver holds unused.
	UnusedFallback map[id.UserID]map[id.DeviceID][]string
	// Invalid counts the items that could not be parsed and were skipped.
	Invalid int
	// RawEvents and RawEphemeral are the room and ephemeral events as they arrived, every one of
	// them, for gateway mode to pass on to the bridge.
	RawEvents, RawEphemeral []json.RawMessage
}

// ParseTransaction decodes a transaction body. Only a body that is not a JSON object fails;
// malformed events or sections are skipped and counted.
func ParseTransaction(body []byte) (*transaction, error) {
	if trimmed := bytes.TrimSpace(body); len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, errors.New("transaction body is not a JSON object")
	}
	var raw rawTransaction
	invalid := 0
	if err := json.Unmarshal(body, &raw); err != nil {
		// A section of the wrong shape (e.g. "events": 5) fails the whole decode: retry per section.
		var sections map[string]json.RawMessage
		if err2 := json.Unmarshal(body, &sections); err2 != nil {
			return nil, err
		}
		raw = rawTransaction{}
		for name, value := range sections {
			single, _ := json.Marshal(map[string]json.RawMessage{name: value})
			if json.Unmarshal(single, &raw) != nil {
				invalid++
			}
		}
	}
	txn := &transaction{Invalid: invalid, RawEvents: raw.Events, RawEphemeral: firstNonNil(raw.Ephemeral, raw.MSC2409Ephemeral)}
	txn.Events = txn.parseEvents(raw.Events, false)
	txn.Ephemeral = txn.parseEvents(txn.RawEphemeral, false)
	txn.ToDevice = txn.parseEvents(firstNonNil(raw.ToDevice, raw.MSC2409ToDevice), true)
	for _, section := range []json.RawMessage{raw.DeviceLists, raw.MSC3202DeviceLists} {
		if len(section) == 0 {
			continue
		}
		var dl mautrix.DeviceLists
		if err := json.Unmarshal(section, &dl); err != nil {
			txn.Invalid++
			continue
		}
		txn.DeviceLists.Changed = append(txn.DeviceLists.Changed, dl.Changed...)
		txn.DeviceLists.Left = append(txn.DeviceLists.Left, dl.Left...)
	}
	txn.OTKCounts = firstSection[id.UserID, map[id.DeviceID]mautrix.OTKCount](txn, raw.OTKCounts, raw.MSC3202OTKCounts)
	txn.UnusedFallback = firstSection[id.UserID, map[id.DeviceID][]string](txn, raw.Fallback, raw.MSC3202Fallback)
	return txn, nil
}

// firstSection decodes the first of a section's stable and unstable forms that decodes to
// something (null is as good as missing), user by user: a user's entry that does not decode is
// skipped and counted as invalid, and the others count. A section that is no object counts as
// invalid, and the next form is tried.
func firstSection[K ~string, V any](txn *transaction, sections ...json.RawMessage) map[K]V {
	for _, section := range sections {
		if len(section) == 0 {
			continue
		}
		var entries map[K]json.RawMessage
		if err := json.Unmarshal(section, &entries); err != nil {
			txn.Invalid++
			continue
		}
		if entries == nil {
			continue
		}
		out := make(map[K]V, len(entries))
		for key, raw := range entries {
			var v V
			if err := json.Unmarshal(raw, &v); err != nil {
				txn.Invalid++
				continue
			}
			out[key] = v
		}
		return out
	}
	return nil
}

func firstNonNil(a, b []json.RawMessage) []json.RawMessage {
	if a != nil {
		return a
	}
	return b
}

func (txn *transaction) parseEvents(raws []json.RawMessage, toDevice bool) []*event.Event {
	out := make([]*event.Event, 0, len(raws))
	for _, raw := range raws {
		var evt event.Event
		if err := json.Unmarshal(raw, &evt); err != nil || evt.Type.Type == "" {
			txn.Invalid++
			continue
		}
		if toDevice {
			evt.Type.Class = event.ToDeviceEventType
		} else if evt.StateKey != nil {
			evt.Type.Class = event.StateEventType
		} else {
			evt.Type.Class = event.MessageEventType
		}
		// Unknown types stay unparsed (Raw only); known types that fail to parse are skipped.
		if err := evt.Content.ParseRaw(evt.Type); err != nil && !errors.Is(err, event.ErrUnsupportedContentType) {
			txn.Invalid++
			continue
		}
		out = append(out, &evt)
	}
	return out
}

// checkHSToken compares the homeserver's token in constant time. Synapse sends it as a bearer
// token; the legacy access_token query parameter is accepted too.
func (s *Server) checkHSToken(r *http.Request) bool {
	token := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	if token == "" {
		token = r.URL.Query().Get("access_token")
	}
	return subtle.ConstantTimeCompare([]byte(token), []byte(s.cfg.AppService.HSToken)) == 1
}

func (s *Server) handleTransaction(w http.ResponseWriter, r *http.Request) {
	if !s.requireHSToken(w, r) {
		s.metrics.transactions.WithLabelValues("rejected").Inc()
		return
	}
	txnID := r.PathValue("txnID")
	log := zerolog.Ctx(r.Context()).With().Str("txn_id", txnID).Logger()
	ctx := log.WithContext(r.Context())
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxTransactionSize))
	if err != nil {
		s.metrics.transactions.WithLabelValues("rejected").Inc()
		writeError(w, r, errTooLarge("transaction body too large or unreadable"))
		return
	}
	// Serialize transactions: the homeserver sends one at a time per appservice anyway, and the
	// processed-ID check below must not race with a retry of the same ID.
	s.txnLock.Lock()
	defer s.txnLock.Unlock()
	sum := sha256.Sum256(body)
	bodyHash := hex.EncodeToString(sum[:])
	// The homeserver sends the transaction it sent last again only when it did not get heirloom's
	// answer, and then holds heirloom down: its retry carries the same body, or only the events of
	// it. (An older ID again is a homeserver that numbers its transactions afresh after a restart,
	// as Synapse on SQLite does: no retry.)
	retry := txnID == s.lastTxnID
	done, err := s.db.IsTxnProcessed(ctx, txnID, bodyHash)
	if err != nil {
		s.metrics.errors.WithLabelValues("transaction").Inc()
		s.txnFailed(ctx)
		writeError(w, r, err)
		return
	} else if done {
		s.metrics.transactions.WithLabelValues("duplicate").Inc()
		log.Debug().Msg("Ignoring repeated transaction")
		if retry {
			s.retrying = s.sentCounts
			s.sendsAgain(ctx, "the homeserver repeated its last transaction")
		}
		writeJSON(w, http.StatusOK, struct{}{})
		return
	} else if retry {
		s.retrying = s.sentCounts
		s.sendsAgain(ctx, "the homeserver sent its last transaction again, with another body")
	}
	txn, err := ParseTransaction(body)
	if err != nil {
		s.metrics.transactions.WithLabelValues("rejected").Inc()
		writeError(w, r, errNotJSON("transaction body is not a JSON object"))
		return
	}
	txn.ID = txnID
	// Process with a context that outlives the request: the homeserver may time out and retry,
	// but half-processed state must not be abandoned.
	procCtx := context.WithoutCancel(ctx)
	start := time.Now()
	if err = s.take(procCtx, txn, txnID+":"+bodyHash[:16]); errors.Is(err, ErrBridgeBacklog) {
		s.refuseBacklog(procCtx, w, err)
		return
	} else if err != nil {
		s.metrics.transactions.WithLabelValues("failed").Inc()
		log.Err(err).Msg("Failed to take a transaction; the homeserver will send it again")
		s.txnFailed(procCtx)
		writeRespError(w, errInternalError)
		return
	}
	processed := time.Since(start)
	if err = s.db.MarkTxnProcessed(procCtx, txnID, bodyHash); err != nil {
		s.metrics.errors.WithLabelValues("transaction").Inc()
		s.txnFailed(procCtx)
		writeError(w, r, err)
		return
	}
	s.lastTxnID = txnID
	if why := s.resumed(txn); why != "" {
		s.sendsAgain(procCtx, why)
	}
	s.metrics.transactions.WithLabelValues("processed").Inc()
	log.Debug().Dur("processing_took", processed).Dur("took", time.Since(start)).Msg("Transaction handled")
	slowCreateAck(txn)
	writeJSON(w, http.StatusOK, struct{}{})
}

// take records a transaction's room encryption, processes it, and in gateway mode stores the
// bridge's part: the bridge's copy is stored before the homeserver hears the transaction was
// taken. An error means the homeserver must send it again (heirloom's processing is idempotent);
// ErrBridgeBacklog, that the bridge's outbox is full.
func (s *Server) take(ctx context.Context, txn *transaction, txnKey string) error {
	if fault.Active("fail_transactions") {
		return errors.New("the fail_transactions fault point is armed")
	}
	if s.gateway != nil {
		if err := s.gateway.Admit(ctx, txn.RawEvents); err != nil {
			// The bridge is far behind: the homeserver keeps the transaction's events and sends
			// them again. Its keys and device lists would not come again: they are handled now.
			s.processKeys(ctx, txn)
			return err
		}
	}
	if err := s.recordEncryption(ctx, txn.RawEvents); err != nil {
		return err
	}
	s.processTransaction(ctx, txn)
	if s.gateway == nil {
		return nil
	}
	if err := s.gateway.Ingest(ctx, txnKey, txn.RawEvents, txn.RawEphemeral); err != nil {
		return fmt.Errorf("failed to store the bridge's part of the transaction: %w", err)
	}
	return nil
}

// slowCreateAck holds the answer to a transaction with an m.room.create back 3 s when the
// slow_create_ack fault point is armed: the homeserver holds the rest of the new room's state
// back meanwhile.
func slowCreateAck(txn *transaction) {
	if fault.Active("slow_create_ack") && slices.ContainsFunc(txn.Events, func(evt *event.Event) bool { return evt.Type == event.StateCreate }) {
		time.Sleep(3 * time.Second)
	}
}

// refuseBacklog answers a transaction heirloom does not take because the bridge's outbox is full:
// 503, for the homeserver to hold it and send it again.
func (s *Server) refuseBacklog(ctx context.Context, w http.ResponseWriter, err error) {
	s.metrics.transactions.WithLabelValues("refused").Inc()
	zerolog.Ctx(ctx).Warn().Err(err).Msg("Refusing the homeserver's transaction until the bridge catches up; the homeserver will send it again")
	s.txnFailed(ctx)
	writeRespError(w, errBridgeBacklog)
}

// recordEncryption records every m.room.encryption state event of the transaction as it arrived,
// whatever its content (one mautrix cannot parse is not among txn.Events): the room is encrypted
// from now on (e2ee.Manager.RoomEncrypted). A membership event drops the homeserver's word that the
// room is unencrypted given to its user (it may be the room's state at their leave).
func (s *Server) recordEncryption(ctx context.Context, events []json.RawMessage) error {
	for _, raw := range events {
		var head struct {
			Type     string          `json:"type"`
			StateKey *string         `json:"state_key"`
			RoomID   id.RoomID       `json:"room_id"`
			Content  json.RawMessage `json:"content"`
		}
		if json.Unmarshal(raw, &head) != nil || head.StateKey == nil || head.RoomID == "" {
			continue
		}
		if head.Type == event.StateMember.Type {
			s.mgr.ForgetPlaintext(head.RoomID, id.UserID(*head.StateKey))
		}
		if head.Type != event.StateEncryption.Type || *head.StateKey != "" {
			continue
		}
		if err := s.mgr.RecordEncryption(ctx, head.RoomID, head.Content); err != nil {
			return err
		}
	}
	return nil
}

// heldDown is called when the homeserver has, or will have, held heirloom to be down: it sends its
// last transaction again, or heirloom answers one with an error. Synapse keeps only the events of
// the transactions it queues meanwhile for its retries, and drops their device-list changes, so every device list heirloom tracks is fetched again before a room key is next shared
// with its user: a device added meanwhile gets the key, and a device removed meanwhile does not.
func (s *Server) heldDown(ctx context.Context, why string) {
	if err := s.mgr.MarkDeviceListsOutdated(ctx); err != nil {
		zerolog.Ctx(ctx).Err(err).Str("reason", why).Msg("Failed to mark device lists outdated")
		return
	}
	zerolog.Ctx(ctx).Info().Str("reason", why).
		Msg("Marked every tracked device list outdated: the homeserver drops device-list changes while it holds heirloom down")
}

// resumed says, for a transaction just taken (under txnLock), why it shows the homeserver sending
// again after holding heirloom down, or "" if it does not. Besides a transaction taken after a
// failed one: Synapse puts the one-time key counts of the appservice sender's devices (MSC3202) in
// every transaction it sends live, once the sender has a device or cross-signing keys, and none in
// one it stored while it held heirloom down and now retries, which carries its room events only,
// if any (one that held only to-device messages or receipts comes back empty). So once a
// transaction counted the sender's keys, one with no counts and nothing but room events is such a
// retry, whatever held heirloom down (heirloom was unreachable, a proxy failed); the first live
// one after the retries ends them, and what the homeserver queued until then was dropped too.
func (s *Server) resumed(txn *transaction) string {
	failed := s.txnFailures.Swap(false)
	live := len(txn.OTKCounts) > 0
	storedOnly := !live && len(txn.Ephemeral) == 0 && len(txn.ToDevice) == 0 &&
		len(txn.DeviceLists.Changed) == 0 && len(txn.DeviceLists.Left) == 0 && len(txn.UnusedFallback) == 0
	switch {
	case live:
		if _, ok := txn.OTKCounts[s.cfg.SenderUserID()]; ok {
			s.sentCounts = true
		}
		if s.retrying {
			s.retrying = false
			return "the homeserver sends live again after retrying what it stored while it held heirloom down"
		}
	case s.sentCounts && storedOnly && !s.retrying:
		s.retrying = true
		return "the homeserver retries a transaction it stored while it held heirloom down"
	}
	if failed {
		return "the first transaction taken after a failed one"
	}
	return ""
}

// sendsAgain is called when the homeserver sends again after holding heirloom down: besides the
// device lists, the to-device messages it queued meanwhile were dropped, and wait in the devices'
// inboxes: the loaded puppets' inboxes are swept.
func (s *Server) sendsAgain(ctx context.Context, why string) {
	s.heldDown(ctx, why)
	s.mgr.SweepAfterHeldDown(ctx, why)
}

// txnFailed is called when heirloom answers a transaction with an error: the homeserver holds it
// down from now on, until a retry succeeds, and what it queues meanwhile loses its device lists.
// The lists are marked outdated now and again after the first transaction taken.
func (s *Server) txnFailed(ctx context.Context) {
	s.txnFailures.Store(true)
	s.heldDown(ctx, "a transaction failed")
}

// processTransaction applies a transaction in order: room state first (so encryption and
// membership are known), then to-device messages, key counts and device lists (new devices of
// invitees may get their invite's bundle), then the reactions to events (invites, joins), each
// event then going to OnRoomEvent (heirloom's bot).
func (s *Server) processTransaction(ctx context.Context, txn *transaction) {
	log := zerolog.Ctx(ctx)
	log.Debug().
		Int("events", len(txn.Events)).Int("ephemeral", len(txn.Ephemeral)).Int("to_device", len(txn.ToDevice)).
		Int("device_list_changes", len(txn.DeviceLists.Changed)).Int("otk_count_users", len(txn.OTKCounts)).
		Int("invalid", txn.Invalid).Msg("Processing transaction")
	if txn.Invalid > 0 {
		s.metrics.errors.WithLabelValues("transaction_parse").Add(float64(txn.Invalid))
		log.Warn().Int("invalid", txn.Invalid).Msg("Skipped malformed items in transaction")
	}
	for _, evt := range txn.Events {
		s.metrics.events.WithLabelValues("events", eventTypeLabel(evt.Type.Type)).Inc()
		s.trackState(ctx, evt)
	}
	for _, evt := range txn.Ephemeral {
		s.metrics.events.WithLabelValues("ephemeral", eventTypeLabel(evt.Type.Type)).Inc()
	}
	s.processKeys(ctx, txn)
	for _, evt := range txn.Events {
		s.reactToEvent(ctx, evt)
		s.OnRoomEvent(ctx, evt)
	}
}

// processKeys applies what a transaction brings for heirloom's devices: to-device messages,
// one-time-key counts, unused fallback keys and device lists (new devices of invitees may get their invite's bundle).
func (s *Server) processKeys(ctx context.Context, txn *transaction) {
	for _, evt := range txn.ToDevice {
		s.metrics.events.WithLabelValues("to_device", eventTypeLabel(evt.Type.Type)).Inc()
		s.mgr.RouteToDevice(ctx, evt)
	}
	for userID, devices := range txn.OTKCounts {
		for deviceID, count := range devices {
			s.mgr.RouteOTKCounts(ctx, userID, deviceID, count)
		}
	}
	for userID, devices := range txn.UnusedFallback {
		for deviceID, unused := range devices {
			s.mgr.RouteUnusedFallbackKeys(ctx, userID, deviceID, unused)
		}
	}
	s.mgr.RouteDeviceListChanges(ctx, txn.DeviceLists.Changed)
	s.history.DeviceListsChanged(ctx, txn.DeviceLists.Changed)
}

// trackState records room state from the transaction, with the history visibility heirloom knew
// before the event (the first one it learns changes nothing).
func (s *Server) trackState(ctx context.Context, evt *event.Event) {
	if evt.StateKey == nil || evt.RoomID == "" {
		return
	}
	var previous *event.HistoryVisibilityEventContent
	if evt.Type == event.StateHistoryVisibility {
		var err error
		if previous, err = s.db.StateStore.GetHistoryVisibility(ctx, evt.RoomID); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Stringer("room_id", evt.RoomID).Msg("Failed to read the known history visibility")
		}
	}
	s.applyState(ctx, evt, previous)
}

// applyState records a state event and marks the room for session rotation if the event is a
// change that ends its outbound sessions (e2ee.RoomChangeOf: a departure, or a visibility other
// than previous). A send also checks the member list itself, so a late transaction only adds
// safety; the visibility comparison keeps the echo of heirloom's own change from rotating twice.
func (s *Server) applyState(ctx context.Context, evt *event.Event, previous *event.HistoryVisibilityEventContent) {
	if evt.Type == event.StateMember && s.cfg.IsManaged(id.UserID(evt.GetStateKey())) {
		s.history.TrackMembership(ctx, evt)
	}
	mautrix.UpdateStateStore(ctx, s.db.StateStore, evt)
	s.noteInviteEncryption(ctx, evt)
	if change, ok := e2ee.RoomChangeOf(evt, previous); ok {
		// At the event's own time, so a late transaction of a departure does not rotate a session
		// created after it (the send path already rotated for it, from the member list); never
		// later than now, so a timestamp from the future cannot pin the room's rotation mark.
		at := change.At
		if now := time.Now(); at.After(now) {
			at = now
		}
		if err := s.db.RequireRotation(ctx, evt.RoomID, at); err != nil {
			zerolog.Ctx(ctx).Err(err).Stringer("room_id", evt.RoomID).Msg("Failed to mark room for session rotation")
		}
	}
}

// reactToEvent handles events heirloom acts on: invites of puppets and invites sent by puppets,
// and puppets' joins (a bundle from the inviter may be imported now).
func (s *Server) reactToEvent(ctx context.Context, evt *event.Event) {
	if evt.Type != event.StateMember || evt.StateKey == nil {
		return
	}
	member := evt.Content.AsMember()
	target := id.UserID(*evt.StateKey)
	log := zerolog.Ctx(ctx).With().Stringer("room_id", evt.RoomID).Stringer("sender", evt.Sender).
		Stringer("target", target).Stringer("event_id", evt.ID).Logger()
	ctx = log.WithContext(ctx)
	switch member.Membership {
	case event.MembershipInvite:
		if s.cfg.IsManaged(evt.Sender) {
			s.history.InviteSent(ctx, evt)
		}
		if s.cfg.IsPuppet(target) {
			s.history.InviteReceived(ctx, evt)
		} else if target == s.cfg.BotUserID() {
			log.Info().Msg("Bot was invited to a room")
		}
	case event.MembershipJoin:
		if s.cfg.IsManaged(target) {
			s.history.ObserveJoin(ctx, evt)
		} else {
			s.history.InviteeJoined(ctx, evt)
		}
	}
}

// handlePing answers the homeserver's appservice ping (MSC2659).
func (s *Server) handlePing(w http.ResponseWriter, r *http.Request) {
	if !s.requireHSToken(w, r) {
		return
	}
	var body struct {
		TransactionID string `json:"transaction_id"`
	}
	_ = json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&body)
	zerolog.Ctx(r.Context()).Debug().Str("ping_txn_id", body.TransactionID).Msg("Received ping from homeserver")
	s.lastPing.Store(time.Now().UnixMilli())
	writeJSON(w, http.StatusOK, struct{}{})
}
