package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/internal/fault"
	"github.com/heirloom-matrix/heirloom/lease"
)

// Delivery to the bridge. The oldest transaction not acknowledged is sent again, under its ID,
// until the bridge takes it. A bridge that is down (it cannot be reached, or answers 502 or 503;
// or 401, 403, 404, 405, 408, 429: not an answer about the events) is retried in order, forever,
// with a doubling backoff: nothing is lost and nothing overtakes. A bridge that refuses a
// transaction (any other 4xx, or 500), or leaves it unanswered (no answer in time, the connection
// closed after the request, a proxy's 504), may have a bug on one of its events, if it takes an
// empty transaction meanwhile: see refusal.go. One that does not is down.

const (
	// maxSleep is the longest the delivery loop sleeps without looking again. It wakes earlier
	// when something changes (events or keys arrive, the bridge calls while it is backed off, an
	// operator resends) and when a wait it knows of ends.
	maxSleep = 5 * time.Second
)

// outageBackoff is how long a transaction waits after its nth failed attempt while the bridge is
// down: 1 s doubling to 5 min.
func outageBackoff(n int) time.Duration {
	return min(time.Second<<min(max(n-1, 0), 9), 5*time.Minute)
}

// Answer timeouts (deliveryTimeouts): how long heirloom waits for the bridge's answer to a
// transaction the first time; to a transaction the bridge refused or left unanswered before, to an
// event going alone, and to every transaction for an hour after the bridge last hung on an event
// (a hanging event then holds the other rooms back briefly); and to the empty transaction that
// tells whether the bridge is up (probe).
const (
	answerWait      = 20 * time.Second
	retryAnswerWait = 10 * time.Second
	probeWait       = 10 * time.Second
	// hangMemory is how long the short timeouts apply to every transaction after the bridge hung
	// on an event.
	hangMemory = time.Hour
)

// deliveryTimeouts are the answer timeouts, and queryWait (tests shorten them).
type deliveryTimeouts struct{ first, retry, probe, query time.Duration }

var defaultTimeouts = deliveryTimeouts{first: answerWait, retry: retryAnswerWait, probe: probeWait, query: queryWait}

// deliveryError is a failed delivery: refused if the bridge refused the transaction, unanswered if
// it took the request and gave no answer (a timeout, the connection closed after the request, a
// proxy's 504), rather than being down.
type deliveryError struct {
	msg        string
	refused    bool
	unanswered bool
	cause      error
}

func (e *deliveryError) Error() string { return e.msg }
func (e *deliveryError) Unwrap() error { return e.cause }

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

// answerTimeout is how long the bridge has to answer the transaction (see deliveryTimeouts).
func (g *Gateway) answerTimeout(txn *database.GatewayTxn) time.Duration {
	alone := len(txn.Events) == 1 && (txn.Events[0].Solo || txn.Events[0].Refusals > 0)
	if txn.Refusals > 0 || alone || g.recentlyHung() {
		return g.timeouts.retry
	}
	return g.timeouts.first
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
	err := g.deliver(ctx, txn.ID, txn.Events, g.answerTimeout(txn))
	var de *deliveryError
	switch {
	case err == nil:
		g.delivered(ctx, txn, time.Since(start))
	case errors.Is(err, lease.ErrNotActive):
		// The process lost its lease: the transaction is the next active process's to deliver,
		// and this was no attempt.
		return
	case errors.As(err, &de) && (de.refused || de.unanswered):
		g.refused(ctx, txn, de)
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
	g.measureDeadLetters(ctx)
	g.metrics.outboxBytes.Set(float64(size))
	full := 0.0
	if g.OutboxFull() {
		full = 1
	}
	g.metrics.outboxFull.Set(full)
}

// deliver sends one transaction to the bridge, with the bridge's hs_token, and waits at most
// timeout for its answer. A failure after the whole request was written is unanswered: the bridge
// took it and said nothing.
func (g *Gateway) deliver(ctx context.Context, txnID int64, events []*database.GatewayEvent, timeout time.Duration) error {
	data, err := g.transactionBody(events)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var wrote atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteRequest: func(info httptrace.WroteRequestInfo) {
		wrote.Store(info.Err == nil)
	}})
	url := g.bridge.URL + "/_matrix/app/v1/transactions/" + strconv.FormatInt(txnID, 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+g.bridge.Registration.ServerToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.deliverer.Do(req)
	if err != nil {
		return &deliveryError{msg: fmt.Sprintf("failed to reach the bridge: %v", err), unanswered: wrote.Load(), cause: err}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &deliveryError{msg: fmt.Sprintf("the bridge answered %d", resp.StatusCode), refused: isRefusal(resp.StatusCode),
			unanswered: resp.StatusCode == http.StatusGatewayTimeout}
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
