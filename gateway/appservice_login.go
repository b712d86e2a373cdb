package gateway

import (
	"bytes"
	"encoding/json"
	"net/http"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"

	"github.com/heirloom-matrix/heirloom/internal/matrixerr"
)

// Bridges written before MSC4190 register their users with m.login.application_service and no
// inhibit_login (the upstream matrix-bot-sdk 0.8.0), and set up their own encryption with an
// appservice login (matrix-bot-sdk's Intent.enableEncryption, matrix-appservice-bridge's
// bridgeEncryption, mautrix-python without MSC4190). The registration heirloom generates turns
// MSC4190 on for the whole appservice, the bridge's namespace included, and Synapse then refuses
// both (M_APPSERVICE_LOGIN_UNSUPPORTED). Those frameworks read nothing but the user ID from a
// registration's answer (matrix-bot-sdk takes a device_id if one comes back, to masquerade as it
// on every later call), so heirloom registers without a login and the bridge gets the answer to
// that: the user ID, no access token, no device. A login is refused: it asks for a device and an
// access token of the bridge's own, and in gateway mode heirloom holds the only E2EE device of each
// bridge user, while the bridge needs no token but its as_token.

// errAppserviceLogin is what the bridge reads when it tries an appservice login.
const errAppserviceLogin = "heirloom manages the E2EE devices of the bridge's users: appservice login is not available " +
	"through the gateway (the bridge needs no access token but its as_token; turn the bridge's own encryption off)"

// forwardAccount forwards a registration or login the bridge makes for one of its own users, after
// absorbing what MSC4190 changed for them: a registration never logs in, an appservice login is
// refused, and a guest registration (which gives a token of someone who is not the bridge's) too.
func (g *Gateway) forwardAccount(w http.ResponseWriter, r *http.Request, req *accountRequest, body []byte) {
	log := zerolog.Ctx(r.Context())
	switch req.call {
	case callLogin:
		if req.appservice {
			log.Info().Msg("Refused an appservice login of the bridge: heirloom manages its users' devices")
			matrixerr.Respond(w, mautrix.RespError{ErrCode: "M_APPSERVICE_LOGIN_UNSUPPORTED", Err: errAppserviceLogin, StatusCode: http.StatusBadRequest})
			return
		}
	case callRegister:
		// The query as Twisted reads it (split on & and ;), as the homeserver will.
		for _, p := range parseQuery(r.URL.RawQuery) {
			if kind := p.value; p.key == "kind" && kind != "user" {
				log.Warn().Str("kind", kind).Msg("Refused a registration of the bridge that is not of a user")
				matrixerr.Respond(w, mautrix.MForbidden.WithMessage("only the bridge's own users register through heirloom"))
				return
			}
		}
		if out, changed := withoutLogin(req); changed {
			log.Debug().Msg("Registering a bridge user without a login (the bridge did not set inhibit_login)")
			body = out
		}
	}
	g.forwardBody(w, r, body)
}

// withoutLogin returns an appservice registration body with inhibit_login set to true, and
// whether it had to change it. Any other body, and one that inhibits the login already, is
// returned unchanged (changed false).
func withoutLogin(req *accountRequest) ([]byte, bool) {
	if !req.appservice || bytes.Equal(req.members["inhibit_login"], []byte("true")) {
		return nil, false
	}
	fields := make(map[string]json.RawMessage, len(req.members)+1)
	for k, v := range req.members {
		fields[k] = v
	}
	fields["inhibit_login"] = json.RawMessage("true")
	out, err := json.Marshal(fields)
	if err != nil {
		return nil, false
	}
	return out, true
}
