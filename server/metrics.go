package server

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"maunium.net/go/mautrix/event"

	"github.com/heirloom-matrix/heirloom/e2ee"
	hmetrics "github.com/heirloom-matrix/heirloom/metrics"
)

// metrics are heirloom's Prometheus metrics, served at /metrics.
type metrics struct {
	registry     *prometheus.Registry
	transactions *prometheus.CounterVec
	events       *prometheus.CounterVec
	errors       *prometheus.CounterVec
	apiRequests  *prometheus.CounterVec
}

// MetricsRegistry is the registry served at /metrics, where the daemon registers the metrics of
// history sharing and the puppets' devices (package metrics).
func (s *Server) MetricsRegistry() prometheus.Registerer { return s.metrics.registry }

func newMetrics(mgr *e2ee.Manager) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		transactions: hmetrics.NewCounterVec("heirloom_transactions_total",
			"Appservice transactions received, by outcome (processed, duplicate, rejected, failed, refused: the bridge's outbox was full).", "outcome"),
		events: hmetrics.NewCounterVec("heirloom_events_total",
			"Events received in transactions, by section and event type (known types; the rest as other).", "section", "type"),
		errors: hmetrics.NewCounterVec("heirloom_errors_total",
			"Errors, by where they happened.", "where"),
		apiRequests: hmetrics.NewCounterVec("heirloom_api_requests_total",
			"HTTP API requests, by status code.", "code"),
	}
	keyQueries := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "heirloom_key_queries_total",
		Help: "Device key queries (/keys/query) the puppets sent to the homeserver.",
	}, func() float64 { return float64(mgr.KeyQueries()) })
	m.registry.MustRegister(m.transactions, m.events, m.errors, m.apiRequests, keyQueries,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// knownEventTypes are the event types counted under their own label; anything else is "other".
// Labels come from events anyone can send, so the set must not grow with what arrives.
var knownEventTypes = func() map[string]bool {
	known := map[string]bool{}
	for _, t := range []event.Type{
		event.EventMessage, event.EventEncrypted, event.EventReaction, event.EventRedaction, event.EventSticker,
		event.StateMember, event.StateCreate, event.StatePowerLevels, event.StateJoinRules, event.StateHistoryVisibility,
		event.StateEncryption, event.StateRoomName, event.StateTopic, event.StateRoomAvatar, event.StateCanonicalAlias,
		event.StateTombstone, event.StateServerACL, event.StateGuestAccess, event.StatePinnedEvents,
		event.EphemeralEventTyping, event.EphemeralEventReceipt, event.EphemeralEventPresence,
		event.ToDeviceEncrypted, event.ToDeviceRoomKey, event.ToDeviceRoomKeyRequest, event.ToDeviceRoomKeyWithheld,
		event.ToDeviceForwardedRoomKey, event.ToDeviceRoomKeyBundle, event.ToDeviceSecretRequest, event.ToDeviceDummy,
		event.ToDeviceVerificationRequest, event.ToDeviceVerificationStart, event.ToDeviceVerificationCancel,
	} {
		known[t.Type] = true
	}
	return known
}()

// eventTypeLabel returns the label an event type is counted under.
func eventTypeLabel(evtType string) string {
	if knownEventTypes[evtType] {
		return evtType
	}
	return "other"
}
