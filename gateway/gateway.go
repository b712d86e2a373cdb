// Package gateway provides gateway mode: heirloom in front of one unmodified appservice bridge.
// The bridge keeps speaking the plain client-server and appservice APIs; heirloom gives its bot and
// ghosts their own E2EE devices, encrypts what they send into encrypted rooms, decrypts what they
// read and receive, and runs MSC4268 for their invites and joins.
//
//	homeserver ──transactions (heirloom's hs_token)──▶ heirloom ──transactions (the bridge's hs_token)──▶ bridge
//	homeserver ◀──client-server API (heirloom's as_token)── heirloom ◀──client-server API (the bridge's as_token)── bridge
package gateway

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/exsync"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/history"
	"github.com/heirloom-matrix/heirloom/internal/matrixerr"
)

// Gateway is heirloom's side of gateway mode: the bridge-facing client-server API, and the
// transactions heirloom delivers to the bridge.
type Gateway struct {
	cfg     *config.Config
	bridge  *config.Bridge
	db      *database.Database
	mgr     *e2ee.Manager
	history *history.Service
	hsURL   *url.URL
	// proxy carries the bridge's requests to the homeserver; deliverer carries transactions to the
	// bridge.
	proxy     http.Handler
	deliverer *http.Client
	metrics   *Metrics
	log       zerolog.Logger

	// sendLocks serialise sends of one transaction ID of one user (a bridge's retry).
	sendLocks exsync.KeyedMutex[string]
	// provisioning serialises the lazy creation of a bridge user's device.
	provisioning exsync.KeyedMutex[id.UserID]
	// wake nudges the delivery loop; keys lists the sessions that arrived since it last ran.
	wake     chan struct{}
	keysLock sync.Mutex
	keys     map[id.SessionID]struct{}
	// recoveries are the sessions whose missing keys heirloom went to fetch (keyrecovery.go).
	recoveries keyRecoveries
	// warnedEncrypted is set once the bridge was warned it still encrypts by itself.
	warnedEncrypted atomic.Bool
	// backingOff is set while deliveries to the bridge fail; bridgeAlive, when the bridge made a
	// request meanwhile (it is up: the backoff ends). lastFailure is when a delivery last failed.
	backingOff, bridgeAlive atomic.Bool
	failureLock             sync.Mutex
	lastFailure             time.Time
	// outboxBytes is the bytes of the events stored for the bridge and not yet acknowledged
	// (gateway.max_outbox_size); the delivery loop reads it from the database, lastRefresh the
	// last time, and Ingest adds what it stores.
	outboxBytes atomic.Int64
	lastRefresh time.Time
	// timeouts bound the waits for the bridge's answers; hungAt is when (unix ms, the database's
	// clock) the bridge last left an event unanswered while it took empty transactions.
	timeouts deliveryTimeouts
	hungAt   atomic.Int64
	// loneLast is set when the last transaction composed was an event alone: the next gives the
	// other rooms' events their turn first (compose.go). Only the delivery loop reads and sets it.
	loneLast bool
	// beforeStore, in tests, runs in Ingest between decrypting and storing.
	beforeStore func()
}

// New creates the gateway for cfg.Bridge, with its metrics registered on reg.
func New(cfg *config.Config, db *database.Database, mgr *e2ee.Manager, hist *history.Service, metrics *Metrics, log zerolog.Logger) (*Gateway, error) {
	if cfg.Bridge == nil {
		return nil, errors.New("gateway mode is not configured (gateway.registration)")
	}
	hsURL, err := url.Parse(cfg.Homeserver.Address)
	if err != nil {
		return nil, fmt.Errorf("failed to parse homeserver address: %w", err)
	}
	g := &Gateway{
		cfg: cfg, bridge: cfg.Bridge, db: db, mgr: mgr, history: hist, hsURL: hsURL, metrics: metrics,
		log:       log.With().Str("component", "gateway").Str("bridge", cfg.Bridge.Registration.ID).Logger(),
		deliverer: &http.Client{Transport: bridgeTransport()},
		timeouts:  defaultTimeouts,
		wake:      make(chan struct{}, 1),
		keys:      make(map[id.SessionID]struct{}),
	}
	g.proxy = g.newProxy()
	return g, nil
}

