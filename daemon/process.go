package daemon

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"

	"github.com/heirloom-matrix/heirloom/admin"
	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/gateway"
	"github.com/heirloom-matrix/heirloom/history"
	"github.com/heirloom-matrix/heirloom/lease"
	"github.com/heirloom-matrix/heirloom/metrics"
	"github.com/heirloom-matrix/heirloom/server"
)

// process is heirloom's parts, wired. Building it touches neither the database nor the
// homeserver: a standby builds it while it waits, and acts only once it holds the lease.
type process struct {
	cfg     *config.Config
	db      *database.Database
	lease   *lease.Lease
	log     zerolog.Logger
	checks  *mautrix.Client
	mgr     *e2ee.Manager
	sharing *history.Service
	srv     *server.Server
	gw      *gateway.Gateway
	bot     *admin.Bot
	loops   sync.WaitGroup
}

// build wires heirloom's parts. Every request they make to the homeserver or the bridge goes
// through the lease's transport, and the listener answers as the lease allows.
func build(cfg *config.Config, db *database.Database, l *lease.Lease, log zerolog.Logger) (*process, error) {
	p := &process{cfg: cfg, db: db, lease: l, log: log}
	var err error
	if p.checks, err = checkClient(cfg); err != nil {
		log.Error().Err(err).Msg("Failed to set up the homeserver client")
		return nil, err
	}
	httpClient := &http.Client{Timeout: 2 * time.Minute, Transport: l.Transport(http.DefaultTransport)}
	if p.mgr, err = e2ee.NewManager(cfg, db, httpClient, log); err != nil {
		log.Error().Err(err).Msg("Failed to set up puppet crypto")
		return nil, err
	}
	p.sharing = history.NewService(cfg, db, p.mgr)
	p.mgr.OnRoomKeyBundle = p.sharing.ReceiveBundle
	counters := metrics.New()
	p.mgr.Metrics, p.sharing.Metrics = counters, counters
	p.srv = server.NewServer(cfg, db, p.mgr, p.sharing, log)
	p.srv.UseLease(l)
	if cfg.Bridge != nil {
		if p.gw, err = gateway.New(cfg, db, p.mgr, p.sharing, gateway.NewMetrics(p.srv.MetricsRegistry()), log); err != nil {
			log.Error().Err(err).Msg("Failed to set up gateway mode")
			return nil, err
		}
		p.gw.GateTransports(l.Transport)
		// Before any machine loads: every session a bridge user stores may free events waiting
		// for it.
		p.mgr.SetSessionHook(p.gw.KeysArrived)
		p.srv.UseGateway(p.gw)
		log.Info().Str("bridge", cfg.Bridge.Registration.ID).Str("bridge_url", cfg.Bridge.URL).
			Msg("Gateway mode: serving the bridge's client-server API and delivering its transactions")
	}
	if err = counters.Register(p.srv.MetricsRegistry()); err != nil {
		log.Error().Err(err).Msg("Failed to register the metrics")
		return nil, err
	}
	p.bot = admin.New(cfg, db, p.mgr, p.sharing, server.Version)
	if p.gw != nil {
		p.bot.UseGateway(p.gw)
	}
	p.srv.OnRoomEvent = p.bot.HandleEvent
	return p, nil
}

// run checks the homeserver, listens, waits as a standby if another process holds the lease, then
// acts until SIGINT or SIGTERM (ExitOK) or until it loses the lease (exitLeaseLost).
func (p *process) run(ctx context.Context) int {
	// Renewed from now until the shutdown is over: requests and work in progress finish under the
	// lease. A standby's renewals wait until it holds it.
	keepCtx, stopKeeping := context.WithCancel(context.WithoutCancel(ctx))
	defer stopKeeping()
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		p.lease.Keep(keepCtx)
	}()
	code := p.serve(ctx)
	stopKeeping()
	<-kept // no renewal may land after the release
	if code != exitLeaseLost {
		p.lease.Release(context.WithoutCancel(ctx))
	}
	return code
}

// serve is run's part under the lease: the listener, a standby's wait, and acting.
func (p *process) serve(ctx context.Context) int {
	log := zerolog.Ctx(ctx)
	if err := checkHomeserverReachable(ctx, p.checks, p.cfg); err != nil {
		log.Error().Err(err).Str("homeserver", p.cfg.Homeserver.Address).Msg("The homeserver is not reachable")
		return exitHomeserver
	}
	tookOver := !p.lease.Active()
	if !tookOver {
		// As before any transaction is taken: the listener answers as a standby until then.
		if code := p.prepareDatabase(ctx); code != ExitOK {
			return code
		}
	}
	if err := p.srv.Start(); err != nil {
		log.Error().Err(err).Msg("Failed to start the HTTP listener")
		return exitStartup
	}
	defer p.stop(ctx)
	if tookOver {
		if code := p.standby(ctx); code != ExitOK || ctx.Err() != nil {
			return code
		}
		if code := p.prepareDatabase(ctx); code != ExitOK {
			return code
		}
	}
	active, cancel := p.lease.Context(ctx)
	defer cancel()
	if code := p.activate(active, tookOver); code != ExitOK {
		return code
	}
	log.Info().Str("version", server.Version).Msg("heirloom is running")
	select {
	case <-ctx.Done():
		log.Info().Msg("Shutting down")
		return ExitOK
	case <-p.lease.Lost():
		return exitLeaseLost
	}
}

