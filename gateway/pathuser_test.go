package gateway_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// userChanges are the calls that change a user named in their path, with {user} for the user.
var userChanges = []struct{ method, path string }{
	{http.MethodPut, "/_matrix/client/v3/profile/{user}/displayname"},
	{http.MethodDelete, "/_matrix/client/r0/profile/{user}/avatar_url"},
	{http.MethodPut, "/_matrix/client/v3/profile/{user}/m.tz"},
	{http.MethodPut, "/_matrix/client/v3/presence/{user}/status"},
	{http.MethodPut, "/_matrix/client/v3/user/{user}/account_data/org.example"},
	{http.MethodPut, "/_matrix/client/v3/user/{user}/rooms/!r:localhost/account_data/org.example"},
	{http.MethodPut, "/_matrix/client/v3/user/{user}/rooms/!r:localhost/tags/u.work"},
	{http.MethodDelete, "/_matrix/client/unstable/user/{user}/rooms/!r:localhost/tags/u.work"},
	{http.MethodPost, "/_matrix/client/v3/user/{user}/filter"},
	{http.MethodPost, "/_matrix/client/v3/user/{user}/openid/request_token"},
	{http.MethodPut, "/_matrix/client/v3/rooms/!r:localhost/typing/{user}"},
}

// The bridge changes only the user it acts as: a profile, presence, typing, account data, tags,
// filters or an OpenID token of anyone else (heirloom's puppets and bot above all: the homeserver
// lets a server admin set anyone's profile and then sends the target's m.room.member as the
// target) is refused, never forwarded. Reading another user's profile is forwarded.
func TestBridgeChangesOnlyTheUserItActsAs(t *testing.T) {
	h := newHarness(t)
	h.hs.setAnswer(answerJSON(http.StatusOK, `{}`))
	others := []string{"@heirloom_bob:localhost", "@heirloombot:localhost", "@irc_other:localhost", "@alice:localhost"}
	for _, call := range userChanges {
		for _, actingAs := range []string{"", "?user_id=@irc_alice:localhost"} {
			for _, target := range others {
				path := strings.Replace(call.path, "{user}", target, 1)
				resp := h.do(t, call.method, path+actingAs, bridgeAS, `{"displayname":"Alice (support)","presence":"online"}`)
				require.Equal(t, http.StatusForbidden, resp.status, "%s %s%s: %s", call.method, path, actingAs, resp.body)
				require.Equal(t, "M_FORBIDDEN", resp.errcode(t))
			}
		}
	}
	require.Empty(t, h.hs.seen(), "nothing reached the homeserver")

	for _, call := range userChanges {
		path := strings.Replace(call.path, "{user}", "@irc_alice:localhost", 1)
		resp := h.do(t, call.method, path+"?user_id=@irc_alice:localhost", bridgeAS, `{"displayname":"Alice"}`)
		require.Equal(t, http.StatusOK, resp.status, "%s %s: %s", call.method, path, resp.body)
		resp = h.do(t, call.method, strings.Replace(call.path, "{user}", "@testbot:localhost", 1), bridgeAS, `{"displayname":"bot"}`)
		require.Equal(t, http.StatusOK, resp.status, "the bot, acting as itself: %s %s: %s", call.method, call.path, resp.body)
	}
	require.Len(t, h.hs.seen(), 2*len(userChanges), "a user's own changes are forwarded")
	resp := h.do(t, http.MethodGet, "/_matrix/client/v3/profile/@heirloom_bob:localhost/displayname", bridgeAS, "")
	require.Equal(t, http.StatusOK, resp.status, "reading another user's profile is forwarded")
}
