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
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/server"
)

// Ingest stores what a homeserver transaction brings for the bridge, after heirloom has handled
// its E2EE parts (to-device messages, device lists, keys), so an event whose key came in the same
// transaction is decrypted: the room events the bridge is interested in, in order, decrypted
// where a bridge user holds the key (waiting for it, holding back only their room, where none
// does yet), and the ephemeral events if the bridge's registration asks for them. To-device
// messages are for heirloom's devices and never go on. It returns once everything is stored:
// the homeserver's transaction may be acknowledged only then. txnKey identifies the transaction
// (its ID and body hash), for the ephemeral events, which have no ID of their own. It fails,
// storing nothing, when the outbox is over gateway.max_outbox_size (server.ErrBridgeBacklog) or
// when heirloom cannot tell whether the bridge should get an event: the homeserver sends the
// transaction again.
func (g *Gateway) Ingest(ctx context.Context, txnKey string, events, ephemeral []json.RawMessage) error {
	if g.OutboxFull() {
		return fmt.Errorf("%w: %d bytes waiting, gateway.max_outbox_size is %d", server.ErrBridgeBacklog, g.outboxBytes.Load(),
			g.cfg.Gateway.OutboxCap())
	}
	out, err := g.roomEvents(ctx, events)
	if err != nil {
		return err
	}
	if g.wantsEphemeral() {
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

// ephemeralEvents returns the bridge's copies of the ephemeral events of its rooms (and those of
// no room, such as presence).
func (g *Gateway) ephemeralEvents(ctx context.Context, txnKey string, ephemeral []json.RawMessage) ([]*database.GatewayEvent, error) {
	var out []*database.GatewayEvent
	for i, raw := range ephemeral {
		var head struct {
			RoomID id.RoomID `json:"room_id"`
		}
		if json.Unmarshal(raw, &head) != nil {
			continue
		}
		if head.RoomID != "" {
			if ok, err := g.interested(ctx, head.RoomID, "", nil); err != nil {
				return nil, err
			} else if !ok {
				continue
			}
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
		e.Body = string(plain)
	case e2ee.IsMissingKey(err) || err == errNoReader:
		// The key may be on its way (a to-device message the homeserver sends later): hold the
		// room back for decrypt_wait; then the event goes on encrypted and its decrypted copy
		// follows the key (compose, applyArrivedKeys).
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
// gateway.max_outbox_size: the homeserver's transactions are refused until the bridge catches up.
func (g *Gateway) OutboxFull() bool {
	return g.outboxBytes.Load() >= g.cfg.Gateway.OutboxCap()
}
