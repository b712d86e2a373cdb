// Package daemon provides heirloom's process lifecycle: loading the config, generating the
// registration, opening the database, checking the homeserver, serving, and shutting down.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"

	"github.com/heirloom-matrix/heirloom/admin"
	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/gateway"
	"github.com/heirloom-matrix/heirloom/history"
	"github.com/heirloom-matrix/heirloom/metrics"
	"github.com/heirloom-matrix/heirloom/server"
)

// Exit codes, distinct per failure so service managers and scripts can tell them apart.
const (
	ExitOK         = 0
	ExitConfig     = 2
	ExitDatabase   = 3
	ExitHomeserver = 4
	ExitStartup    = 5
)

// WriteExample writes the example config to path unless a file is already there.
func WriteExample(path string, example []byte) int {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Not writing the example config: %v\n", err)
		return ExitConfig
	}
	defer f.Close()
	if _, err = f.Write(example); err != nil {
		fmt.Fprintf(os.Stderr, "Failed to write the example config: %v\n", err)
		return ExitConfig
	}
	fmt.Printf("Wrote the example config to %s: edit it, then run heirloom -g to generate the registration.\n", path)
	return ExitOK
}

// GenerateRegistration fills the config's secrets (saving them) and writes the registration, mode 0600.
func GenerateRegistration(configPath, registrationPath string) int {
	cfg, err := config.Load(configPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Failed to load config: %v\n", err)
		return ExitConfig
	}
	data, err := config.RegistrationYAML(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Failed to build the registration: %v\n", err)
		return ExitConfig
	}
	if err = writeFile0600(registrationPath, data); err != nil {
		fmt.Fprintf(os.Stderr, "Failed to write the registration: %v\n", err)
		return ExitConfig
	}
	fmt.Printf("Wrote the registration to %s: add it to the homeserver's app_service_config_files.\n", registrationPath)
	return ExitOK
}

func writeFile0600(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}

func newLogger(cfg config.Logging) zerolog.Logger {
	// Milliseconds: an operator following one event through heirloom needs them.
	zerolog.TimeFieldFormat = "2006-01-02T15:04:05.000Z07:00"
	level, err := zerolog.ParseLevel(cfg.Level)
	if err != nil {
		level = zerolog.InfoLevel
	}
	var log zerolog.Logger
	if cfg.Format == "json" {
		log = zerolog.New(os.Stdout)
	} else {
		log = zerolog.New(zerolog.ConsoleWriter{Out: os.Stdout, TimeFormat: time.DateTime})
	}
	return log.Level(level).With().Timestamp().Logger()
}

