package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"

	"github.com/heirloom-matrix/heirloom/admin"
	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/tasks"
)

// checkClient is the client of the startup checks: they only read, so a standby makes them too,
// without the lease's transport.
func checkClient(cfg *config.Config) (*mautrix.Client, error) {
	cli, err := mautrix.NewClient(cfg.Homeserver.Address, cfg.BotUserID(), cfg.AppService.ASToken)
	if err != nil {
		return nil, err
	}
	cli.SetAppServiceUserID = true
	cli.UserAgent = "heirloom"
	cli.Client = &http.Client{Timeout: time.Minute}
	return cli, nil
}

func checkHomeserverReachable(ctx context.Context, cli *mautrix.Client, cfg *config.Config) error {
	var lastErr error
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

// registrationRetry is how long the ping is tried again while the homeserver cannot reach
// heirloom through a load balancer that does not route to the active process yet (its readiness
// check has not seen GET /ready answer 200).
const registrationRetry = 20 * time.Second

// checkRegistration asks the homeserver to ping heirloom (MSC2659): it proves the homeserver has
// loaded the registration, accepts the as_token and can reach heirloom's URL with the hs_token.
// Behind a load balancer the active process answers the ping, a standby's too.
func checkRegistration(ctx context.Context, cli *mautrix.Client, cfg *config.Config) error {
	deadline := time.Now().Add(registrationRetry)
	for {
		resp, err := cli.AppservicePing(ctx, cfg.RegisteredID(), "heirloom-startup")
		if err == nil {
			zerolog.Ctx(ctx).Info().Int64("duration_ms", resp.DurationMS).Msg("Homeserver accepted the registration and reached heirloom")
			return nil
		}
		if !balancerNotReady(err) || time.Now().After(deadline) {
			return explainPing(err, cfg)
		}
		zerolog.Ctx(ctx).Info().Err(err).Msg("The homeserver cannot reach heirloom yet (a load balancer may not route to it yet); retrying")
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// pingAfterTakeover asks the homeserver to ping heirloom once it has taken over: the homeserver
// held the appservice to be down while no process answered, and retries its transactions only
// after a backoff (Synapse: 2 s, doubling) unless a ping succeeds, which makes it retry at once.
func pingAfterTakeover(ctx context.Context, cli *mautrix.Client, cfg *config.Config) {
	if err := checkRegistration(ctx, cli, cfg); err != nil && ctx.Err() == nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("The homeserver's ping after the takeover failed: it sends its transactions again after its own backoff")
	}
}

// balancerNotReady reports whether a failed ping may be a load balancer that routes to no process
// yet: the homeserver could not connect, or got 502, 503 or 504.
func balancerNotReady(err error) bool {
	var he mautrix.HTTPError
	if !errors.As(err, &he) || he.RespError == nil {
		return false
	}
	switch he.RespError.ErrCode {
	case "M_CONNECTION_FAILED", "M_CONNECTION_TIMEOUT":
		return true
	case "M_BAD_STATUS":
		status, _ := he.RespError.ExtraData["status"].(float64)
		return status == http.StatusBadGateway || status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout
	}
	return false
}

func explainPing(err error, cfg *config.Config) error {
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

// startupDeviceTimeout bounds the provisioning of the bot's device at startup.
const startupDeviceTimeout = time.Minute

// prepareDevices provisions the bot's device (or loads it) at startup. A failure is logged and
// startup goes on: the bot retries in the background.
func prepareDevices(ctx context.Context, bot *admin.Bot) {
	ctx, cancel := context.WithTimeout(ctx, startupDeviceTimeout)
	defer cancel()
	if err := bot.Provision(ctx); err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to provision the bot's device; retrying in the background")
	}
}

// checkRecentDevices checks, in the background once heirloom acts, that the homeserver still has
// the devices of the puppets active within a day with their keys and signature, and restores what
// it lost (Synapse's delete_stale_devices_after prunes appservice devices; while an appservice is
// unreachable Synapse drops the device-list changes it would push). Any other puppet's device is
// checked when its machine first loads: a start costs nothing per idle puppet. A device that
// cannot be restored is reported in GET /status.
func checkRecentDevices(ctx context.Context, mgr *e2ee.Manager) {
	if err := mgr.CheckRecentDevices(ctx); err != nil && ctx.Err() == nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to check the devices of the puppets active within a day")
	}
}

func pruneTransactions(ctx context.Context, db *database.Database) {
	tasks.Every(ctx, time.Hour, nil, func() {
		if err := db.PruneTxns(ctx, 7*24*time.Hour); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to prune old transaction IDs")
		}
	})
}