// Routes registers the bridge-facing client-server API on mux: everything under /_matrix/client/,
// /_matrix/media/, /_synapse/ and /_matrix/key/ that the bridge calls with its homeserver URL
// pointing at heirloom. What the gateway does not know there is refused, never forwarded.
func (g *Gateway) Routes(mux *http.ServeMux) {
	for _, prefix := range []string{"/_matrix/client/", "/_matrix/media/", "/_synapse/", "/_matrix/key/"} {
		mux.Handle(prefix, http.HandlerFunc(g.serveBridge))
	}
}

// checkBridgeToken reports whether the request carries the bridge's as_token, in the
// Authorization header or the legacy access_token query parameter, compared in constant time.
func (g *Gateway) checkBridgeToken(r *http.Request, params []param) bool {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		if tokens := values(params, "access_token"); len(tokens) > 0 {
			token = tokens[0]
		}
	}
	return token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(g.bridge.Registration.AppToken)) == 1
}

// serveBridge classifies one request of the bridge the way the homeserver would route and parse
// it, then handles it, forwards it, or refuses it (routetable.go).
func (g *Gateway) serveBridge(w http.ResponseWriter, r *http.Request) {
	r = r.WithContext(g.log.With().Str("method", r.Method).Logger().WithContext(r.Context()))
	params := parseQuery(r.URL.RawQuery)
	if !g.checkBridgeToken(r, params) {
		g.refuse(w, r, callUnauthorized, mautrix.MUnknownToken.WithMessage("Unknown access token (gateway mode accepts the bridge's as_token only)"))
		return
	}
	if g.backingOff.Load() {
		g.bridgeAlive.Store(true)
		g.nudge()
	}
	user, refusal := g.actingUser(params)
	if refusal == nil && user != g.bridge.Bot && !g.cfg.IsBridgeUser(user) {
		e := mautrix.MExclusive.WithMessage("%s is not in the bridge's namespace", user).WithStatus(http.StatusForbidden)
		refusal = &e
	}
	if refusal == nil {
		refusal = refuseFormBody(r)
	}
	if refusal != nil {
		g.refuse(w, r, callForbidden, *refusal)
		return
	}
	c, refusal := classify(r.Method, r.URL.EscapedPath())
	if refusal != nil {
		g.refuse(w, r, callUnrecognized, *refusal)
		return
	}
	c.user = user
	if refusal = otherUsersChange(r.Method, c); refusal != nil {
		g.refuse(w, r, callForbidden, *refusal)
		return
	}
	log := zerolog.Ctx(r.Context()).With().Stringer("as_user_id", user).Str("call", c.name).Logger()
	r = r.WithContext(log.WithContext(r.Context()))
	g.metrics.requests.WithLabelValues(c.name).Inc()
	switch {
	case c.refuse != nil:
		log.Debug().Str("path", r.URL.Path).Msg("Refused a bridge call heirloom does not forward")
		matrixerr.Respond(w, *c.refuse)
	case c.handle != nil:
		c.handle(g, w, r, c)
	default:
		g.proxy.ServeHTTP(w, r)
	}
}

// refuse answers a bridge request refused before routing, and counts it under label.
func (g *Gateway) refuse(w http.ResponseWriter, r *http.Request, label string, e mautrix.RespError) {
	g.metrics.requests.WithLabelValues(label).Inc()
	zerolog.Ctx(r.Context()).Debug().Str("path", r.URL.Path).Str("errcode", e.ErrCode).Msg("Refused a bridge request")
	matrixerr.Respond(w, e)
}

// Run delivers the bridge's transactions until ctx ends, and keeps the gateway's tables small.
func (g *Gateway) Run(ctx context.Context) {
	ctx = g.log.WithContext(ctx)
	g.refreshOutbox(ctx, true)
	go g.runMaintenance(ctx)
	// The bot reads the rooms it is in (heisenbridge relays everything through it): its device
	// must exist before senders share their keys, not after the first event it cannot read.
	go func() {
		if _, err := g.identity(ctx, g.bridge.Bot); err != nil && ctx.Err() == nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to create the bridge bot's E2EE device; it is created when first needed")
		}
	}()
	g.runDelivery(ctx)
}

// bridgeTransport is the transport of deliveries to the bridge. Bridges on Node (every one built on
// matrix-appservice-bridge) close an idle connection after 5 s; a transaction sent on it just then
// fails ("connection reset by peer") and waits out a backoff. heirloom closes its idle connections
// first.
func bridgeTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.IdleConnTimeout = 4 * time.Second
	return t
}
