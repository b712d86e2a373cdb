package gateway_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// clientPrefixes are the client-server API prefixes Synapse serves /register under (unstable, r0,
// v3); /login has api/v1 besides.
var clientPrefixes = []string{"/_matrix/client/unstable", "/_matrix/client/r0", "/_matrix/client/v3"}

// A framework written before MSC4190 (the upstream matrix-bot-sdk 0.8.0: Intent.ensureRegistered)
// registers its ghosts with m.login.application_service and no inhibit_login. The registration
// heirloom generates turns MSC4190 on, and Synapse answers such a registration with
// M_APPSERVICE_LOGIN_UNSUPPORTED (after creating the user). The gateway registers the user without
// a login instead, so the bridge gets Synapse's answer to a registration without a device: the
// user ID, no access token, no device.
func TestPreMSC4190RegistrationRegistersWithoutALogin(t *testing.T) {
	h := newHarness(t)
	h.hs.setAnswer(answerJSON(http.StatusOK, `{"user_id":"@irc_alice:localhost","home_server":"localhost"}`))
	for _, prefix := range clientPrefixes {
		for _, tc := range []struct{ name, body string }{
			{"no inhibit_login", `{"type":"m.login.application_service","username":"irc_alice"}`},
			{"inhibit_login false", `{"type":"m.login.application_service","username":"irc_alice","inhibit_login":false}`},
			{"inhibit_login null", `{"type":"m.login.application_service","username":"irc_alice","inhibit_login":null}`},
			{"inhibit_login 0", `{"type":"m.login.application_service","username":"irc_alice","inhibit_login":0}`},
			{"inhibit_login empty", `{"type":"m.login.application_service","username":"irc_alice","inhibit_login":""}`},
			{"a device asked for", `{"type":"m.login.application_service","username":"irc_alice","device_id":"BRIDGEDEV","initial_device_display_name":"bridge"}`},
			{"the bot", `{"type":"m.login.application_service","username":"testbot","inhibit_login":false}`},
		} {
			t.Run(prefix+" "+tc.name, func(t *testing.T) {
				before := len(h.hs.seen())
				resp := h.do(t, http.MethodPost, prefix+"/register?kind=user", bridgeAS, tc.body)
				require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
				require.JSONEq(t, `{"user_id":"@irc_alice:localhost","home_server":"localhost"}`, string(resp.body),
					"the bridge gets the homeserver's answer to a registration without a login")
				require.Len(t, h.hs.seen(), before+1)
				got := h.hs.seen()[before]
				require.Equal(t, prefix+"/register", got.RawPath)
				var want, forwarded map[string]any
				require.NoError(t, json.Unmarshal([]byte(tc.body), &want))
				require.NoError(t, json.Unmarshal(got.Body, &forwarded))
				want["inhibit_login"] = true
				require.Equal(t, want, forwarded, "forwarded with inhibit_login, everything else as it was")
			})
		}
	}
}

// A registration that already inhibits the login (mautrix-python, @vector-im/matrix-bot-sdk)
// reaches the homeserver byte for byte.
func TestMSC4190RegistrationForwardedAsItIs(t *testing.T) {
	h := newHarness(t)
	h.hs.setAnswer(answerJSON(http.StatusOK, `{"user_id":"@irc_alice:localhost","home_server":"localhost"}`))
	body := `{"username": "irc_alice", "type": "m.login.application_service", "inhibit_login": true}`
	resp := h.do(t, http.MethodPost, "/_matrix/client/v3/register?kind=user", bridgeAS, body)
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
	require.Equal(t, body, string(h.hs.seen()[0].Body))
}

// The homeserver's refusals reach the bridge as they are: M_USER_IN_USE is how every framework
// learns that a ghost exists already.
func TestRegistrationRefusalPassedOn(t *testing.T) {
	h := newHarness(t)
	h.hs.setAnswer(answerJSON(http.StatusBadRequest, `{"errcode":"M_USER_IN_USE","error":"User ID already taken."}`))
	resp := h.do(t, http.MethodPost, "/_matrix/client/v3/register", bridgeAS, `{"type":"m.login.application_service","username":"irc_alice"}`)
	require.Equal(t, http.StatusBadRequest, resp.status)
	require.Equal(t, "M_USER_IN_USE", resp.errcode(t))
}

// An appservice login asks for a new device and an access token of the bridge's own. In gateway
// mode heirloom holds the only E2EE device of each bridge user, and the bridge needs no token but
// its as_token: the login is refused as the homeserver refuses it with MSC4190 on (so a framework
// that knows MSC4190 handles it as it would without heirloom), with a reason an admin can act on,
// and never reaches the homeserver.
func TestAppserviceLoginRefused(t *testing.T) {
	h := newHarness(t)
	h.hs.setAnswer(answerJSON(http.StatusOK, `{"user_id":"@irc_alice:localhost","access_token":"syt_x","device_id":"NEWDEVICE"}`))
	for _, prefix := range append([]string{"/_matrix/client/api/v1"}, clientPrefixes...) {
		for _, body := range []string{
			`{"type":"m.login.application_service","identifier":{"type":"m.id.user","user":"@irc_alice:localhost"}}`,
			`{"type":"m.login.application_service","identifier":{"type":"m.id.user","user":"testbot"},"device_id":"BRIDGEDEV"}`,
			`{"type":"m.login.application_service","user":"@irc_alice:localhost"}`,
		} {
			t.Run(prefix+" "+body, func(t *testing.T) {
				resp := h.do(t, http.MethodPost, prefix+"/login", bridgeAS, body)
				requireMatrixError(t, resp, http.StatusBadRequest, "M_APPSERVICE_LOGIN_UNSUPPORTED")
				require.Contains(t, string(resp.body), "heirloom")
				require.Empty(t, h.hs.seen(), "never reached the homeserver")
			})
		}
	}
}

// A guest registration gives an access token of a user the bridge does not own: not through the
// gateway.
func TestGuestRegistrationRefused(t *testing.T) {
	h := newHarness(t)
	h.hs.setAnswer(answerJSON(http.StatusOK, `{"user_id":"@123:localhost","access_token":"syt_x","device_id":"GUEST"}`))
	for _, target := range []string{"/_matrix/client/v3/register?kind=guest", "/_matrix/client/r0/register?kind=user&kind=guest"} {
		resp := h.do(t, http.MethodPost, target, bridgeAS, `{}`)
		requireMatrixError(t, resp, http.StatusForbidden, "M_FORBIDDEN")
	}
	require.Empty(t, h.hs.seen(), "never reached the homeserver")
}
