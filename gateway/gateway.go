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
		deliverer: &http.Client{Timeout: 60 * time.Second, Transport: bridgeTransport()},
		wake:      make(chan struct{}, 1),
		keys:      make(map[id.SessionID]struct{}),
	}
	g.proxy = g.newProxy()
	return g, nil
}

// Routes registers the bridge-facing client-server API on mux: everything under /_matrix/client/,
// /_matrix/media/ and /_synapse/ that the bridge calls with its homeserver URL pointing at heirloom.
func (g *Gateway) Routes(mux *http.ServeMux) {
	for _, prefix := range []string{"/_matrix/client/", "/_matrix/media/", "/_synapse/", "/_matrix/key/"} {
		mux.Handle(prefix, http.HandlerFunc(g.serveBridge))
	}
}

// checkBridgeToken reports whether the request carries the bridge's as_token, in the
// Authorization header or the legacy access_token query parameter, compared in constant time.
func (g *Gateway) checkBridgeToken(r *http.Request) bool {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		token = r.URL.Query().Get("access_token")
	}
	return token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(g.bridge.Registration.AppToken)) == 1
}

// actingUser is the user a bridge request acts as: the user_id it masquerades as, or its bot.
func (g *Gateway) actingUser(r *http.Request) id.UserID {
	if u := r.URL.Query().Get("user_id"); u != "" {
		return id.UserID(u)
	}
	return g.bridge.Bot
}

// serveBridge routes one request of the bridge: the calls GATEWAY.md lists are handled, every
// other call is forwarded to the homeserver as it is.
func (g *Gateway) serveBridge(w http.ResponseWriter, r *http.Request) {
	if !g.checkBridgeToken(r) {
		g.metrics.requests.WithLabelValues("unauthorized").Inc()
		writeMatrixError(w, http.StatusUnauthorized, mautrix.MUnknownToken.ErrCode, "Unknown access token (gateway mode accepts the bridge's as_token only)")
		return
	}
	if g.backingOff.Load() {
		g.bridgeAlive.Store(true)
		g.nudge()
	}
	if len(r.URL.Query()["user_id"]) > 1 {
		// Whichever the homeserver would read, heirloom checked one: refuse the ambiguity.
		g.metrics.requests.WithLabelValues("forbidden").Inc()
		writeMatrixError(w, http.StatusBadRequest, mautrix.MInvalidParam.ErrCode, "user_id given more than once")
		return
	}
	user := g.actingUser(r)
	if user != g.bridge.Bot && !g.cfg.IsBridgeUser(user) {
		g.metrics.requests.WithLabelValues("forbidden").Inc()
		writeMatrixError(w, http.StatusForbidden, mautrix.MExclusive.ErrCode, fmt.Sprintf("%s is not in the bridge's namespace", user))
		return
	}
	log := g.log.With().Stringer("as_user_id", user).Str("method", r.Method).Logger()
	r = r.WithContext(log.WithContext(r.Context()))
	route := matchRoute(r)
	g.metrics.requests.WithLabelValues(route.name).Inc()
	switch route.name {
	case routeSend:
		g.handleSend(w, r, user, id.RoomID(route.room), route.evtType, route.txnID)
	case routeInvite:
		g.handleInvite(w, r, user, id.RoomID(route.room))
	case routeJoin:
		g.handleJoin(w, r, user, route.room)
	case routeCreateRoom:
		g.handleCreateRoom(w, r)
	case routeRegister, routeLogin:
		g.handleAccount(w, r, route.name)
	case routeMessages, routeContext, routeEvent, routeRelations:
		g.handleRead(w, r, user, id.RoomID(route.room))
	case routeMediaDownload:
		if g.serveMedia(w, r, user, route.server, route.mediaID) {
			return
		}
		g.proxy.ServeHTTP(w, r)
	default:
		g.proxy.ServeHTTP(w, r)
	}
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
