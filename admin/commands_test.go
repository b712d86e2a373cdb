package admin

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/history"
)

const (
	alicePuppet id.UserID = "@heirloom_alice:localhost"
	bobPuppet   id.UserID = "@heirloom_bob:localhost"
	sharedRoom  id.RoomID = "!shared:localhost"
)

// command runs an admin's command (already accepted) and returns the bot's answer.
func (env *botEnv) command(body string) string {
	return env.bot.run(context.Background(), testAdmin, body)
}

// withHistory gives the bot the history sharing service its bundles, reshare and retry use.
func (env *botEnv) withHistory() {
	env.bot.history = history.NewService(env.bot.cfg, env.db, env.bot.mgr)
}

// puppet: what the puppet's device is, its master key, its rooms and when heirloom last acted
// as it; anyone who is not a provisioned puppet is said to be none.
func TestPuppetCommand(t *testing.T) {
	env := newBotEnv(t)
	ctx := context.Background()
	require.Equal(t, "Usage: puppet <user>", env.command("puppet"))
	require.Equal(t, `"@bad" is not a user ID`, env.command("puppet @bad"))
	require.Equal(t, "@stranger:localhost is not a provisioned puppet.", env.command("puppet @stranger:localhost"))
	require.NoError(t, env.db.PutPuppet(ctx, &database.Puppet{UserID: bobPuppet, DeviceID: "HALFDONE"}))
	require.Equal(t, bobPuppet.String()+" is not a provisioned puppet.", env.command("puppet heirloom_bob"), "provisioning never finished")

	require.NoError(t, env.db.PutPuppet(ctx, &database.Puppet{UserID: alicePuppet, DeviceID: "ALICEDEV", MasterKey: "YWxpY2UncyBtYXN0ZXI", Ready: true}))
	answer := env.command("puppet heirloom_alice")
	require.Equal(t, "@heirloom_alice:localhost\ndevice: ALICEDEV\nmaster key: YWxpY2UncyBtYXN0ZXI\n"+
		"rooms: unknown (M_UNKNOWN (HTTP 500): Internal server error)\nlast activity: never recorded", answer)

	var rooms []id.RoomID
	for i := range 53 {
		rooms = append(rooms, id.RoomID(fmt.Sprintf("!r%02d:localhost", i)))
	}
	env.hs.mu.Lock()
	env.hs.joined[alicePuppet] = rooms
	env.hs.mu.Unlock()
	require.NoError(t, env.db.TouchPuppet(ctx, alicePuppet))
	answer = env.command("puppet " + alicePuppet.String())
	require.Contains(t, answer, "rooms (53):\n- !r00:localhost\n")
	require.Contains(t, answer, "\n- !r49:localhost\n- … and 3 more\n", "fifty listed")
	require.NotContains(t, answer, "!r50:localhost")
	require.Regexp(t, `last activity: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+s ago\)$`, answer)
}

// bundles: every bundle sent and received in the room, with each device's outcome and why a
// bundle went wrong; the twenty newest of each direction.
func TestBundlesCommand(t *testing.T) {
	env := newBotEnv(t)
	env.withHistory()
	ctx := context.Background()
	require.Equal(t, "Usage: bundles <room>", env.command("bundles"))
	require.Equal(t, `"#room:localhost" is not a room ID (they start with !)`, env.command("bundles #room:localhost"))
	require.Equal(t, "Bundles in !shared:localhost\nsent (0):\nreceived (0):", env.command("bundles !shared:localhost"))

	require.NoError(t, env.db.PutSentBundle(ctx, &database.SentBundle{BundleID: "b1", Puppet: alicePuppet, RoomID: sharedRoom,
		Invitee: testAdmin, State: database.SentDelivered, Sessions: 7, Withheld: 2, CreatedAt: 1_700_000_000_000}))
	for _, d := range []database.Delivery{
		{UserID: testAdmin, DeviceID: "PHONE", Delivered: true},
		{UserID: testAdmin, DeviceID: "TABLET", Reason: "no one-time key"},
		{UserID: testAdmin, DeviceID: "LAPTOP", Delivered: true, AddedLater: true},
	} {
		require.NoError(t, env.db.PutDelivery(ctx, "b1", d))
	}
	require.NoError(t, env.db.PutReceivedBundle(ctx, &database.ReceivedBundle{Puppet: bobPuppet, RoomID: sharedRoom, Sender: testAdmin,
		SenderDevice: "PHONE", State: database.ReceivedPending}))
	received, err := env.db.GetReceivedBundle(ctx, bobPuppet, sharedRoom, testAdmin)
	require.NoError(t, err)
	received.State, received.Imported, received.Withheld, received.Skipped, received.Error = database.ReceivedFailed, 3, 1, 2, "the media is gone"
	require.NoError(t, env.db.UpdateReceivedBundle(ctx, received))

	answer := env.command("bundles !shared:localhost")
	require.Contains(t, answer, "sent (1):\n- invite b1 by @heirloom_alice:localhost to @admin:localhost, 2023-11-14 22:13:20 UTC (")
	require.Contains(t, answer, "delivered, 7 sessions, 2 withheld\n"+
		"  - device LAPTOP: delivered (added later)\n  - device PHONE: delivered\n  - device TABLET: not delivered: no one-time key\n")
	require.Contains(t, answer, "received (1):\n- by @heirloom_bob:localhost from @admin:localhost (device PHONE), ")
	require.True(t, strings.HasSuffix(answer, ": failed, 3 keys imported, 1 withheld, 2 skipped (the media is gone)"), answer)

	for i := range 21 {
		require.NoError(t, env.db.PutSentBundle(ctx, &database.SentBundle{BundleID: fmt.Sprintf("n%02d", i), Puppet: alicePuppet,
			RoomID: sharedRoom, Invitee: stranger, State: database.SentSkipped, Reason: "no cross-signing identity",
			Kind: database.SentKindReshare, CreatedAt: 1_700_000_001_000 + int64(i)}))
	}
	answer = env.command("bundles !shared:localhost")
	require.Contains(t, answer, "sent (22):\n- reshare n20 by")
	require.Contains(t, answer, "skipped, 0 sessions, 0 withheld (no cross-signing identity)")
	require.Contains(t, answer, "\n- … and 2 older\nreceived (1):", "the twenty newest")
	require.NotContains(t, answer, "b1 by")
}

