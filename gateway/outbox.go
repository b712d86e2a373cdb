package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/fault"
	"github.com/heirloom-matrix/heirloom/lease"
)

// maxTxnEvents is how many events one transaction to the bridge carries at most (the homeserver
// sends at most 100 room events per transaction; bridges are used to that).
const maxTxnEvents = 100

// Ingest stores what a homeserver transaction brings for the bridge, after heirloom has handled
// its E2EE parts (to-device messages, device lists, keys), so an event whose key came in the same
// transaction is decrypted: the room events the bridge is interested in, in order, decrypted
// where a bridge user holds the key (waiting for it, holding back only their room, where none
// does yet), and the ephemeral events if the bridge's registration asks for them. To-device
// messages are for heirloom's devices and never go on. It returns once everything is stored:
// the homeserver's transaction may be acknowledged only then. txnKey identifies the transaction
// (its ID and body hash), for the ephemeral events, which have no ID of their own.
func (g *Gateway) Ingest(ctx context.Context, txnKey string, events, ephemeral []json.RawMessage) error {
	now := time.Now()
	var out []*database.GatewayEvent
	for _, raw := range events {
		var head struct {
			ID       id.EventID `json:"event_id"`
			Type     string     `json:"type"`
			RoomID   id.RoomID  `json:"room_id"`
			Sender   id.UserID  `json:"sender"`
			StateKey *string    `json:"state_key"`
		}
		if err := json.Unmarshal(raw, &head); err != nil || head.ID == "" {
			continue // ParseTransaction counted it as invalid already
		}
		if !g.interested(ctx, head.RoomID, head.Sender, head.StateKey) {
			continue
		}
		e := &database.GatewayEvent{Key: string(head.ID), EventID: head.ID, RoomID: head.RoomID, Kind: database.GatewayRoomEvent,
			Body: string(raw)}
		if head.Type == event.EventEncrypted.Type && head.StateKey == nil {
			g.decryptInto(ctx, e, raw, now)
		}
		out = append(out, e)
	}
	if g.wantsEphemeral() {
		for i, raw := range ephemeral {
			var head struct {
				RoomID id.RoomID `json:"room_id"`
			}
			if json.Unmarshal(raw, &head) != nil {
				continue
			}
			if head.RoomID != "" && !g.interested(ctx, head.RoomID, "", nil) {
				continue
			}
			out = append(out, &database.GatewayEvent{Key: fmt.Sprintf("%s:%d", txnKey, i), RoomID: head.RoomID,
				Kind: database.GatewayEphemeral, Body: string(raw)})
		}
	}
	if err := g.db.PutGatewayEvents(ctx, out); err != nil {
		return err
	}
	if len(out) > 0 {
		g.nudge()
	}
	return nil
}

// decryptInto decrypts an encrypted event for the bridge, or marks it waiting for its key.
func (g *Gateway) decryptInto(ctx context.Context, e *database.GatewayEvent, raw json.RawMessage, now time.Time) {
	plain, session, err := g.decryptForBridge(ctx, raw, "")
	switch {
	case err == nil:
		e.Body = string(plain)
	case e2ee.IsMissingKey(err) || err == errNoReader:
		// The key may be on its way (a to-device message the homeserver sends later): hold the
		// room back for decrypt_wait; then the event goes on encrypted and its decrypted copy
		// follows the key (database.ComposeGatewayTxn, keysArrived).
		e.Waiting, e.SessionID, e.WaitUntil = true, session, now.Add(g.cfg.Gateway.Wait()).UnixMilli()
		g.metrics.waits.Inc()
		if err == errNoReader {
			go g.ensureReader(context.WithoutCancel(ctx), e.RoomID)
		}
	default:
		g.metrics.decryptFailures.WithLabelValues(failureReason(err)).Inc()
		zerolog.Ctx(ctx).Debug().Err(err).Stringer("event_id", e.EventID).Msg("Forwarding an event heirloom cannot decrypt as it is")
	}
}

// interested reports whether the bridge's own registration would have given it the event: its
// users are the sender or the subject, the room lies in its namespace, or one of its users is in
// the room. (Synapse pushes what heirloom's registration, the bridge's namespaces and heirloom's
// puppets', asks for.)
func (g *Gateway) interested(ctx context.Context, roomID id.RoomID, sender id.UserID, stateKey *string) bool {
	if g.cfg.IsBridgeUser(sender) || (stateKey != nil && g.cfg.IsBridgeUser(id.UserID(*stateKey))) || g.bridge.IsRoom(roomID) {
		return true
	}
	if roomID == "" {
		return true
	}
	members, err := g.db.StateStore.GetRoomJoinedOrInvitedMembers(ctx, roomID)
	if err != nil {
		return true // when in doubt, the bridge decides
	}
	for _, u := range members {
		if g.cfg.IsBridgeUser(u) {
			return true
		}
	}
	return false
}