// standby checks the registration (the active process answers the homeserver's ping) and waits
// for the lease. It returns ExitOK once the process holds it, or when ctx ended.
func (p *process) standby(ctx context.Context) int {
	if err := checkRegistration(ctx, p.checks, p.cfg); err != nil && ctx.Err() == nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("The homeserver does not accept heirloom's registration")
		return exitHomeserver
	}
	waiting := time.Now()
	got, err := p.lease.Acquire(ctx)
	if err != nil {
		return ExitOK
	}
	ev := zerolog.Ctx(ctx).Info().Str("database", p.lease.Describe()).Dur("waited", time.Since(waiting)).Int64("epoch", got.Holder.Epoch)
	if got.Previous != nil {
		ev = ev.Str("previous_host", got.Previous.Host).Int("previous_pid", got.Previous.PID)
	}
	ev.Msg("Took over the database lease: this process is the active one now")
	return ExitOK
}

// prepareDatabase upgrades the database and marks every device list outdated, once the process
// holds the lease.
func (p *process) prepareDatabase(ctx context.Context) int {
	log := zerolog.Ctx(ctx)
	if err := p.db.Upgrade(ctx); err != nil {
		log.Error().Err(err).Msg("Failed to upgrade the database")
		return exitDatabase
	}
	// Synapse drops the device-list changes of a transaction it could not deliver (while heirloom
	// was down, restarting or taken over, it keeps only the events for its retries): any tracked
	// list may have changed unseen, so each is fetched again before a room key is next shared
	// with its user.
	if err := p.mgr.MarkDeviceListsOutdated(ctx); err != nil {
		log.Error().Err(err).Msg("Failed to mark device lists outdated")
		return exitDatabase
	}
	return ExitOK
}

// activate does what a start does once the process holds the lease, on a takeover as on a first
// start: it lets the listener act, provisions the bot and starts the work that resumes whatever
// was pending (deliveries, imports, the bridge's outbox). The homeserver's ping was answered at
// the first start, or by the previous active process before a takeover.
func (p *process) activate(ctx context.Context, tookOver bool) int {
	log := zerolog.Ctx(ctx)
	p.srv.Activate()
	if p.gw != nil {
		// The registration's sender is the bridge's bot: heirloom's own must be registered.
		if err := p.mgr.EnsureRegistered(ctx, p.cfg.BotUserID()); err != nil {
			log.Warn().Err(err).Msg("Failed to register heirloom's bot")
		}
	}
	if !tookOver {
		if err := checkRegistration(ctx, p.checks, p.cfg); err != nil {
			log.Error().Err(err).Msg("The homeserver does not accept heirloom's registration")
			return exitHomeserver
		}
	}
	prepareDevices(ctx, p.bot)
	for _, loop := range []func(context.Context){
		func(ctx context.Context) {
			if tookOver {
				pingAfterTakeover(ctx, p.checks, p.cfg)
			}
		},
		func(ctx context.Context) { checkRecentDevices(ctx, p.mgr) },
		func(ctx context.Context) { p.mgr.RunMaintenance(ctx, p.cfg.Encryption.Maintenance()) },
		p.sharing.Run,
		p.bot.Run,
		func(ctx context.Context) { pruneTransactions(ctx, p.db) },
		func(ctx context.Context) {
			if p.gw != nil {
				p.gw.Run(ctx)
			}
		},
	} {
		p.loops.Add(1)
		go func() {
			defer p.loops.Done()
			loop(ctx)
		}()
	}
	return ExitOK
}

// shutdownTimeout bounds a shutdown: requests in flight, then history sharing work in progress.
const shutdownTimeout = 15 * time.Second

// stop stops heirloom in order, so nothing still running meets a closed database: the listener
// lets requests in flight finish (they may start history sharing work), history sharing finishes
// the work it started (an import commits whole or not at all either way), so do the device
// checks, and the background loops, whose context has ended, return.
func (p *process) stop(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := p.srv.Stop(ctx); err != nil {
		p.log.Warn().Err(err).Msg("Requests were still running at shutdown")
	}
	if err := p.sharing.Shutdown(ctx); err != nil {
		p.log.Warn().Err(err).Msg("History sharing work was still running at shutdown")
	}
	if err := p.mgr.Shutdown(ctx); err != nil {
		p.log.Warn().Err(err).Msg("Puppet device work was still running at shutdown")
	}
	p.loops.Wait()
}
