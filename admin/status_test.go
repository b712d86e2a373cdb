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

// gatewayBot is the bot of a heirloom in gateway mode, with its database, on a homeserver that is
// not there.
func gatewayBot(t *testing.T) (*Bot, *database.Database) {
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
	e2ee.RegisterContentTypes()
	mgr, err := e2ee.NewManager(cfg, db, &http.Client{Timeout: time.Second}, zerolog.Nop())
	require.NoError(t, err)
	b := New(cfg, db, mgr, nil, "test")

	cfg.Gateway.Registration = registration
	cfg.Bridge, err = cfg.LoadBridge()
	require.NoError(t, err)
	return b, db
}

// In gateway mode the bot's status says how many events wait for the bridge; without it, nothing.
func TestStatusShowsTheGatewayOutbox(t *testing.T) {
	ctx := context.Background()
	b, db := gatewayBot(t)
	cfg := b.cfg
	bridge := cfg.Bridge
	cfg.Bridge = nil
	require.NotContains(t, b.status(ctx, "", nil), "gateway outbox")

	cfg.Bridge = bridge
	require.NoError(t, db.PutGatewayEvents(ctx, []*database.GatewayEvent{
		{Key: "$a", EventID: "$a", RoomID: "!r:localhost", Kind: database.GatewayRoomEvent, Body: "{}"},
		{Key: "$b", EventID: id.EventID("$b"), RoomID: "!r:localhost", Kind: database.GatewayRoomEvent, Body: "{}"},
	}))
	require.Contains(t, b.status(ctx, "", nil), "gateway outbox (ircbridge): 2 events not yet acknowledged by the bridge")
}

// requeueGateway resends as the gateway does, straight in the database.
type requeueGateway struct{ db *database.Database }

func (g requeueGateway) Resend(ctx context.Context, eventID id.EventID) (int, error) {
	return g.db.RequeueGatewayDeadLetters(ctx, string(eventID))
}

// The bot's status lists the events the bridge refused every time (set aside), and resend delivers
// them again: all, or the one named.
func TestStatusListsEventsSetAsideAndResendsThem(t *testing.T) {
	ctx := context.Background()
	b, db := gatewayBot(t)
	require.Contains(t, b.run(ctx, "", "resend all"), "Gateway mode is off")
	b.UseGateway(requeueGateway{db})
	require.Contains(t, b.status(ctx, "", nil), "gateway events set aside: none")
	require.NoError(t, db.PutGatewayEvents(ctx, []*database.GatewayEvent{
		{Key: "$poison", EventID: "$poison", RoomID: "!r:localhost", Kind: database.GatewayRoomEvent, Body: "{}"},
	}))
	heads, err := db.GatewayOutboxHeads(ctx, 0, 10)
	require.NoError(t, err)
	txn, err := db.CreateGatewayTxn(ctx, []int64{heads[0].Seq}, 1, nil)
	require.NoError(t, err)
	require.NoError(t, db.RefuseGatewayEvent(ctx, txn.ID, heads[0].Seq, 0, "the bridge answered 500", true))
	status := b.status(ctx, "", nil)
	require.Contains(t, status, "gateway events set aside (the bridge refused them every time): 1")
	require.Contains(t, status, `- $poison in !r:localhost: refused 1 time(s), last "the bridge answered 500"`)

	require.Equal(t, "No event set aside has the ID $other.", b.run(ctx, "", "resend $other"))
	require.Contains(t, b.run(ctx, "", "resend $poison"), "Delivering 1 event(s) to the bridge again")
	require.Contains(t, b.status(ctx, "", nil), "gateway events set aside: none")
	require.Equal(t, "No event is set aside.", b.run(ctx, "", "resend all"))
}