// wantsEphemeral reports whether the bridge's registration asks for ephemeral events.
func (g *Gateway) wantsEphemeral() bool {
	return g.bridge.Registration.EphemeralEvents || g.bridge.Registration.SoruEphemeralEvents
}

// ensureReader gives the room a bridge user with an E2EE device, so that senders share their
// keys with it from now on: the bot if it is in the room, else the first bridge member.
func (g *Gateway) ensureReader(ctx context.Context, roomID id.RoomID) {
	if len(g.readers(ctx, roomID, "")) > 0 {
		return
	}
	members, err := g.db.StateStore.GetRoomJoinedOrInvitedMembers(ctx, roomID)
	if err != nil {
		return
	}
	var pick id.UserID
	for _, u := range members {
		if u == g.bridge.Bot {
			pick = u
			break
		} else if pick == "" && g.cfg.IsBridgeUser(u) {
			pick = u
		}
	}
	if pick == "" {
		return
	}
	if _, err = g.identity(ctx, pick); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Stringer("room_id", roomID).Stringer("user_id", pick).
			Msg("Failed to give the room a reader")
	}
}

// KeysArrived is the e2ee.Manager's session hook: a bridge user stored a megolm session, so the
// events waiting for it, and those the bridge got encrypted, can be decrypted now. It only notes
// the session: the hook runs where sessions are stored (inside a bundle import's transaction).
func (g *Gateway) KeysArrived(_ context.Context, p *e2ee.Puppet, _ id.RoomID, sessionID id.SessionID) {
	if !g.cfg.IsBridgeUser(p.UserID) {
		return
	}
	g.keysLock.Lock()
	g.keys[sessionID] = struct{}{}
	g.keysLock.Unlock()
	g.nudge()
}

func (g *Gateway) nudge() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// applyArrivedKeys decrypts what waits for the sessions that arrived: waiting events in place, and
// a decrypted copy (same event ID) of each event the bridge already got encrypted.
func (g *Gateway) applyArrivedKeys(ctx context.Context) {
	g.keysLock.Lock()
	sessions := g.keys
	g.keys = make(map[id.SessionID]struct{})
	g.keysLock.Unlock()
	for sessionID := range sessions {
		waiting, err := g.db.WaitingGatewayEvents(ctx, sessionID)
		if err != nil {
			zerolog.Ctx(ctx).Err(err).Msg("Failed to read events waiting for a key")
		}
		for _, e := range waiting {
			plain, _, err := g.decryptForBridge(ctx, json.RawMessage(e.Body), "")
			if err != nil {
				continue
			}
			if ok, err := g.db.ResolveGatewayEvent(ctx, e.Seq, string(plain)); err != nil {
				zerolog.Ctx(ctx).Err(err).Msg("Failed to store a decrypted event")
			} else if ok {
				g.metrics.waitEnded.WithLabelValues("decrypted").Inc()
			}
		}
		late, err := g.db.LateGatewayEvents(ctx, sessionID)
		if err != nil {
			zerolog.Ctx(ctx).Err(err).Msg("Failed to read events sent encrypted")
		}
		for _, l := range late {
			plain, _, err := g.decryptForBridge(ctx, json.RawMessage(l.Body), "")
			if err != nil {
				continue
			}
			err = g.db.PutGatewayEvents(ctx, []*database.GatewayEvent{{Key: string(l.EventID) + ":decrypted", EventID: l.EventID,
				RoomID: l.RoomID, Kind: database.GatewayRoomEvent, Body: string(plain)}})
			if err == nil {
				err = g.db.DeleteGatewayLate(ctx, l.EventID)
			}
			if err != nil {
				zerolog.Ctx(ctx).Err(err).Stringer("event_id", l.EventID).Msg("Failed to queue the decrypted copy of an event")
				continue
			}
			g.metrics.lateDecrypted.Inc()
		}
	}
}

