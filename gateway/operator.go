package gateway

import (
	"context"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/internal/tasks"
	"github.com/heirloom-matrix/heirloom/server"
)

// What the gateway keeps, and for how long: sends and delivered events for a day (a bridge
// retries within seconds, the homeserver within minutes); events that went to the bridge
// encrypted, for their decrypted copy to follow a late key, for a week and at most maxLate of them;
// decrypted files the bridge may download, for a month after heirloom last handed out their URL
// and at most maxMedia of them; events set aside, for deadLetterRetention.
const (
	maxLate        = 5000
	lateRetention  = 7 * 24 * time.Hour
	maxMedia       = 100_000
	mediaRetention = 30 * 24 * time.Hour
)

// deadLettersListed is how many events set aside GET /status and the bot list.
const deadLettersListed = 50

// runMaintenance prunes the gateway's tables now and every hour until ctx ends.
func (g *Gateway) runMaintenance(ctx context.Context) {
	g.Prune(ctx)
	tasks.Every(ctx, time.Hour, nil, func() { g.Prune(ctx) })
}

// Prune forgets what is no longer needed (see above), by the database's clock.
func (g *Gateway) Prune(ctx context.Context) {
	log := zerolog.Ctx(ctx)
	now := g.now()
	day := now.Add(-24 * time.Hour).UnixMilli()
	if err := g.db.PruneGatewaySends(ctx, day); err != nil {
		log.Warn().Err(err).Msg("Failed to prune the bridge's recorded sends")
	}
	if err := g.db.PruneGatewayDelivered(ctx, day); err != nil {
		log.Warn().Err(err).Msg("Failed to prune events delivered to the bridge")
	}
	if err := g.db.PruneGatewayLate(ctx, now.Add(-lateRetention).UnixMilli(), maxLate); err != nil {
		log.Warn().Err(err).Msg("Failed to prune events sent to the bridge encrypted")
	}
	if err := g.db.PruneGatewayMedia(ctx, now.Add(-mediaRetention).UnixMilli(), maxMedia); err != nil {
		log.Warn().Err(err).Msg("Failed to prune the decrypted files served to the bridge")
	}
	expired, err := g.db.PruneGatewayDeadLetters(ctx, now.Add(-deadLetterRetention).UnixMilli())
	if err != nil {
		log.Warn().Err(err).Msg("Failed to prune events set aside")
	}
	for _, e := range expired {
		log.Warn().Str("event_key", e.Key).Stringer("event_id", e.EventID).Stringer("room_id", e.RoomID).
			Time("set_aside_at", time.UnixMilli(e.DeadAt)).Msg("Forgot an event set aside long ago that nobody delivered again")
	}
}

// measureDeadLetters counts the events set aside, and forgets the oldest of them while they hold
// more than gateway.max_outbox_size: events set aside do not count against the outbox, and a room
// member who can make the bridge refuse events must not grow heirloom's database without end.
func (g *Gateway) measureDeadLetters(ctx context.Context) {
	log := zerolog.Ctx(ctx)
	n, size, err := g.db.GatewayDeadLetterSize(ctx)
	if err != nil {
		log.Warn().Err(err).Msg("Failed to measure the events set aside")
		return
	}
	if size > g.cfg.Gateway.OutboxCap() {
		forgotten, err := g.db.TrimGatewayDeadLetters(ctx, g.cfg.Gateway.OutboxCap())
		if err != nil {
			log.Warn().Err(err).Msg("Failed to forget the oldest events set aside")
		}
		for _, e := range forgotten {
			log.Error().Str("event_key", e.Key).Stringer("event_id", e.EventID).Stringer("room_id", e.RoomID).
				Time("set_aside_at", time.UnixMilli(e.DeadAt)).Msg("Forgot an event set aside: the events set aside hold more than gateway.max_outbox_size")
		}
		n -= len(forgotten)
	}
	g.metrics.deadLetterCount.Set(float64(n))
}

// Resend puts the events set aside back in the outbox, to be delivered again in their place, each
// alone: the one with the event ID given, or all if it is "". It returns how many there were.
func (g *Gateway) Resend(ctx context.Context, eventID id.EventID) (int, error) {
	n, err := g.db.RequeueGatewayDeadLetters(ctx, string(eventID))
	if err != nil {
		return 0, err
	}
	if n > 0 {
		zerolog.Ctx(ctx).Info().Str("dead_letter", string(eventID)).Int("events", n).Msg("Delivering events set aside again, on an operator's request")
		g.nudge()
	}
	return n, nil
}

// Status reports the delivery to the bridge: the outbox, whether the oldest transaction is failing
// to reach the bridge, whether the homeserver's transactions are refused (the outbox is full), and
// the events set aside.
func (g *Gateway) Status(ctx context.Context) (*server.GatewayStatus, error) {
	depth, size, err := g.db.GatewayOutboxSize(ctx)
	if err != nil {
		return nil, err
	}
	st := &server.GatewayStatus{Bridge: g.bridge.Registration.ID, OutboxEvents: depth, OutboxBytes: size,
		MaxOutboxBytes: g.cfg.Gateway.OutboxCap(), OutboxFull: size >= g.cfg.Gateway.OutboxCap(), DeadLetters: []server.DeadLetter{}}
	txn, err := g.db.PendingGatewayTxn(ctx)
	if err != nil {
		return nil, err
	}
	if txn != nil && txn.Attempts > 0 {
		st.DeliveryFailing, st.Attempts, st.LastError = true, txn.Attempts, txn.LastError
	}
	dead, n, err := g.db.GatewayDeadLetters(ctx, deadLettersListed)
	if err != nil {
		return nil, err
	}
	st.DeadLetterCount = n
	for _, e := range dead {
		st.DeadLetters = append(st.DeadLetters, server.DeadLetter{EventID: e.EventID, Key: e.Key, RoomID: e.RoomID, Kind: e.Kind,
			Refusals: e.Refusals, LastError: e.LastError, SetAsideAt: e.DeadAt})
	}
	return st, nil
}
