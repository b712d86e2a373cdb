// Package server provides heirloom's HTTP side: the appservice endpoints the homeserver
// pushes transactions to, the bridge-facing API at /_heirloom/v1, metrics, and the routing of
// what arrives to the puppets.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/history"
)

// Version is heirloom's version, reported by GET /status.
var Version = "0.1.0"

// Server is heirloom's HTTP listener.
type Server struct {
	cfg     *config.Config
	db      *database.Database
	mgr     *e2ee.Manager
	history *history.Service
	metrics *metrics
	log     zerolog.Logger

	// gateway, in gateway mode, receives the bridge's part of every transaction and serves the
	// bridge's client-server API (UseGateway).
	gateway Gateway

	txnLock sync.Mutex
	// txnFailures is set while the last transaction heirloom failed is not followed by one taken.
	txnFailures atomic.Bool
	// lastTxnID is the ID of the last transaction taken (under txnLock).
	lastTxnID string
	// sentCounts is set once a transaction counted the one-time keys of the appservice's sender;
	// retrying while the homeserver retries what it stored while it held heirloom down (both under
	// txnLock; resumed).
	sentCounts, retrying bool
	lastPing             atomic.Int64
	startedAt            time.Time
	server               *http.Server
	// role is the process's lease: only the process that holds it acts (role.go).
	role roleState

	// OnRoomEvent hears of every room event of a transaction, in order, after heirloom recorded
	// its state and reacted to it. The daemon sets it to heirloom's bot (admin.Bot.HandleEvent);
	// until then room events go nowhere else.
	OnRoomEvent func(ctx context.Context, evt *event.Event)
}

// NewServer creates the listener, with history sharing (MSC4268) for the transaction stream and the API.
func NewServer(cfg *config.Config, db *database.Database, mgr *e2ee.Manager, hist *history.Service, log zerolog.Logger) *Server {
	s := &Server{cfg: cfg, db: db, mgr: mgr, history: hist, metrics: newMetrics(mgr), log: log, startedAt: time.Now(),
		OnRoomEvent: func(context.Context, *event.Event) {}}
	s.metrics.registry.MustRegister(s.roleGauges()...)
	return s
}

// Gateway is gateway mode's part of the listener (gateway.Gateway).
type Gateway interface {
	// Ingest stores a transaction's room and ephemeral events for the bridge; the transaction is
	// acknowledged only if it returns nil.
	Ingest(ctx context.Context, txnKey string, events, ephemeral []json.RawMessage) error
	// Routes registers the bridge's client-server API.
	Routes(mux *http.ServeMux)
	// ForwardQuery asks the bridge about a user or room alias in its namespace (kind "users" or
	// "rooms") and writes its answer.
	ForwardQuery(w http.ResponseWriter, r *http.Request, kind, subject string)
	// Status reports the delivery to the bridge, for GET /status.
	Status(ctx context.Context) (*GatewayStatus, error)
	// Admit reports ErrBridgeBacklog if the homeserver's transaction with these room events is
	// refused because the bridge's outbox is over gateway.max_outbox_size: the homeserver sends it
	// again once the bridge has caught up.
	Admit(ctx context.Context, events []json.RawMessage) error
	// Resend delivers again the events set aside (the one with the ID given, or all) and returns
	// how many there were.
	Resend(ctx context.Context, eventID id.EventID) (int, error)
}

// ErrBridgeBacklog means the bridge's outbox is full: the homeserver's transaction is refused,
// for the homeserver to hold and send again.
var ErrBridgeBacklog = errors.New("the bridge's outbox is over gateway.max_outbox_size")

// UseGateway puts the listener in gateway mode, before Start.
func (s *Server) UseGateway(gw Gateway) { s.gateway = gw }

// Handler returns the complete HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, prefix := range []string{"/_matrix/app/v1", ""} {
		mux.HandleFunc("PUT "+prefix+"/transactions/{txnID}", s.handleTransaction)
	}
	mux.HandleFunc("POST /_matrix/app/v1/ping", s.handlePing)
	mux.HandleFunc("GET /_matrix/app/v1/users/{userID}", s.handleQueryUser)
	mux.HandleFunc("GET /_matrix/app/v1/rooms/{alias}", s.handleQueryAlias)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET "+APIPrefix+"/ready", s.handleReady)
	s.apiRoutes(mux)
	if s.gateway != nil {
		s.gateway.Routes(mux)
	}
	gated := s.gate(mux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gated.ServeHTTP(w, r.WithContext(s.log.WithContext(r.Context())))
	})
}

// Start listens on the configured address. It returns once the listener is bound.
func (s *Server) Start() error {
	addr := net.JoinHostPort(s.cfg.AppService.Hostname, strconv.Itoa(s.cfg.AppService.Port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("failed to listen on %s: %w", addr, err)
	}
	s.server = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       5 * time.Minute,
		IdleTimeout:       2 * time.Minute,
	}
	go func() {
		if err := s.server.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Err(err).Msg("HTTP server stopped")
		}
	}()
	s.log.Info().Str("address", addr).Msg("Listening for the homeserver and the bridge API")
	return nil
}

// Stop shuts the listener down, letting requests in flight finish.
func (s *Server) Stop(ctx context.Context) error {
	if s.server == nil {
		return nil
	}
	return s.server.Shutdown(ctx)
}

// handleQueryUser answers the homeserver's user queries: puppets exist only once provisioned;
// in gateway mode the bridge answers for its own users.
func (s *Server) handleQueryUser(w http.ResponseWriter, r *http.Request) {
	if !s.requireHSToken(w, r) {
		return
	}
	if userID := r.PathValue("userID"); s.gateway != nil && s.cfg.IsBridgeUser(id.UserID(userID)) {
		s.gateway.ForwardQuery(w, r, "users", userID)
		return
	}
	writeRespError(w, mautrix.MNotFound.WithMessage("Puppets are created through the heirloom API"))
}

// handleQueryAlias answers the homeserver's room alias queries: in gateway mode the bridge's.
func (s *Server) handleQueryAlias(w http.ResponseWriter, r *http.Request) {
	if !s.requireHSToken(w, r) {
		return
	}
	if alias := r.PathValue("alias"); s.gateway != nil && s.cfg.Bridge.IsAlias(id.RoomAlias(alias)) {
		s.gateway.ForwardQuery(w, r, "rooms", alias)
		return
	}
	writeRespError(w, mautrix.MNotFound.WithMessage("heirloom has no room aliases"))
}
