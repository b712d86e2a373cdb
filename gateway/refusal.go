package gateway

import (
	"context"
	"errors"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/internal/fault"
	"github.com/heirloom-matrix/heirloom/lease"
)

// The events a bridge refuses. A bridge that refuses a transaction (a 4xx that is about its
// content, or a 500) or leaves it unanswered, while it takes an empty one, may have a bug on one
// of its events: any room member who can send such an event could otherwise stop the bridge for
// every room. The transaction is tried once more (a bridge that was only slow answers its retry at
// once), then split, its events going alone under new transaction IDs; an event refused alone holds
// back its room and is retried a few times (refusalBackoff), then set aside (a dead letter: logged,
// counted, listed in GET /status and by the bot's status, delivered again on an operator's
// request), and delivery goes on. An event left unanswered alone is set aside at once: while the
// bridge hangs on it, every room waits. Before a decrypted event is set aside, the bridge
// gets it as it arrived, encrypted, as it would without heirloom.
//
// Each room has a budget: for an hour after one of its events was set aside, its events go alone
// and one the bridge refuses is set aside at its first refusal alone; and so is one of a room that
// holds more than its share of gateway.max_outbox_size. A chain of refused events holds its room
// back about a minute in all, not a minute each.
//
// A bridge that refuses or leaves unanswered even an empty transaction is broken or down rather
// than refusing an event: the transaction waits, in order, as for an outage, and nothing is set
// aside.

const (
	// splitAfter is how many times the bridge refuses a transaction of several events before it
	// is split.
	splitAfter = 2
	// setAsideAfter is how many times the bridge refuses an event alone before it is set aside.
	setAsideAfter = 4
	// deadLetterRetention is how long an event set aside is kept for an operator to deliver again.
	deadLetterRetention = 30 * 24 * time.Hour
	// roomStrikeMemory is how long a room whose event was set aside has its further refused events
	// set aside at once.
	roomStrikeMemory = time.Hour
	// roomShares is how many rooms share gateway.max_outbox_size: a room holding more than its
	// share has its refused events set aside at once, and, while the outbox is full, its new
	// events set aside as they arrive.
	roomShares = 4
)

// refusalBackoff is how long an event refused alone for the nth time holds back its room before
// it is tried again: set aside about a minute after its first refusal alone.
func refusalBackoff(n int) time.Duration {
	return []time.Duration{5 * time.Second, 15 * time.Second, 40 * time.Second}[min(max(n, 1), 3)-1]
}

// refused handles a transaction the bridge refused or left unanswered: retried once, then split;
// an event refused alone is retried later, or set aside. If the bridge refuses even an empty
// transaction, or does not answer it promptly, it is broken or down rather than refusing these
// events: the transaction waits, in order, as for an outage.
func (g *Gateway) refused(ctx context.Context, txn *database.GatewayTxn, de *deliveryError) {
	log := zerolog.Ctx(ctx).With().Int64("bridge_txn_id", txn.ID).Logger()
	outcome := "refused"
	if de.unanswered {
		outcome = "unanswered"
	}
	g.metrics.deliveries.WithLabelValues(outcome).Inc()
	probeErr := g.probe(ctx)
	if errors.Is(probeErr, lease.ErrNotActive) {
		return
	}
	if probeErr != nil {
		msg := "The bridge refuses even an empty transaction: it is broken, not refusing an event; retrying in order"
		if de.unanswered {
			msg = "The bridge did not answer, and takes no empty transaction either: it is down; retrying in order"
		}
		log.Warn().Err(de).AnErr("empty_transaction_error", probeErr).Msg(msg)
		g.outage(ctx, txn, de)
		return
	}
	if len(txn.Events) == 0 {
		g.outage(ctx, txn, de) // nothing to split or set aside
		return
	}
	if de.unanswered {
		g.hungAt.Store(g.now().UnixMilli())
		log.Warn().Err(de).Msg("The bridge takes an empty transaction but left this one unanswered: it may hang on one of its events")
	}
	if len(txn.Events) > 1 {
		g.refusedTogether(ctx, txn, de.Error())
		return
	}
	g.refusedAlone(ctx, txn, de.Error(), de.unanswered)
}

