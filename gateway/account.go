package gateway

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/internal/matrixerr"
)

// The calls of accountRequest.
const (
	callRegister = "register"
	callLogin    = "login"
)

// accountRequest is what heirloom reads of a bridge's register or login body, the way Synapse
// reads it (synapse/rest/client/register.py and login.py).
type accountRequest struct {
	// call is "register" or "login".
	call string
	// appservice is set when the body's type is exactly m.login.application_service: the request
	// registers or logs in a user on the appservice's token, which the homeserver sees as heirloom's.
	appservice bool
	// users are the users the body names: for register its username (a localpart), for login its
	// identifier's user and the legacy top-level user (a localpart or a user ID).
	users []id.UserID
	// inhibitLogin is the body's inhibit_login, for register; deviceID its device_id.
	inhibitLogin bool
	deviceID     string
	// members are the body's members by their exact keys.
	members map[string]json.RawMessage
}

// parseAccountRequest reads a register or login body. A body that is not one UTF-8 JSON object is
// errNotJSONObject; one that names a key twice up to case (at the top or in the identifier),
// errAmbiguousJSON.
func parseAccountRequest(call string, body []byte, domain string) (*accountRequest, error) {
	members, err := decodeObject(body)
	if err != nil {
		return nil, err
	}
	req := &accountRequest{call: call, members: members}
	typ, _ := stringMember(members, "type")
	req.appservice = typ == string(mautrix.AuthTypeAppservice)
	req.deviceID, _ = stringMember(members, "device_id")
	_ = json.Unmarshal(members["inhibit_login"], &req.inhibitLogin)
	named := func(user string, localpartOnly bool) {
		if !localpartOnly && strings.HasPrefix(user, "@") {
			req.users = append(req.users, id.UserID(user))
		} else {
			req.users = append(req.users, id.NewUserID(user, domain))
		}
	}
	if call == callRegister {
		// Synapse makes @username:domain of whatever the username is.
		for _, key := range []string{"username", "user"} {
			if user, ok := stringMember(members, key); ok {
				named(user, key == "username")
			}
		}
		return req, nil
	}
	if raw, ok := members["identifier"]; ok && len(raw) > 0 && raw[0] == '{' {
		identifier, err := decodeObject(raw)
		if err != nil {
			return nil, err
		}
		if user, ok := stringMember(identifier, "user"); ok {
			named(user, false)
		}
	}
	if user, ok := stringMember(members, "user"); ok {
		named(user, false)
	}
	return req, nil
}

// handleAccount checks the users a bridge's appservice registration or login names in its body
// (POST /register, POST /login with m.login.application_service) before forwarding it: heirloom's
// token, which the homeserver sees, covers heirloom's own puppets and bot too, and the bridge must
// not create them nor get an access token for them. Anything else in those calls is the
// homeserver's to answer.
func (g *Gateway) handleAccount(w http.ResponseWriter, r *http.Request, call string) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	req, err := parseAccountRequest(call, body, g.cfg.Homeserver.Domain)
	switch {
	case errors.Is(err, errAmbiguousJSON):
		matrixerr.Respond(w, mautrix.MBadJSON.WithMessage("%s", err.Error()))
		return
	case err != nil:
		matrixerr.Respond(w, mautrix.MNotJSON.WithMessage("%s", err.Error()))
		return
	}
	if req.appservice {
		for _, user := range req.users {
			if user != g.bridge.Bot && !g.cfg.IsBridgeUser(user) {
				zerolog.Ctx(r.Context()).Warn().Str("call", call).Stringer("named_user", user).
					Msg("Refused a bridge's registration or login of a user outside its namespace")
				matrixerr.Respond(w, mautrix.MExclusive.WithMessage("%s is not in the bridge's namespace", user).WithStatus(http.StatusForbidden))
				return
			}
		}
	}
	g.forwardAccount(w, r, req, body)
}