// Run starts heirloom and blocks until SIGINT or SIGTERM. It returns the process exit code.
func Run(configPath string) int {
	// Everything heirloom creates (the SQLite database and its WAL, temporary bundles) holds
	// secrets or key material: readable by heirloom's user only.
	syscall.Umask(0o077)
	cfg, err := config.Load(configPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Failed to load config: %v\n", err)
		return ExitConfig
	}
	log := newLogger(cfg.Logging)
	ctx, stop := signal.NotifyContext(log.WithContext(context.Background()), os.Interrupt, syscall.SIGTERM)
	defer stop()

	db, err := database.Open(cfg.Database, log)
	if err != nil {
		log.Error().Err(err).Msg("Failed to open the database")
		return ExitDatabase
	}
	defer db.Close()
	if err = db.Upgrade(ctx); err != nil {
		log.Error().Err(err).Msg("Failed to upgrade the database")
		return ExitDatabase
	}

	httpClient := &http.Client{Timeout: 2 * time.Minute}
	mgr, err := e2ee.NewManager(cfg, db, httpClient, log)
	if err != nil {
		log.Error().Err(err).Msg("Failed to set up puppet crypto")
		return ExitStartup
	}
	// Synapse drops the device-list changes of a transaction it could not deliver (while heirloom
	// was down or restarting, it keeps only the events for its retries): any tracked list may have changed unseen, so each is fetched again before a
	// room key is next shared with its user.
	if err = mgr.MarkDeviceListsOutdated(ctx); err != nil {
		log.Error().Err(err).Msg("Failed to mark device lists outdated")
		return ExitDatabase
	}
	if err = checkHomeserverReachable(ctx, mgr, cfg); err != nil {
		log.Error().Err(err).Str("homeserver", cfg.Homeserver.Address).Msg("The homeserver is not reachable")
		return ExitHomeserver
	}
	sharing := history.NewService(cfg, db, mgr)
	mgr.OnRoomKeyBundle = sharing.ReceiveBundle
	counters := metrics.New()
	mgr.Metrics, sharing.Metrics = counters, counters
	srv := server.NewServer(cfg, db, mgr, sharing, log)
	var gw *gateway.Gateway
	if cfg.Bridge != nil {
		if gw, err = gateway.New(cfg, db, mgr, sharing, gateway.NewMetrics(srv.MetricsRegistry()), log); err != nil {
			log.Error().Err(err).Msg("Failed to set up gateway mode")
			return ExitStartup
		}
		// Before any machine loads: every session a bridge user stores may free events waiting
		// for it.
		mgr.SetSessionHook(gw.KeysArrived)
		srv.UseGateway(gw)
		log.Info().Str("bridge", cfg.Bridge.Registration.ID).Str("bridge_url", cfg.Bridge.URL).
			Msg("Gateway mode: serving the bridge's client-server API and delivering its transactions")
	}
	if err = counters.Register(srv.MetricsRegistry()); err != nil {
		log.Error().Err(err).Msg("Failed to register the metrics")
		return ExitStartup
	}
	bot := admin.New(cfg, db, mgr, sharing, server.Version)
	if gw != nil {
		bot.UseGateway(gw)
	}
	srv.OnRoomEvent = bot.HandleEvent
	if err = srv.Start(); err != nil {
		log.Error().Err(err).Msg("Failed to start the HTTP listener")
		return ExitStartup
	}
	var loops sync.WaitGroup
	defer shutdown(log, srv, sharing, mgr, &loops) // before db.Close, deferred first
	if gw != nil {
		// The registration's sender is the bridge's bot: heirloom's own must be registered.
		if err = mgr.EnsureRegistered(ctx, cfg.BotUserID()); err != nil {
			log.Warn().Err(err).Msg("Failed to register heirloom's bot")
		}
	}
	if err = checkRegistration(ctx, mgr, cfg); err != nil {
		log.Error().Err(err).Msg("The homeserver does not accept heirloom's registration")
		return ExitHomeserver
	}
	prepareDevices(ctx, mgr, bot)
	for _, loop := range []func(context.Context){
		func(ctx context.Context) { mgr.RunMaintenance(ctx, cfg.Encryption.Maintenance()) },
		sharing.Run,
		bot.Run,
		func(ctx context.Context) { pruneTransactions(ctx, db) },
		func(ctx context.Context) {
			if gw != nil {
				gw.Run(ctx)
			}
		},
	} {
		loops.Add(1)
		go func() {
			defer loops.Done()
			loop(ctx)
		}()
	}
	log.Info().Str("version", server.Version).Msg("heirloom is running")
	<-ctx.Done()
	log.Info().Msg("Shutting down")
	return ExitOK
}

// startupDeviceTimeout bounds the device checks at startup.
const startupDeviceTimeout = time.Minute

// prepareDevices checks at startup that the homeserver still has every puppet's device with its
// keys and signature (restoring what it lost: Synapse's delete_stale_devices_after prunes
// appservice devices), and provisions the bot's device. It runs once heirloom listens: Synapse
// pushes the device-list changes this makes, and while an appservice is unreachable it drops what
// it would push. A failure is logged and startup goes on: a device that cannot be restored is
// reported in GET /status, and the bot retries.
func prepareDevices(ctx context.Context, mgr *e2ee.Manager, bot *admin.Bot) {
	ctx, cancel := context.WithTimeout(ctx, startupDeviceTimeout)
	defer cancel()
	if err := mgr.CheckAllDevices(ctx); err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to check the puppets' devices")
	}
	if err := bot.Provision(ctx); err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to provision the bot's device; retrying in the background")
	}
}

