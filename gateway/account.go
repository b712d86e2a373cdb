package gateway

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// handleAccount checks the user a bridge's appservice registration or login names in its body
// (POST /register, POST /login with m.login.application_service) before forwarding it: heirloom's
// token, which the homeserver sees, covers heirloom's own puppets and bot too, and the bridge must
// not create them nor get an access token for them. Anything else in those calls is the
// homeserver's to answer.
func (g *Gateway) handleAccount(w http.ResponseWriter, r *http.Request, call string) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	var req struct {
		Type       string `json:"type"`
		Username   string `json:"username"`
		User       string `json:"user"`
		Identifier struct {
			Type string `json:"type"`
			User string `json:"user"`
		} `json:"identifier"`
	}
	_ = json.Unmarshal(body, &req) // a malformed body is the homeserver's to refuse
	var named string
	switch {
	case call == routeRegister:
		named = req.Username
	case req.Type == string(mautrix.AuthTypeAppservice):
		named = req.Identifier.User
		if named == "" {
			named = req.User
		}
	}
	if named != "" {
		user := id.UserID(named)
		if !strings.HasPrefix(named, "@") {
			user = id.NewUserID(named, g.cfg.Homeserver.Domain)
		}
		if user != g.bridge.Bot && !g.cfg.IsBridgeUser(user) {
			zerolog.Ctx(r.Context()).Warn().Str("call", call).Stringer("named_user", user).
				Msg("Refused a bridge's registration or login of a user outside its namespace")
			writeMatrixError(w, http.StatusForbidden, mautrix.MExclusive.ErrCode, fmt.Sprintf("%s is not in the bridge's namespace", user))
			return
		}
	}
	g.forwardAccount(w, r, call, body)
}
