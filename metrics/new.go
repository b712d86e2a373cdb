package metrics

import "github.com/prometheus/client_golang/prometheus"

// NewCounter, NewCounterVec, NewGauge and NewHistogram make a collector from its name and help
// (and labels, buckets): the shape each of heirloom's metrics takes, here and in server and gateway.

// NewCounter makes a counter.
func NewCounter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
}

// NewCounterVec makes a counter by labels.
func NewCounterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
}

// NewGauge makes a gauge.
func NewGauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
}

// NewHistogram makes a histogram with the given buckets.
func NewHistogram(name, help string, buckets ...float64) prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
}
