package gateway_test

import (
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/config"
)

// The homeserver pushes heirloom the presence of every user its registration is interested in
// (synapse/appservice/__init__.py is_interested_in_presence), anyone sharing a room with heirloom's
// own API-mode puppets included; the bridge's own registration would have given it only the
// presence of its users and of users sharing a room with them. So the bridge gets that presence
// only: not the status message of someone who shares a room with a puppet of heirloom's alone.
func TestPresenceReachesTheBridgeOnlyOfItsRoommates(t *testing.T) {
	h := newHarness(t, func(c *config.Config) {
		f, err := os.OpenFile(c.Gateway.Registration, os.O_APPEND|os.O_WRONLY, 0)
		require.NoError(t, err)
		_, err = f.WriteString("de.sorunome.msc2409.push_ephemeral: true\nreceive_ephemeral: true\n")
		require.NoError(t, err)
		require.NoError(t, f.Close())
	})
	h.run(t)
	presence := func(user, status string) string {
		return `{"type":"m.presence","sender":"` + user + `","content":{"presence":"online","status_msg":"` + status + `"}}`
	}
	// Carol shares a room with heirloom's API-mode puppet only; Dave shares one with a ghost.
	txn := `{"events":[` + inRoom(memberEvent("$jb", "@heirloom_bob:localhost", "@heirloom_bob:localhost", "join"), "!api:localhost") + `,` +
		inRoom(memberEvent("$jc", "@carol:localhost", "@carol:localhost", "join"), "!api:localhost") + `,` +
		inRoom(memberEvent("$jg", "@irc_ghost:localhost", "@irc_ghost:localhost", "join"), "!irc:localhost") + `,` +
		inRoom(memberEvent("$jd", "@dave:localhost", "@dave:localhost", "join"), "!irc:localhost") + `],` +
		`"ephemeral":[` + presence("@carol:localhost", "at the clinic until 3") + `,` + presence("@dave:localhost", "dave is in") + `,` +
		presence("@irc_ghost:localhost", "the ghost is in") + `,` + presence("@testbot:localhost", "the bot is in") + `,` +
		`{"type":"m.presence","content":{"presence":"online","status_msg":"nobody's"}}]}`
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS, txn).status)
	var got strings.Builder
	require.Eventually(t, func() bool {
		got.Reset()
		for _, r := range h.bridge.seen() {
			got.Write(r.Body)
		}
		return strings.Contains(got.String(), "the bot is in")
	}, 10*time.Second, 20*time.Millisecond)
	assert.NotContains(t, got.String(), "at the clinic", "the bridge got the presence of a user it shares no room with")
	assert.NotContains(t, got.String(), "nobody's", "a presence about no one")
	for _, want := range []string{"dave is in", "the ghost is in"} {
		assert.Contains(t, got.String(), want)
	}
}