// shutdownTimeout bounds a shutdown: requests in flight, then history sharing work in progress.
const shutdownTimeout = 15 * time.Second

// shutdown stops heirloom in order, so nothing still running meets a closed database: the
// listener lets requests in flight finish (they may start history sharing work), history sharing
// finishes the work it started (an import commits whole or not at all either way), so do the
// device checks, and the background loops, whose context has ended, return.
func shutdown(log zerolog.Logger, srv *server.Server, sharing *history.Service, mgr *e2ee.Manager, loops *sync.WaitGroup) {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Stop(ctx); err != nil {
		log.Warn().Err(err).Msg("Requests were still running at shutdown")
	}
	if err := sharing.Shutdown(ctx); err != nil {
		log.Warn().Err(err).Msg("History sharing work was still running at shutdown")
	}
	if err := mgr.Shutdown(ctx); err != nil {
		log.Warn().Err(err).Msg("Puppet device work was still running at shutdown")
	}
	loops.Wait()
}

func checkHomeserverReachable(ctx context.Context, mgr *e2ee.Manager, cfg *config.Config) error {
	var lastErr error
	cli := mgr.Client(ctx, cfg.BotUserID())
	cli.DefaultHTTPRetries = 0 // this loop is the retry schedule (about 20 s in all)
	for attempt := 0; attempt < 5; attempt++ {
		checkCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, lastErr = cli.Versions(checkCtx)
		cancel()
		// Any HTTP answer means the homeserver is up. An error answer (401 M_UNKNOWN_TOKEN for an
		// as_token of a registration the homeserver has not loaded) is for checkRegistration to
		// explain; retrying it here would only end in a wrong "not reachable".
		var he mautrix.HTTPError
		if lastErr == nil || errors.As(lastErr, &he) && he.Response != nil {
			return nil
		}
		if attempt == 4 {
			break
		}
		zerolog.Ctx(ctx).Warn().Err(lastErr).Int("attempt", attempt+1).Msg("Homeserver not reachable yet, retrying")
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 2 * time.Second):
		}
	}
	return fmt.Errorf("GET /_matrix/client/versions failed: %w", lastErr)
}

// checkRegistration asks the homeserver to ping heirloom (MSC2659): it proves the homeserver has
// loaded the registration, accepts the as_token and can reach heirloom's URL with the hs_token.
func checkRegistration(ctx context.Context, mgr *e2ee.Manager, cfg *config.Config) error {
	resp, err := mgr.Client(ctx, cfg.BotUserID()).AppservicePing(ctx, cfg.RegisteredID(), "heirloom-startup")
	if err != nil {
		var he mautrix.HTTPError
		switch {
		case errors.Is(err, mautrix.MUnknownToken), errors.Is(err, mautrix.MForbidden):
			return fmt.Errorf("the homeserver rejects appservice.as_token: is the registration loaded (app_service_config_files) and generated from this config? %w", err)
		case errors.As(err, &he) && he.RespError != nil && he.RespError.ErrCode == "M_URL_NOT_SET":
			return fmt.Errorf("the registration has no url: %w", err)
		case errors.As(err, &he) && he.RespError != nil && he.RespError.ErrCode == "M_CONNECTION_FAILED":
			return fmt.Errorf("the homeserver cannot reach heirloom at appservice.address %s: %w", cfg.AppService.Address, err)
		case errors.As(err, &he) && he.RespError != nil && he.RespError.ErrCode == "M_BAD_STATUS":
			return fmt.Errorf("heirloom refused the homeserver's ping (does hs_token match the registration?): %w", err)
		}
		return fmt.Errorf("appservice ping failed: %w", err)
	}
	zerolog.Ctx(ctx).Info().Int64("duration_ms", resp.DurationMS).Msg("Homeserver accepted the registration and reached heirloom")
	return nil
}

func pruneTransactions(ctx context.Context, db *database.Database) {
	ticker := time.NewTicker(time.Hour)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if err := db.PruneTxns(ctx, 7*24*time.Hour); err != nil {
				zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to prune old transaction IDs")
			}
		}
	}
}
