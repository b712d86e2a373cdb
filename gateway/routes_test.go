package gateway

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The matcher's own rules, without Synapse at hand (TestRouteTableAgreesWithSynapse holds the table
// to Synapse's router): escaped segments, empty segments, HEAD, unknown methods and paths.
func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		method, path, name string
		vars               map[string]string
		errcode            string
		status             int
	}{
		{method: "PUT", path: "/_matrix/client/v3/rooms/%21r%3Ax/send/m.room.message/a%2Fb", name: "send",
			vars: map[string]string{"room": "!r:x", "type": "m.room.message", "txn": "a/b"}},
		{method: "PUT", path: "/_matrix/client/api/v1/rooms/!r:x/send/m.room.message/", name: "send",
			vars: map[string]string{"room": "!r:x", "type": "m.room.message", "txn": ""}},
		{method: "POST", path: "/_matrix/client/unstable/rooms/!r:x/send/m.room.message", name: "send",
			vars: map[string]string{"room": "!r:x", "type": "m.room.message"}},
		{method: "HEAD", path: "/_matrix/client/v3/rooms/!r:x/messages", name: "messages", vars: map[string]string{"room": "!r:x"}},
		{method: "GET", path: "/_matrix/client/r0/pushrules/global/override/x", name: "forward", vars: map[string]string{"rule": "global/override/x"}},
		{method: "GET", path: "/_matrix/client/r0/pushrules/", name: "forward", vars: map[string]string{"rule": ""}},
		{method: "DELETE", path: "/_matrix/client/v3/devices/D", name: "refused", vars: map[string]string{"device": "D"}},
		{method: "GET", path: "/_matrix/client/v3/devices/D", name: "forward", vars: map[string]string{"device": "D"}},
		{method: "GET", path: "/_matrix/client/r0/pushrules", errcode: "M_UNRECOGNIZED", status: 404},
		{method: "GET", path: "/_matrix/client/v3/rooms/!r:x/send/m.room.message/t", errcode: "M_UNRECOGNIZED", status: 405},
		{method: "PUT", path: "/_matrix/client/v3/rooms/%21r%FF/send/m.room.message/t", errcode: "M_INVALID_PARAM", status: 400},
		{method: "PUT", path: "/_matrix/client/v3/rooms/!r:x/%73end/m.room.message/t", errcode: "M_UNRECOGNIZED", status: 404},
		{method: "PUT", path: "/_matrix/client/v3/rooms/!r:x/send/m.room.message/t/", errcode: "M_UNRECOGNIZED", status: 404},
	} {
		c, refusal := classify(tc.method, tc.path)
		if tc.errcode != "" {
			require.NotNil(t, refusal, "%s %s", tc.method, tc.path)
			require.Equal(t, tc.errcode, refusal.ErrCode, "%s %s", tc.method, tc.path)
			require.Equal(t, tc.status, refusal.StatusCode, "%s %s", tc.method, tc.path)
			continue
		}
		require.Nil(t, refusal, "%s %s", tc.method, tc.path)
		require.Equal(t, tc.name, c.name, "%s %s", tc.method, tc.path)
		require.Equal(t, tc.vars, c.vars, "%s %s", tc.method, tc.path)
	}
}

// BenchmarkClassify classifies a call near the end of the table.
func BenchmarkClassify(b *testing.B) {
	for range b.N {
		if _, refusal := classify(http.MethodPut, "/_matrix/media/v3/upload/localhost/abc"); refusal != nil {
			b.Fatal(refusal)
		}
	}
}

// Every route whose path names a user calls the variable {user}: otherUsersChange checks that one.
func TestRoutesNameTheirUserUser(t *testing.T) {
	for _, rt := range routeTable {
		for _, seg := range strings.Split(rt.path, "/") {
			if strings.HasPrefix(seg, "{") && strings.Contains(strings.ToLower(seg), "user") {
				require.Equal(t, "{user}", seg, rt.path)
			}
		}
	}
	c, refusal := classify(http.MethodPut, "/_matrix/client/v3/profile/@heirloom_bob:hs/displayname")
	require.Nil(t, refusal)
	c.user = "@irc_alice:hs"
	require.NotNil(t, otherUsersChange(http.MethodPut, c))
	require.Nil(t, otherUsersChange(http.MethodGet, c))
	c.user = "@heirloom_bob:hs"
	require.Nil(t, otherUsersChange(http.MethodPut, c))
}