// refusedTogether tries a refused transaction of several events once more, then splits it.
func (g *Gateway) refusedTogether(ctx context.Context, txn *database.GatewayTxn, reason string) {
	log := zerolog.Ctx(ctx).With().Int64("bridge_txn_id", txn.ID).Int("events", len(txn.Events)).Str("reason", reason).Logger()
	if txn.Refusals+1 < splitAfter {
		log.Warn().Msg("The bridge refused or left unanswered a transaction; trying it once more")
		if err := g.db.RetryGatewayTxn(ctx, txn.ID, g.now().Add(time.Second).UnixMilli(), reason, true); err != nil {
			log.Err(err).Msg("Failed to record a refused delivery")
		}
		return
	}
	log.Warn().Msg("The bridge refused or left unanswered a transaction again; its events go alone")
	g.metrics.deliveries.WithLabelValues("split").Inc()
	if err := g.db.SplitGatewayTxn(ctx, txn.ID, reason); err != nil {
		log.Err(err).Msg("Failed to split a refused transaction")
	}
}

// refusedAlone handles an event the bridge refused alone: it holds back its room and is tried
// again later, or, refused setAsideAfter times, left unanswered alone (a bridge that hangs holds
// every room while it is tried) or beyond its room's budget, it is set aside (a decrypted event goes
// once as it arrived first).
func (g *Gateway) refusedAlone(ctx context.Context, txn *database.GatewayTxn, reason string, unanswered bool) {
	e := txn.Events[0]
	refusals := e.Refusals + 1
	log := zerolog.Ctx(ctx).With().Int64("bridge_txn_id", txn.ID).Str("event_key", e.Key).Stringer("event_id", e.EventID).
		Stringer("room_id", e.RoomID).Int("refusals", refusals).Str("reason", reason).Logger()
	spent := g.budgetSpent(ctx, e.RoomID)
	aside := refusals >= setAsideAfter || unanswered || spent != ""
	fallBack := e.Original != "" && !e.FellBack && !fault.Active("gateway_no_fallback")
	if aside && fallBack {
		if err := g.db.FallBackGatewayEvent(ctx, txn.ID, e.Seq, reason); err != nil {
			log.Err(err).Msg("Failed to record a refused event")
			return
		}
		g.metrics.deliveries.WithLabelValues("fell_back").Inc()
		log.Warn().Msg("The bridge refused heirloom's decrypted copy of an event every time; it gets the event as it arrived, encrypted")
		return
	}
	retryAt := g.now().Add(refusalBackoff(refusals))
	if err := g.db.RefuseGatewayEvent(ctx, txn.ID, e.Seq, retryAt.UnixMilli(), reason, aside); err != nil {
		log.Err(err).Msg("Failed to record a refused event")
		return
	}
	if !aside {
		log.Warn().Time("retry_at", retryAt).Msg("The bridge refused an event; its room waits for it to be tried again")
		return
	}
	g.metrics.deadLetters.Inc()
	g.refreshOutbox(ctx, true)
	if spent != "" {
		log = log.With().Str("room_budget", spent).Logger()
	}
	log.Error().Msg("The bridge refused an event every time: set aside (a dead letter) so that its room goes on; " +
		"deliver it again with POST /_heirloom/v1/gateway/dead_letters/resend or the bot's resend command")
}

// budgetSpent says why the room's refused events are set aside at their first refusal alone (its
// budget is spent), or "".
func (g *Gateway) budgetSpent(ctx context.Context, roomID id.RoomID) string {
	if roomID == "" {
		return ""
	}
	struck, err := g.db.GatewayRoomsSetAside(ctx, g.now().Add(-roomStrikeMemory).UnixMilli())
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to read the rooms with events set aside")
	} else if struck[roomID] {
		return "an event of the room was set aside within the hour"
	}
	if g.overShare(ctx, roomID) {
		return "the room holds more than its share of gateway.max_outbox_size"
	}
	return ""
}

// overShare reports whether the room's events waiting for the bridge are over its share of
// gateway.max_outbox_size.
func (g *Gateway) overShare(ctx context.Context, roomID id.RoomID) bool {
	size, err := g.db.GatewayRoomBytes(ctx, roomID)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to measure a room's part of the outbox")
		return false
	}
	return size > g.roomShare()
}

// recentlyHung reports whether the bridge left an event unanswered, while it took empty
// transactions, within hangMemory.
func (g *Gateway) recentlyHung() bool {
	at := g.hungAt.Load()
	return at != 0 && g.now().Sub(time.UnixMilli(at)) < hangMemory
}

// probe delivers an empty transaction: a bridge that takes it promptly is up and taking
// transactions.
func (g *Gateway) probe(ctx context.Context) error {
	id, err := g.db.NextGatewayTxnID(ctx)
	if err != nil {
		return err
	}
	return g.deliver(ctx, id, nil, g.timeouts.probe)
}
