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

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/internal/fault"
	"github.com/heirloom-matrix/heirloom/lease"
)

// Delivery to the bridge. The oldest transaction not acknowledged is sent again, under its ID,
// until the bridge takes it. A bridge that is down (it cannot be reached, times out, or answers
// 502, 503 or 504; or 401, 403, 404, 405, 408, 429: not an answer about the events) is retried in
// order, forever, with a doubling backoff: nothing is lost and nothing overtakes. A bridge that
// refuses a transaction (any other 4xx, or 500) while it takes an empty one may have a bug on one
// of its events: the transaction is tried once more, then split, its events going alone; an event
// refused alone holds back its room and is retried a few times (refusalBackoff), then set aside
// (a dead letter: logged, counted, listed in GET /status and by the bot's status, delivered again
// on an operator's request), and delivery goes on. A bridge that refuses even an empty
// transaction is broken rather than refusing an event: that is retried like a bridge that is down.

const (
	// splitAfter is how many times the bridge refuses a transaction of several events before it
	// is split.
	splitAfter = 2
	// setAsideAfter is how many times the bridge refuses an event alone before it is set aside.
	setAsideAfter = 4
	// maxSleep is the longest the delivery loop sleeps without looking again. It wakes earlier
	// when something changes (events or keys arrive, the bridge calls while it is backed off, an
	// operator resends) and when a wait it knows of ends.
	maxSleep = 5 * time.Second
	// deadLetterRetention is how long an event set aside is kept for an operator to deliver again.
	deadLetterRetention = 30 * 24 * time.Hour
)

// refusalBackoff is how long an event refused alone for the nth time holds back its room before
// it is tried again: set aside about a minute after its first refusal alone.
func refusalBackoff(n int) time.Duration {
	return []time.Duration{5 * time.Second, 15 * time.Second, 40 * time.Second}[min(max(n, 1), 3)-1]
}

// outageBackoff is how long a transaction waits after its nth failed attempt while the bridge is
// down: 1 s doubling to 5 min.
func outageBackoff(n int) time.Duration {
	return min(time.Second<<min(max(n-1, 0), 9), 5*time.Minute)
}

// deliveryError is a failed delivery: refused if the bridge refused the transaction, rather than
// being down.
type deliveryError struct {
	msg     string
	refused bool
}

func (e *deliveryError) Error() string { return e.msg }

// isRefusal reports whether an answer of the bridge refuses a transaction's content, rather than
// saying the bridge is down, misconfigured or busy.
func isRefusal(status int) bool {
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound, http.StatusMethodNotAllowed,
		http.StatusProxyAuthRequired, http.StatusRequestTimeout, http.StatusMisdirectedRequest, http.StatusTooEarly,
		http.StatusTooManyRequests:
		return false
	}
	return (status >= 400 && status < 500) || status == http.StatusInternalServerError
}

func (g *Gateway) now() time.Time { return g.db.Now() }

// runDelivery delivers the bridge's transactions in order until ctx ends.
func (g *Gateway) runDelivery(ctx context.Context) {
	for ctx.Err() == nil {
		g.applyArrivedKeys(ctx)
		g.refreshOutbox(ctx, false)
		if fault.Active("gateway_hold_delivery") {
			g.sleep(ctx, time.Second)
			continue
		}
		g.sleep(ctx, g.deliverNext(ctx))
	}
}

// deliverNext sends the next transaction if one is due, and returns how long to wait before
// looking again.
func (g *Gateway) deliverNext(ctx context.Context) time.Duration {
	now := g.now()
	txn, err := g.db.PendingGatewayTxn(ctx)
	if err == nil && txn == nil {
		var wake time.Time
		if txn, wake, err = g.compose(ctx, now); err == nil && txn == nil {
			if wake.IsZero() {
				return maxSleep
			}
			return wake.Sub(now)
		}
	}
	if err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to prepare a transaction for the bridge")
		return time.Second
	}
	if wait := g.retryWait(txn, now); wait > 0 {
		return wait
	}
	g.attempt(ctx, txn)
	return 0
}

// retryWait is how long the transaction waits before it is sent again. A bridge that calls
// heirloom is up, or about to be (bridges call the homeserver before they listen): its backoff
// ends, as the appservice ping ends the homeserver's, but it is tried at most once a second.
func (g *Gateway) retryWait(txn *database.GatewayTxn, now time.Time) time.Duration {
	wait := time.UnixMilli(txn.NextAttempt).Sub(now)
	if wait > 0 && g.bridgeAlive.Load() {
		g.failureLock.Lock()
		wait = min(wait, g.lastFailure.Add(time.Second).Sub(now))
		g.failureLock.Unlock()
	}
	return wait
}

