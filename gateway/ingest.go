package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/server"
)

// Ingest stores what a homeserver transaction brings for the bridge, after heirloom has handled
// its E2EE parts (to-device messages, device lists, keys), so an event whose key came in the same
// transaction is decrypted: the room events the bridge is interested in, in order, decrypted
// where a bridge user holds the key (waiting for it, holding back only their room, where none
// does yet), and the ephemeral events if the bridge's registration asks for them. To-device
// messages are for heirloom's devices and never go on. It returns once everything is stored:
// the homeserver's transaction may be acknowledged only then. txnKey identifies the transaction
// (its ID and body hash), for the ephemeral events, which have no ID of their own. While the
// outbox is over gateway.max_outbox_size (Admit took the transaction), the events of rooms over
// their share of it are set aside as they arrive, and the ephemeral events are dropped. It fails,
// storing nothing, when heirloom cannot tell whether the bridge should get an event: the
// homeserver sends the transaction again.
func (g *Gateway) Ingest(ctx context.Context, txnKey string, events, ephemeral []json.RawMessage) error {
	full := g.OutboxFull()
	out, err := g.roomEvents(ctx, events)
	if err != nil {
		return err
	}
	if full {
		g.setAsideOverShare(ctx, out)
	} else if g.wantsEphemeral() {
		more, err := g.ephemeralEvents(ctx, txnKey, ephemeral)
		if err != nil {
			return err
		}
		out = append(out, more...)
	}
	if g.beforeStore != nil {
		g.beforeStore()
	}
	if err = g.db.PutGatewayEvents(ctx, out); err != nil {
		return err
	}
	for _, e := range out {
		if e.Seq == 0 {
			continue // stored already
		}
		if e.DeadAt > 0 {
			g.metrics.deadLetters.Inc()
			continue
		}
		g.outboxBytes.Add(e.Size)
		if e.Waiting {
			// Its key may have been stored between the decryption that missed it and now, and
			// KeysArrived found nothing waiting then: look again.
			g.noteSession(e.SessionID)
		}
	}
	if len(out) > 0 {
		g.nudge()
	}
	return nil
}

// roomEvents returns the bridge's copies of the room events it is interested in.
func (g *Gateway) roomEvents(ctx context.Context, events []json.RawMessage) ([]*database.GatewayEvent, error) {
	now := g.now()
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
		if ok, err := g.interested(ctx, head.RoomID, head.Sender, head.StateKey); err != nil {
			return nil, err
		} else if !ok {
			continue
		}
		e := &database.GatewayEvent{Key: string(head.ID), EventID: head.ID, RoomID: head.RoomID, Kind: database.GatewayRoomEvent,
			Body: string(raw)}
		if head.Type == event.EventEncrypted.Type && head.StateKey == nil {
			g.decryptInto(ctx, e, raw, now)
		}
		out = append(out, e)
	}
	return out, nil
}

// ephemeralEvents returns the bridge's copies of the ephemeral events of its rooms, and of those of
// no room (presence) about its users or users who share a room with them.
func (g *Gateway) ephemeralEvents(ctx context.Context, txnKey string, ephemeral []json.RawMessage) ([]*database.GatewayEvent, error) {
	var out []*database.GatewayEvent
	for i, raw := range ephemeral {
		var head struct {
			RoomID id.RoomID `json:"room_id"`
			Sender id.UserID `json:"sender"`
		}
		if json.Unmarshal(raw, &head) != nil {
			continue
		}
		var ok bool
		var err error
		if head.RoomID != "" {
			ok, err = g.interested(ctx, head.RoomID, "", nil)
		} else {
			ok, err = g.presenceForBridge(ctx, head.Sender)
		}
		if err != nil {
			return nil, err
		} else if !ok {
			continue
		}
		out = append(out, &database.GatewayEvent{Key: fmt.Sprintf("%s:%d", txnKey, i), RoomID: head.RoomID,
			Kind: database.GatewayEphemeral, Body: string(raw)})
	}
	return out, nil
}

// decryptInto decrypts an encrypted event for the bridge, or marks it waiting for its key.
func (g *Gateway) decryptInto(ctx context.Context, e *database.GatewayEvent, raw json.RawMessage, now time.Time) {
	plain, session, err := g.decryptForBridge(ctx, raw, "")
	switch {
	case err == nil:
		e.Body, e.Original = string(plain), string(raw)
	case keyMayArrive(err) || err == errNoReader:
		// The key may be on its way (a to-device message the homeserver sends later; a withheld
		// answer is no final one): hold the room back for decrypt_wait; then the event goes on
		// encrypted and its decrypted copy follows the key (compose, applyArrivedKeys).
		e.Waiting, e.SessionID, e.WaitUntil = true, session, now.Add(g.cfg.Gateway.Wait()).UnixMilli()
		g.metrics.waits.Inc()
		if err == errNoReader {
			go g.ensureReader(context.WithoutCancel(ctx), e.RoomID)
		} else {
			g.recoverKey(ctx, raw)
		}
	default:
		g.metrics.decryptFailures.WithLabelValues(failureReason(err)).Inc()
		zerolog.Ctx(ctx).Debug().Err(err).Stringer("event_id", e.EventID).Msg("Forwarding an event heirloom does not decrypt for the bridge as it is")
	}
}

