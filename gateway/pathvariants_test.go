package gateway_test

import (
	"net/http"
	"testing"
)

// A bridge user acting may change its own profile, presence and account data only: another user's,
// in every encoding of the path Synapse accepts (escaped, with another prefix, a trailing or doubled
// slash, dot segments, an upper-case version, another profile field) and with any method spelling,
// never reaches the homeserver.
func TestOtherUsersPathVariantsNeverForwarded(t *testing.T) {
	h := newHarness(t)
	h.hs.setAnswer(answerJSON(http.StatusOK, `{}`))
	for _, path := range []string{
		"/_matrix/client/v3/profile/%40heirloom_bob%3Alocalhost/displayname",
		"/_matrix/client/r0/profile/@heirloom_bob:localhost/displayname",
		"/_matrix/client/api/v1/profile/@heirloom_bob:localhost/displayname",
		"/_matrix/client/unstable/profile/@heirloom_bob:localhost/displayname",
		"/_matrix/client/v3/profile/@heirloom_bob:localhost/displayname/",
		"/_matrix/client/v3//profile/@heirloom_bob:localhost/displayname",
		"/_matrix/client/v3/profile/@irc_alice:localhost/../@heirloom_bob:localhost/displayname",
		"/_matrix/client/v3/profile/@irc_alice:localhost%2F..%2F@heirloom_bob:localhost/displayname",
		"/_matrix/client/v3/profile/@heirloom_bob:localhost/m.tz",
		"/_matrix/client/v3/profile/@heirloom_bob:localhost/displayname%00",
		"/_matrix/client/V3/profile/@heirloom_bob:localhost/displayname",
		"/_matrix/client/v3/presence/@heirloom_bob:localhost/status",
		"/_matrix/client/v3/user/@heirloom_bob:localhost/account_data/m.direct",
	} {
		for _, method := range []string{http.MethodPut, "put", http.MethodPost, http.MethodDelete} {
			before := len(h.hs.seen())
			resp := h.do(t, method, path+"?user_id=@irc_alice:localhost", bridgeAS, `{"displayname":"x","membership":"join"}`)
			if len(h.hs.seen()) != before {
				t.Errorf("FORWARDED %s %s -> %d", method, path, resp.status)
			}
		}
	}
}
