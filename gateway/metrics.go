package gateway

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/heirloom-matrix/heirloom/metrics"
)

// Metrics are gateway mode's Prometheus metrics. Every label takes values from a fixed set.
type Metrics struct {
	requests        *prometheus.CounterVec
	deliveries      *prometheus.CounterVec
	depth           prometheus.Gauge
	latency         prometheus.Histogram
	decryptFailures *prometheus.CounterVec
	waits           prometheus.Counter
	waitEnded       *prometheus.CounterVec
	lateDecrypted   prometheus.Counter
	encryptedSends  prometheus.Counter
	devices         prometheus.Counter
	bundles         *prometheus.CounterVec
	outboxBytes     prometheus.Gauge
	outboxFull      prometheus.Gauge
	deadLetters     prometheus.Counter
	deadLetterCount prometheus.Gauge
}

// NewMetrics creates the gateway's metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: metrics.NewCounterVec("heirloom_gateway_requests_total",
			"Client-server requests of the bridge, by the call heirloom made of them: a handled call's name, forward, "+
				"refused, or unrecognized, forbidden and unauthorized for those refused before routing.", "call"),
		deliveries: metrics.NewCounterVec("heirloom_gateway_deliveries_total",
			"Transactions to the bridge, by outcome (delivered; failed: the bridge is down, retried with backoff; "+
				"refused: the bridge refused it; split: refused again, its events go alone).", "outcome"),
		depth: metrics.NewGauge("heirloom_gateway_outbox_events",
			"Events stored for the bridge and not yet acknowledged by it."),
		latency: metrics.NewHistogram("heirloom_gateway_delivery_seconds",
			"Time from an event's arrival from the homeserver to the bridge acknowledging it.",
			.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300),
		decryptFailures: metrics.NewCounterVec("heirloom_gateway_decrypt_failures_total",
			"Encrypted events heirloom could not decrypt for the bridge, by reason.", "reason"),
		waits: metrics.NewCounter("heirloom_gateway_key_waits_total",
			"Encrypted events that held back their room while their key was on its way."),
		waitEnded: metrics.NewCounterVec("heirloom_gateway_key_waits_ended_total",
			"How waits for a key ended: decrypted, timed_out (forwarded encrypted, decrypted copy later), "+
				"or not_decrypted (the key came, the payload is not for the bridge: forwarded encrypted).", "outcome"),
		lateDecrypted: metrics.NewCounter("heirloom_gateway_late_decrypted_total",
			"Decrypted copies sent after an event had gone to the bridge encrypted."),
		encryptedSends: metrics.NewCounter("heirloom_gateway_encrypted_sends_total",
			"The bridge's sends heirloom encrypted."),
		devices: metrics.NewCounter("heirloom_gateway_devices_created_total",
			"E2EE devices and identities created for the bridge's users."),
		bundles: metrics.NewCounterVec("heirloom_gateway_invite_bundles_total",
			"Key bundles built for the bridge's invites, by state.", "state"),
		outboxBytes: metrics.NewGauge("heirloom_gateway_outbox_bytes",
			"Bytes of the events stored for the bridge and not yet acknowledged by it (gateway.max_outbox_size caps them)."),
		outboxFull: metrics.NewGauge("heirloom_gateway_outbox_full",
			"1 while the outbox is over gateway.max_outbox_size: the homeserver's transactions are refused until the bridge catches up."),
		deadLetters: metrics.NewCounter("heirloom_gateway_dead_letters_total",
			"Events the bridge refused every time, set aside so that delivery goes on."),
		deadLetterCount: metrics.NewGauge("heirloom_gateway_dead_letters",
			"Events set aside now, waiting for an operator to deliver them again."),
	}
	reg.MustRegister(m.requests, m.deliveries, m.depth, m.latency, m.decryptFailures, m.waits, m.waitEnded,
		m.lateDecrypted, m.encryptedSends, m.devices, m.bundles, m.outboxBytes, m.outboxFull, m.deadLetters,
		m.deadLetterCount)
	return m
}
