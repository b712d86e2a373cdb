package appservice

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are heirloom's Prometheus metrics, served at /metrics.
type metrics struct {
	registry     *prometheus.Registry
	transactions *prometheus.CounterVec
	events       *prometheus.CounterVec
	errors       *prometheus.CounterVec
	apiRequests  *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "heirloom_transactions_total",
			Help: "Appservice transactions received, by outcome (processed, duplicate, rejected, failed).",
		}, []string{"outcome"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "heirloom_events_total",
			Help: "Events received in transactions, by section and event type.",
		}, []string{"section", "type"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "heirloom_errors_total",
			Help: "Errors, by where they happened.",
		}, []string{"where"}),
		apiRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "heirloom_api_requests_total",
			Help: "HTTP API requests, by status code.",
		}, []string{"code"}),
	}
	m.registry.MustRegister(m.transactions, m.events, m.errors, m.apiRequests,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