// attempt delivers a transaction once and records the outcome.
func (g *Gateway) attempt(ctx context.Context, txn *database.GatewayTxn) {
	log := zerolog.Ctx(ctx)
	g.bridgeAlive.Store(false)
	start := time.Now()
	err := g.deliver(ctx, txn.ID, txn.Events)
	var de *deliveryError
	switch {
	case err == nil:
		g.delivered(ctx, txn, time.Since(start))
	case errors.Is(err, lease.ErrNotActive):
		// The process lost its lease: the transaction is the next active process's to deliver,
		// and this was no attempt.
		return
	case errors.As(err, &de) && de.refused:
		g.refused(ctx, txn, err)
	default:
		g.outage(ctx, txn, err)
	}
	if err != nil {
		log.Debug().Int64("bridge_txn_id", txn.ID).Dur("took", time.Since(start)).Msg("Delivery to the bridge failed")
	}
}

func (g *Gateway) delivered(ctx context.Context, txn *database.GatewayTxn, took time.Duration) {
	log := zerolog.Ctx(ctx)
	g.metrics.deliveries.WithLabelValues("delivered").Inc()
	if g.backingOff.Swap(false) {
		log.Info().Int64("bridge_txn_id", txn.ID).Int("attempts", txn.Attempts+1).Msg("The bridge is reachable again")
	}
	now := g.now()
	for _, e := range txn.Events {
		g.metrics.latency.Observe(now.Sub(time.UnixMilli(e.ReceivedAt)).Seconds())
	}
	if err := g.db.FinishGatewayTxn(ctx, txn.ID); err != nil {
		log.Err(err).Msg("Failed to forget a delivered transaction; it will be delivered again")
	}
	g.refreshOutbox(ctx, true)
	log.Debug().Int64("bridge_txn_id", txn.ID).Int("events", len(txn.Events)).Dur("took", took).Msg("Delivered a transaction to the bridge")
}

// outage retries a transaction the bridge could not take (it is down), in order, with backoff.
func (g *Gateway) outage(ctx context.Context, txn *database.GatewayTxn, err error) {
	backoff := outageBackoff(txn.Attempts + 1)
	zerolog.Ctx(ctx).Warn().Err(err).Int64("bridge_txn_id", txn.ID).Int("attempt", txn.Attempts+1).Dur("retry_in", backoff).
		Msg("Failed to deliver a transaction to the bridge; retrying")
	g.metrics.deliveries.WithLabelValues("failed").Inc()
	g.backingOff.Store(true)
	g.failureLock.Lock()
	g.lastFailure = g.now()
	g.failureLock.Unlock()
	if err = g.db.RetryGatewayTxn(ctx, txn.ID, g.now().Add(backoff).UnixMilli(), err.Error(), false); err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to record a failed delivery")
	}
}

// refused handles a transaction the bridge refused: retried once, then split; an event refused
// alone is retried later, or set aside. If the bridge refuses even an empty transaction, it is
// broken rather than refusing these events: the transaction waits, in order, as for an outage.
func (g *Gateway) refused(ctx context.Context, txn *database.GatewayTxn, err error) {
	log := zerolog.Ctx(ctx).With().Int64("bridge_txn_id", txn.ID).Logger()
	g.metrics.deliveries.WithLabelValues("refused").Inc()
	probeErr := g.probe(ctx)
	if errors.Is(probeErr, lease.ErrNotActive) {
		return
	}
	if probeErr != nil {
		log.Warn().Err(err).AnErr("empty_transaction_error", probeErr).
			Msg("The bridge refuses even an empty transaction: it is broken, not refusing an event; retrying in order")
		g.outage(ctx, txn, err)
		return
	}
	reason := err.Error()
	if len(txn.Events) == 0 {
		g.outage(ctx, txn, err) // nothing to split or set aside
		return
	}
	if len(txn.Events) > 1 {
		if txn.Refusals+1 < splitAfter {
			log.Warn().Err(err).Int("events", len(txn.Events)).Msg("The bridge refused a transaction; trying it once more")
			if err = g.db.RetryGatewayTxn(ctx, txn.ID, g.now().Add(time.Second).UnixMilli(), reason, true); err != nil {
				log.Err(err).Msg("Failed to record a refused delivery")
			}
			return
		}
		log.Warn().Err(err).Int("events", len(txn.Events)).Msg("The bridge refused a transaction again; its events go alone")
		g.metrics.deliveries.WithLabelValues("split").Inc()
		if err = g.db.SplitGatewayTxn(ctx, txn.ID, reason); err != nil {
			log.Err(err).Msg("Failed to split a refused transaction")
		}
		return
	}
	g.refusedAlone(ctx, txn, reason)
}