// identity: the master key heirloom sees and the first it saw; a change stops history sharing
// until an admin confirms the very key that is current.
func TestIdentityCommand(t *testing.T) {
	env := newBotEnv(t)
	ctx := context.Background()
	const carol id.UserID = "@carol:localhost"
	require.Equal(t, "Usage: identity <user> [confirm <master key>]", env.command("identity carol confirm"))
	require.Equal(t, "heirloom has seen no cross-signing identity of @carol:localhost.", env.command("identity carol"))

	first, second := id.Ed25519(randomKey()), id.Ed25519(randomKey())
	store := env.machine.Store
	require.NoError(t, store.PutCrossSigningKey(ctx, carol, id.XSUsageMaster, first))
	require.Equal(t, fmt.Sprintf("@carol:localhost\nmaster key: %s\nfirst seen: %s\nchanged: no", first, first), env.command("identity carol"))

	require.NoError(t, store.PutCrossSigningKey(ctx, carol, id.XSUsageMaster, second))
	require.Equal(t, fmt.Sprintf("@carol:localhost\nmaster key: %s\nfirst seen: %s\nchanged: yes. heirloom shares no history with them "+
		"and accepts none from them until you check the new key with them and send: identity @carol:localhost confirm %s", second, first, second),
		env.command("identity carol"))

	require.Equal(t, fmt.Sprintf("Not confirmed: the confirmed key is not the user's current master key (current: %s).", second),
		env.command("identity carol CONFIRM "+first.String()))
	require.Equal(t, fmt.Sprintf("Confirmed: history sharing with @carol:localhost resumes.\n@carol:localhost\nmaster key: %s\nfirst seen: %s\nchanged: no",
		second, second), env.command("identity carol confirm "+second.String()))
}

// reshare picks the puppet that shares: the one named, else the one that last built a bundle
// for the user there, else the only puppet joined; it says why it cannot instead of guessing.
func TestResharePicksThePuppet(t *testing.T) {
	env := newBotEnv(t)
	env.withHistory()
	ctx := context.Background()
	require.Equal(t, "Usage: reshare <room> <user> [puppet]", env.command("reshare !shared:localhost"))
	require.Equal(t, `"shared" is not a room ID (they start with !)`, env.command("reshare shared carol"))

	env.clearRoom(t, sharedRoom, testAdmin)
	require.Equal(t, "Cannot reshare: no puppet is joined to !shared:localhost", env.command("reshare !shared:localhost carol"))
	require.Equal(t, "Cannot reshare: @stranger:localhost is not a puppet", env.command("reshare !shared:localhost carol @stranger:localhost"))
	require.Equal(t, "Cannot reshare: @heirloom_dan:localhost is not a provisioned puppet", env.command("reshare !shared:localhost carol heirloom_dan"))

	env.clearRoom(t, sharedRoom, testAdmin, bobPuppet, alicePuppet)
	require.Equal(t, "Cannot reshare: several puppets are joined to !shared:localhost: name one (@heirloom_alice:localhost, @heirloom_bob:localhost)",
		env.command("reshare !shared:localhost carol"))
	require.NoError(t, env.db.PutSentBundle(ctx, &database.SentBundle{BundleID: "earlier", Puppet: bobPuppet, RoomID: sharedRoom,
		Invitee: "@carol:localhost", State: database.SentDelivered}))
	require.Equal(t, "Cannot reshare: @heirloom_bob:localhost is not a provisioned puppet", env.command("reshare !shared:localhost carol"),
		"the puppet that shared with carol before")
}

// retry: nothing to retry is said so; a puppet heirloom cannot act as is named with the reason,
// and the others' bundles are retried.
func TestRetryCommand(t *testing.T) {
	env := newBotEnv(t)
	env.withHistory()
	ctx := context.Background()
	require.Equal(t, "Usage: retry <room> [puppet]", env.command("retry"))
	require.Equal(t, "No received bundle in !shared:localhost failed or waits for a retry.", env.command("retry !shared:localhost"))

	require.NoError(t, env.db.PutReceivedBundle(ctx, &database.ReceivedBundle{Puppet: bobPuppet, RoomID: sharedRoom, Sender: testAdmin,
		State: database.ReceivedFailed}))
	require.Equal(t, "Retried the received bundles in !shared:localhost:\n- @heirloom_bob:localhost: puppet is not provisioned",
		env.command("retry !shared:localhost"))
}
