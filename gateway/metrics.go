package gateway

import "github.com/prometheus/client_golang/prometheus"

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
}

// NewMetrics creates the gateway's metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "heirloom_gateway_requests_total",
			Help: "Client-server requests of the bridge, by the call heirloom made of them: a handled call's name, forward, " +
				"refused, or unrecognized, forbidden and unauthorized for those refused before routing."}, []string{"call"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "heirloom_gateway_deliveries_total",
			Help: "Transactions to the bridge, by outcome (delivered, failed: retried with backoff)."}, []string{"outcome"}),
		depth: prometheus.NewGauge(prometheus.GaugeOpts{Name: "heirloom_gateway_outbox_events",
			Help: "Events stored for the bridge and not yet acknowledged by it."}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "heirloom_gateway_delivery_seconds",
			Help:    "Time from an event's arrival from the homeserver to the bridge acknowledging it.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}}),
		decryptFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "heirloom_gateway_decrypt_failures_total",
			Help: "Encrypted events heirloom could not decrypt for the bridge, by reason."}, []string{"reason"}),
		waits: prometheus.NewCounter(prometheus.CounterOpts{Name: "heirloom_gateway_key_waits_total",
			Help: "Encrypted events that held back their room while their key was on its way."}),
		waitEnded: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "heirloom_gateway_key_waits_ended_total",
			Help: "How waits for a key ended: decrypted, or timed_out (forwarded encrypted, decrypted copy later)."}, []string{"outcome"}),
		lateDecrypted: prometheus.NewCounter(prometheus.CounterOpts{Name: "heirloom_gateway_late_decrypted_total",
			Help: "Decrypted copies sent after an event had gone to the bridge encrypted."}),
		encryptedSends: prometheus.NewCounter(prometheus.CounterOpts{Name: "heirloom_gateway_encrypted_sends_total",
			Help: "The bridge's sends heirloom encrypted."}),
		devices: prometheus.NewCounter(prometheus.CounterOpts{Name: "heirloom_gateway_devices_created_total",
			Help: "E2EE devices and identities created for the bridge's users."}),
		bundles: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "heirloom_gateway_invite_bundles_total",
			Help: "Key bundles built for the bridge's invites, by state."}, []string{"state"}),
	}
	reg.MustRegister(m.requests, m.deliveries, m.depth, m.latency, m.decryptFailures, m.waits, m.waitEnded,
		m.lateDecrypted, m.encryptedSends, m.devices, m.bundles)
	return m
}
