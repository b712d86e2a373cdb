package gateway

import (
	"context"
	"encoding/json"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
)

// KeysArrived is the e2ee.Manager's session hook: a bridge user stored a megolm session, so the
// events waiting for it, and those the bridge got encrypted, can be decrypted now. It only notes
// the session: the hook runs where sessions are stored (inside a bundle import's transaction).
func (g *Gateway) KeysArrived(_ context.Context, p *e2ee.Puppet, _ id.RoomID, sessionID id.SessionID) {
	if !g.cfg.IsBridgeUser(p.UserID) {
		return
	}
	g.noteSession(sessionID)
}

// noteSession has the delivery loop look for events of the session to decrypt: waiting ones, and
// ones the bridge got encrypted.
func (g *Gateway) noteSession(sessionID id.SessionID) {
	if sessionID == "" {
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
		g.resolveWaiting(ctx, sessionID)
		g.followLate(ctx, sessionID)
	}
}

// resolveWaiting ends the wait of the session's waiting events that can be decrypted now, or that
// will never go decrypted (they go on as they are).
func (g *Gateway) resolveWaiting(ctx context.Context, sessionID id.SessionID) {
	waiting, err := g.db.WaitingGatewayEvents(ctx, sessionID)
	if err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to read events waiting for a key")
	}
	for _, e := range waiting {
		plain, pending, err := g.decryptStored(ctx, e.Body)
		if pending {
			continue // still waiting: its key is of another reader, or later
		}
		body, original, outcome := string(plain), e.Body, "decrypted"
		if err != nil {
			g.metrics.decryptFailures.WithLabelValues(failureReason(err)).Inc()
			body, original, outcome = e.Body, "", "not_decrypted"
		}
		if ok, err := g.db.ResolveGatewayEvent(ctx, e.Seq, body, original); err != nil {
			zerolog.Ctx(ctx).Err(err).Msg("Failed to store a decrypted event")
		} else if ok {
			g.metrics.waitEnded.WithLabelValues(outcome).Inc()
		}
	}
}

// decryptStored decrypts a stored encrypted event for the bridge; pending says it cannot be yet,
// but may be later (its key, or a reader, has not arrived, or only a withheld answer has).
func (g *Gateway) decryptStored(ctx context.Context, body string) (plain []byte, pending bool, err error) {
	plain, _, err = g.decryptForBridge(ctx, json.RawMessage(body), "")
	return plain, keyMayArrive(err) || err == errNoReader, err
}

// followLate queues the decrypted copy of each event of the session the bridge got encrypted.
func (g *Gateway) followLate(ctx context.Context, sessionID id.SessionID) {
	late, err := g.db.LateGatewayEvents(ctx, sessionID)
	if err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to read events sent encrypted")
	}
	for _, l := range late {
		g.followOne(ctx, l)
	}
}

// followOne queues the decrypted copy of an event the bridge got encrypted, once it can be
// decrypted; one that never will be is forgotten.
func (g *Gateway) followOne(ctx context.Context, l *database.GatewayLate) {
	plain, pending, err := g.decryptStored(ctx, l.Body)
	if pending {
		return
	} else if err != nil {
		if err = g.db.DeleteGatewayLate(ctx, l.EventID); err != nil {
			zerolog.Ctx(ctx).Err(err).Stringer("event_id", l.EventID).Msg("Failed to forget an event sent encrypted")
		}
		return
	}
	copied := &database.GatewayEvent{Key: string(l.EventID) + ":decrypted", EventID: l.EventID, RoomID: l.RoomID,
		Kind: database.GatewayRoomEvent, Body: string(plain)}
	err = g.db.PutGatewayEvents(ctx, []*database.GatewayEvent{copied})
	if err == nil {
		err = g.db.DeleteGatewayLate(ctx, l.EventID)
	}
	if err != nil {
		zerolog.Ctx(ctx).Err(err).Stringer("event_id", l.EventID).Msg("Failed to queue the decrypted copy of an event")
		return
	}
	g.outboxBytes.Add(copied.Size)
	g.metrics.lateDecrypted.Inc()
}

// recordLate remembers an event whose wait ended without its key: it goes to the bridge encrypted,
// and its decrypted copy follows when the key arrives. Its session is looked at again once the
// record is stored: a key stored meanwhile found nothing to follow.
func (g *Gateway) recordLate(ctx context.Context, e *database.GatewayEvent) error {
	g.metrics.waitEnded.WithLabelValues("timed_out").Inc()
	if err := g.db.PutGatewayLate(ctx, &database.GatewayLate{EventID: e.EventID, RoomID: e.RoomID, SessionID: e.SessionID, Body: e.Body}); err != nil {
		return err
	}
	g.noteSession(e.SessionID)
	return nil
}
