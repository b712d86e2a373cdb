package admin

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/config"
)

func testBot() *Bot {
	cfg := &config.Config{Homeserver: config.Homeserver{Domain: "example.com"}, AppService: config.AppService{BotUsername: "heirloombot"}}
	return &Bot{cfg: cfg, userID: cfg.BotUserID()}
}

// In a group room only messages addressed to the bot are commands; the address is taken off.
func TestAddressed(t *testing.T) {
	b := testBot()
	for body, want := range map[string]string{
		"!heirloom status":                        "status",
		"!HEIRLOOM   puppet @x:example.com":       "  puppet @x:example.com",
		"heirloom: help":                          "help",
		"heirloombot: bundles !r":                 "bundles !r",
		"@heirloombot:example.com: identity @u:x": "identity @u:x",
	} {
		got, ok := b.addressed(body)
		require.True(t, ok, "%q", body)
		require.Equal(t, want, got, "%q", body)
	}
	for _, body := range []string{"status", "hello heirloom: how are you", "!heirloomstatus", "heirloombot status", ""} {
		_, ok := b.addressed(body)
		require.False(t, ok, "%q is not addressed to the bot", body)
	}
}

// Commands are case-insensitive, their arguments kept as written; unknown ones say so.
func TestParseAndUnknownCommands(t *testing.T) {
	name, args := parse("  RESHARE !room:x @User:x  ")
	require.Equal(t, "reshare", name)
	require.Equal(t, []string{"!room:x", "@User:x"}, args)
	name, args = parse("")
	require.Empty(t, name)
	require.Empty(t, args)
	require.Equal(t, "unknown", commandName("frobnicate now"))
	require.Equal(t, "retry", commandName("Retry !r:x"))
	b := testBot()
	require.Contains(t, b.run(context.Background(), "@admin:example.com", "frobnicate"), `I do not know the command "frobnicate"`)
	for name, c := range commands {
		if c.args == "" {
			continue
		}
		// Every command that takes arguments answers its usage when they are missing, touching nothing.
		require.True(t, strings.HasPrefix(b.run(context.Background(), "@admin:example.com", name), "Usage: "+name), name)
	}
}

// A user argument may be a full user ID or a localpart on the homeserver's domain; rooms must be IDs.
func TestArguments(t *testing.T) {
	b := testBot()
	u, err := b.userArg("heirloom_bob")
	require.NoError(t, err)
	require.Equal(t, "@heirloom_bob:example.com", u.String())
	u, err = b.userArg("@alice:other.org")
	require.NoError(t, err)
	require.Equal(t, "@alice:other.org", u.String())
	_, err = b.userArg("@broken")
	require.Error(t, err)
	_, err = roomArg("#alias:example.com")
	require.ErrorContains(t, err, "not a room ID")
}