// refusedAlone handles an event the bridge refused alone: it holds back its room and is tried
// again later, or, refused setAsideAfter times, it is set aside.
func (g *Gateway) refusedAlone(ctx context.Context, txn *database.GatewayTxn, reason string) {
	e := txn.Events[0]
	refusals := e.Refusals + 1
	log := zerolog.Ctx(ctx).With().Int64("bridge_txn_id", txn.ID).Str("event_key", e.Key).Stringer("event_id", e.EventID).
		Stringer("room_id", e.RoomID).Int("refusals", refusals).Str("reason", reason).Logger()
	aside := refusals >= setAsideAfter
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
	log.Error().Msg("The bridge refused an event every time: set aside (a dead letter) so that its room goes on; " +
		"deliver it again with POST /_heirloom/v1/gateway/dead_letters/resend or the bot's resend command")
}

// probe delivers an empty transaction: a bridge that takes it is up and taking transactions.
func (g *Gateway) probe(ctx context.Context) error {
	id, err := g.db.NextGatewayTxnID(ctx)
	if err != nil {
		return err
	}
	return g.deliver(ctx, id, nil)
}

func (g *Gateway) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(min(max(d, 0), maxSleep))
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-g.wake:
	case <-t.C:
	}
}

// refreshOutbox reads the outbox's depth and bytes (at most once a second unless now is set), for
// the metrics and gateway.max_outbox_size.
func (g *Gateway) refreshOutbox(ctx context.Context, now bool) {
	if !now && time.Since(g.lastRefresh) < time.Second {
		return
	}
	g.lastRefresh = time.Now()
	n, size, err := g.db.GatewayOutboxSize(ctx)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to measure the bridge's outbox")
		return
	}
	g.outboxBytes.Store(size)
	g.metrics.depth.Set(float64(n))
	if _, dead, err := g.db.GatewayDeadLetters(ctx, 0); err == nil {
		g.metrics.deadLetterCount.Set(float64(dead))
	}
	g.metrics.outboxBytes.Set(float64(size))
	full := 0.0
	if g.OutboxFull() {
		full = 1
	}
	g.metrics.outboxFull.Set(full)
}

// deliver sends one transaction to the bridge, with the bridge's hs_token.
func (g *Gateway) deliver(ctx context.Context, txnID int64, events []*database.GatewayEvent) error {
	data, err := g.transactionBody(events)
	if err != nil {
		return err
	}
	url := g.bridge.URL + "/_matrix/app/v1/transactions/" + strconv.FormatInt(txnID, 10)
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
		return &deliveryError{msg: fmt.Sprintf("the bridge answered %d", resp.StatusCode), refused: isRefusal(resp.StatusCode)}
	}
	return nil
}

// transactionBody is the JSON of a transaction to the bridge: its room events, and its
// ephemeral events under both names the bridge's registration may ask for (matrix-appservice
// reads only the unstable one).
func (g *Gateway) transactionBody(events []*database.GatewayEvent) ([]byte, error) {
	body := struct {
		Events      []json.RawMessage `json:"events"`
		Ephemeral   []json.RawMessage `json:"ephemeral,omitempty"`
		SoruEphemer []json.RawMessage `json:"de.sorunome.msc2409.ephemeral,omitempty"`
	}{Events: []json.RawMessage{}}
	var ephemeral []json.RawMessage
	for _, e := range events {
		if e.Kind == database.GatewayEphemeral {
			ephemeral = append(ephemeral, json.RawMessage(e.Body))
		} else {
			body.Events = append(body.Events, json.RawMessage(e.Body))
		}
	}
	if g.bridge.Registration.EphemeralEvents {
		body.Ephemeral = ephemeral
	}
	if g.bridge.Registration.SoruEphemeralEvents {
		body.SoruEphemer = ephemeral
	}
	return json.Marshal(body)
}
