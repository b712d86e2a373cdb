package server

import (
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"maunium.net/go/mautrix"

	"github.com/heirloom-matrix/heirloom/lease"
)

// Lease is the process's lease on the database (package lease), as the listener sees it: only the
// process that holds it acts.
type Lease interface {
	Active() bool
	Role() lease.Role
	// Holder is the active process as last seen (this one once it holds the lease).
	Holder() lease.Holder
	Describe() string
}

// errNotActive answers whatever would act in a process that does not hold the lease: the
// homeserver retries its transactions later, and a load balancer sends the bridge elsewhere.
var errNotActive = mautrix.RespError{ErrCode: "IO.HEIRLOOM.NOT_ACTIVE", StatusCode: http.StatusServiceUnavailable,
	Err: "this heirloom process is not the active one (it is a standby, or lost its lease): try again through the load balancer"}

// roleState is what the listener knows of the lease.
type roleState struct {
	lease Lease
	// activated is set once the process holding the lease has prepared the database to act.
	activated atomic.Bool
}

// UseLease makes the listener answer as the lease allows, before Start: until Activate, and
// whenever the process does not hold the lease, it answers GET /ready with 503, GET /status and
// /metrics with its role, the homeserver's ping, and everything else with 503
// IO.HEIRLOOM.NOT_ACTIVE. Without a lease the listener always acts.
func (s *Server) UseLease(l Lease) { s.role.lease = l }

// Activate lets the listener act while the process holds the lease: the database is ready.
func (s *Server) Activate() { s.role.activated.Store(true) }

// acting reports whether the process acts now.
func (s *Server) acting() bool {
	return s.role.lease == nil || s.role.activated.Load() && s.role.lease.Active()
}

// Role is the process's role: standby until activated, lost once the lease is.
func (s *Server) Role() lease.Role {
	if s.role.lease == nil {
		return lease.Active
	}
	r := s.role.lease.Role()
	if r == lease.Active && !s.role.activated.Load() {
		return lease.Standby
	}
	return r
}

// answeredWithoutLease reports whether a process that does not act answers the request: its
// readiness, status and metrics, and the homeserver's ping (it proves the tokens and the URL, and
// writes nothing).
func answeredWithoutLease(r *http.Request) bool {
	switch {
	case r.Method == http.MethodGet && (r.URL.Path == APIPrefix+"/ready" || r.URL.Path == APIPrefix+"/status" || r.URL.Path == "/metrics"):
		return true
	case r.Method == http.MethodPost && r.URL.Path == "/_matrix/app/v1/ping":
		return true
	}
	return false
}

// gate answers with 503 IO.HEIRLOOM.NOT_ACTIVE what a process that does not act must not do.
func (s *Server) gate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.acting() && !answeredWithoutLease(r) {
			if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/transactions/") {
				s.metrics.transactions.WithLabelValues("not_active").Inc()
			}
			writeRespError(w, errNotActive)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// handleReady answers 200 on the process that acts and 503 on any other, without a token and
// saying nothing else: the probe a load balancer or Kubernetes routes the homeserver and the
// bridge by.
func (s *Server) handleReady(w http.ResponseWriter, _ *http.Request) {
	if !s.acting() {
		writeRespError(w, errNotActive)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// LeaseStatus is the lease as GET /status reports it.
type LeaseStatus struct {
	// Database is what the lease is on.
	Database string `json:"database"`
	// ActiveHost and ActivePID name the active process (this one, if Role is active), and
	// ActiveSince when it took the lease.
	ActiveHost  string    `json:"active_host,omitempty"`
	ActivePID   int       `json:"active_pid,omitempty"`
	ActiveSince time.Time `json:"active_since,omitzero"`
}

// standbyStatus is GET /status of a process that does not act: it does not read the database,
// which is the active process's.
type standbyStatus struct {
	Version       string       `json:"version"`
	Role          string       `json:"role"`
	Lease         *LeaseStatus `json:"lease,omitempty"`
	UptimeSeconds int          `json:"uptime_seconds"`
}

// leaseStatus reports the lease for GET /status, or nil without one.
func (s *Server) leaseStatus() *LeaseStatus {
	if s.role.lease == nil {
		return nil
	}
	h := s.role.lease.Holder()
	return &LeaseStatus{Database: s.role.lease.Describe(), ActiveHost: h.Host, ActivePID: h.PID, ActiveSince: h.Since}
}

// roleGauges reports the process's role: heirloom_role{role} is 1 for the role it has, 0 for the others.
func (s *Server) roleGauges() []prometheus.Collector {
	var out []prometheus.Collector
	for _, r := range lease.Roles {
		out = append(out, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "heirloom_role",
			Help:        "The process's role: active (holds the database lease and acts), standby (waits for it) or lost (lost it and exits); 1 for the role it has.",
			ConstLabels: prometheus.Labels{"role": r.String()},
		}, func() float64 {
			if s.Role() == r {
				return 1
			}
			return 0
		}))
	}
	return out
}