// interested reports whether the bridge's own registration would have given it the event: its
// users are the sender or the subject, the room lies in its namespace, or one of its users is in
// the room. (Synapse pushes what heirloom's registration, the bridge's namespaces and heirloom's
// puppets', asks for.) When the room's members cannot be read, it fails: a room of heirloom's own
// puppets never goes to the bridge on a guess.
func (g *Gateway) interested(ctx context.Context, roomID id.RoomID, sender id.UserID, stateKey *string) (bool, error) {
	if g.cfg.IsBridgeUser(sender) || (stateKey != nil && g.cfg.IsBridgeUser(id.UserID(*stateKey))) || g.bridge.IsRoom(roomID) {
		return true, nil
	}
	if roomID == "" {
		return true, nil
	}
	members, err := g.db.StateStore.GetRoomJoinedOrInvitedMembers(ctx, roomID)
	if err != nil {
		return false, fmt.Errorf("failed to read the members of %s: %w", roomID, err)
	}
	for _, u := range members {
		if g.cfg.IsBridgeUser(u) {
			return true, nil
		}
	}
	return false, nil
}

// presenceForBridge reports whether the bridge's own registration would have given it the presence
// of the user (Synapse's is_interested_in_presence): a user of its namespace, or one in a room the
// bridge is interested in. Synapse pushes heirloom the presence of everyone who shares a room with
// heirloom's own puppets too; that is not the bridge's to know.
func (g *Gateway) presenceForBridge(ctx context.Context, userID id.UserID) (bool, error) {
	if userID == "" {
		return false, nil
	}
	if userID == g.bridge.Bot || g.cfg.IsBridgeUser(userID) {
		return true, nil
	}
	rooms, err := g.db.JoinedRooms(ctx, userID)
	if err != nil {
		return false, err
	}
	for _, roomID := range rooms {
		if ok, err := g.interested(ctx, roomID, "", nil); err != nil || ok {
			return ok, err
		}
	}
	return false, nil
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

// OutboxFull reports whether the events stored for the bridge and not yet acknowledged are over
// gateway.max_outbox_size.
func (g *Gateway) OutboxFull() bool {
	return g.outboxBytes.Load() >= g.cfg.Gateway.OutboxCap()
}

// Admit decides whether heirloom takes a homeserver transaction now, or refuses it
// (server.ErrBridgeBacklog) for the homeserver to send again later. Below
// gateway.max_outbox_size it takes everything. Over it, one room must not stop the others: the
// transaction is taken while the rooms' shares of the outbox (each counted up to a quarter of
// gateway.max_outbox_size) are below it, and the new events of the rooms over their share are set
// aside as they arrive (Ingest; dead letters an operator can resend). Only an outbox full across
// many rooms refuses the homeserver's transactions. While the bridge is down every room waits
// alike: everything over the cap is refused and nothing is set aside.
func (g *Gateway) Admit(ctx context.Context, _ []json.RawMessage) error {
	if !g.OutboxFull() {
		return nil
	}
	backlog := fmt.Errorf("%w: %d bytes waiting, gateway.max_outbox_size is %d", server.ErrBridgeBacklog, g.outboxBytes.Load(),
		g.cfg.Gateway.OutboxCap())
	if g.backingOff.Load() {
		return backlog
	}
	excess, err := g.db.GatewayOutboxExcess(ctx, g.roomShare())
	if err != nil {
		return fmt.Errorf("%w (%w)", backlog, err)
	}
	if g.outboxBytes.Load()-excess >= g.cfg.Gateway.OutboxCap() {
		return backlog
	}
	return nil
}

// roomShare is the part of gateway.max_outbox_size one room may hold before its refused events
// are set aside at once, and, while the outbox is full, its new events as they arrive.
func (g *Gateway) roomShare() int64 { return g.cfg.Gateway.OutboxCap() / roomShares }

// setAsideOverShare marks the events of rooms over their share of the outbox to be stored set
// aside (Admit); the others are stored as usual.
func (g *Gateway) setAsideOverShare(ctx context.Context, out []*database.GatewayEvent) {
	over := map[id.RoomID]bool{}
	now := g.now().UnixMilli()
	for _, e := range out {
		if _, seen := over[e.RoomID]; !seen {
			over[e.RoomID] = e.RoomID != "" && g.overShare(ctx, e.RoomID)
			if over[e.RoomID] {
				zerolog.Ctx(ctx).Error().Stringer("room_id", e.RoomID).Msg("The outbox is full and the room holds more than its share of it: " +
					"its new events are set aside; deliver them again with POST /_heirloom/v1/gateway/dead_letters/resend once the bridge caught up")
			}
		}
		if over[e.RoomID] {
			e.DeadAt, e.LastError = now, "set aside on arrival: the outbox was full and the room held more than its share of it"
		}
	}
}