// runDelivery delivers the bridge's transactions in order until ctx ends: the oldest one not
// acknowledged is sent again (same ID, same events) with a doubling backoff, across bridge
// downtime and heirloom restarts; then the next is composed.
func (g *Gateway) runDelivery(ctx context.Context) {
	log := zerolog.Ctx(ctx)
	var lastFailure time.Time
	for ctx.Err() == nil {
		g.applyArrivedKeys(ctx)
		g.updateDepth(ctx)
		if fault.Active("gateway_hold_delivery") {
			g.sleep(ctx, time.Second)
			continue
		}
		txn, err := g.db.PendingGatewayTxn(ctx)
		if err == nil && txn == nil {
			txn, err = g.db.ComposeGatewayTxn(ctx, maxTxnEvents, time.Now().UnixMilli(), g.recordLate)
		}
		if err != nil {
			log.Err(err).Msg("Failed to prepare a transaction for the bridge")
			g.sleep(ctx, time.Second)
			continue
		}
		if txn == nil {
			g.sleep(ctx, 250*time.Millisecond) // a waiting event's deadline is checked this often
			continue
		}
		// A bridge that calls heirloom is up, or about to be (bridges call the homeserver before
		// they listen): its backoff ends, as the appservice ping ends the homeserver's, but it is
		// tried at most once a second.
		wait := time.Until(time.UnixMilli(txn.NextAttempt))
		if wait > 0 && g.bridgeAlive.Load() {
			wait = min(wait, time.Until(lastFailure.Add(time.Second)))
		}
		if wait > 0 {
			g.sleep(ctx, wait)
			continue
		}
		g.bridgeAlive.Store(false)
		start := time.Now()
		if err = g.deliver(ctx, txn); errors.Is(err, lease.ErrNotActive) {
			// The process lost its lease: the transaction is the next active process's to deliver.
			return
		} else if err != nil {
			backoff := min(time.Second<<min(txn.Attempts, 9), 5*time.Minute)
			log.Warn().Err(err).Int64("bridge_txn_id", txn.ID).Int("attempt", txn.Attempts+1).Dur("retry_in", backoff).
				Msg("Failed to deliver a transaction to the bridge; retrying")
			g.metrics.deliveries.WithLabelValues("failed").Inc()
			g.backingOff.Store(true)
			lastFailure = time.Now()
			if err = g.db.RetryGatewayTxn(ctx, txn.ID, time.Now().Add(backoff).UnixMilli(), err.Error()); err != nil {
				log.Err(err).Msg("Failed to record a failed delivery")
			}
			continue
		}
		g.metrics.deliveries.WithLabelValues("delivered").Inc()
		if g.backingOff.Swap(false) {
			log.Info().Int64("bridge_txn_id", txn.ID).Int("attempts", txn.Attempts+1).Msg("The bridge is reachable again")
		}
		for _, e := range txn.Events {
			g.metrics.latency.Observe(time.Since(time.UnixMilli(e.ReceivedAt)).Seconds())
		}
		if err = g.db.FinishGatewayTxn(ctx, txn.ID); err != nil {
			log.Err(err).Msg("Failed to forget a delivered transaction; it will be delivered again")
		}
		log.Debug().Int64("bridge_txn_id", txn.ID).Int("events", len(txn.Events)).Dur("took", time.Since(start)).
			Msg("Delivered a transaction to the bridge")
	}
}

// recordLate remembers an event whose wait ended without its key: it goes to the bridge encrypted,
// and its decrypted copy follows when the key arrives.
func (g *Gateway) recordLate(ctx context.Context, e *database.GatewayEvent) error {
	g.metrics.waitEnded.WithLabelValues("timed_out").Inc()
	return g.db.PutGatewayLate(ctx, &database.GatewayLate{EventID: e.EventID, RoomID: e.RoomID, SessionID: e.SessionID, Body: e.Body})
}

func (g *Gateway) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-g.wake:
	case <-t.C:
	}
}

func (g *Gateway) updateDepth(ctx context.Context) {
	if n, err := g.db.CountGatewayEvents(ctx); err == nil {
		g.metrics.depth.Set(float64(n))
	}
}

// deliver sends one transaction to the bridge, with the bridge's hs_token.
func (g *Gateway) deliver(ctx context.Context, txn *database.GatewayTxn) error {
	body := struct {
		Events      []json.RawMessage `json:"events"`
		Ephemeral   []json.RawMessage `json:"ephemeral,omitempty"`
		SoruEphemer []json.RawMessage `json:"de.sorunome.msc2409.ephemeral,omitempty"`
	}{Events: []json.RawMessage{}}
	var ephemeral []json.RawMessage
	for _, e := range txn.Events {
		if e.Kind == database.GatewayEphemeral {
			ephemeral = append(ephemeral, json.RawMessage(e.Body))
		} else {
			body.Events = append(body.Events, json.RawMessage(e.Body))
		}
	}
	// Both names, as the bridge's registration asks: matrix-appservice reads only the unstable one.
	if g.bridge.Registration.EphemeralEvents {
		body.Ephemeral = ephemeral
	}
	if g.bridge.Registration.SoruEphemeralEvents {
		body.SoruEphemer = ephemeral
	}
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	url := g.bridge.URL + "/_matrix/app/v1/transactions/" + strconv.FormatInt(txn.ID, 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+g.bridge.Registration.ServerToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.deliverer.Do(req)
	if err != nil {
		return fmt.Errorf("failed to reach the bridge: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("the bridge answered %d", resp.StatusCode)
	}
	return nil
}
