package admin

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
)

// In gateway mode the bot's status says how many events wait for the bridge; without it, nothing.
func TestStatusShowsTheGatewayOutbox(t *testing.T) {
	ctx := context.Background()
	registration := filepath.Join(t.TempDir(), "bridge.yaml")
	require.NoError(t, os.WriteFile(registration, []byte("id: ircbridge\nurl: http://127.0.0.1:9\nas_token: bridge-as-0123456789\n"+
		"hs_token: bridge-hs-0123456789\nsender_localpart: ircbot\nnamespaces:\n  users:\n  - regex: '@irc_.*'\n    exclusive: true\n"), 0o600))
	cfg := &config.Config{
		Homeserver: config.Homeserver{Address: "http://127.0.0.1:9", Domain: "localhost"},
		AppService: config.AppService{Address: "http://127.0.0.1:29400", Hostname: "127.0.0.1", Port: 29400, ID: "heirloom",
			BotUsername: "heirloombot", PuppetPrefix: "heirloom_", ASToken: "as-token-0123456789abcdef", HSToken: "hs-token-0123456789abcdef"},
		Database:       testdb.SQLite(t),
		Encryption:     config.Encryption{PickleKey: "pickle-key-0123456789abcdef"},
		Provisioning:   config.Provisioning{SharedSecret: "api-secret-0123456789abcdef"},
		HistorySharing: config.HistorySharing{ShareOnInvite: true, AcceptWindow: 24 * time.Hour, MaxBundleSize: 1 << 20},
		Logging:        config.Logging{Level: "info", Format: "json"},
	}
	require.NoError(t, cfg.Validate())
	db, err := database.Open(cfg.Database, zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	require.NoError(t, db.Upgrade(ctx))
	mgr, err := e2ee.NewManager(cfg, db, &http.Client{Timeout: time.Second}, zerolog.Nop())
	require.NoError(t, err)
	b := New(cfg, db, mgr, nil, "test")

	require.NotContains(t, b.status(ctx, "", nil), "gateway outbox")

	cfg.Gateway.Registration = registration
	cfg.Bridge, err = cfg.LoadBridge()
	require.NoError(t, err)
	require.NoError(t, db.PutGatewayEvents(ctx, []*database.GatewayEvent{
		{Key: "$a", EventID: "$a", RoomID: "!r:localhost", Kind: database.GatewayRoomEvent, Body: "{}"},
		{Key: "$b", EventID: id.EventID("$b"), RoomID: "!r:localhost", Kind: database.GatewayRoomEvent, Body: "{}"},
	}))
	require.Contains(t, b.status(ctx, "", nil), "gateway outbox (ircbridge): 2 events not yet acknowledged by the bridge")
}
