package gateway

import (
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// The bridge's requests are classified the way Synapse routes them (synapse/http/server.py,
// JsonResource._get_handler_for_request): on the escaped path, split on a literal '/', literal
// segments compared as they are and variable ones unescaped afterwards. The first route whose path
// matches decides; a method it does not serve is a 405, as in Synapse. Each route's method is
// handled by heirloom, forwarded to the homeserver, or refused. A path no route matches is refused
// with a 404: what heirloom does not know is never forwarded.

// handler serves a call heirloom handles itself.
type handler func(g *Gateway, w http.ResponseWriter, r *http.Request, c *call)

// action is what the gateway does with one method of a route.
type action struct {
	name   string             // the call's label in heirloom_gateway_requests_total
	handle handler            // nil: forwarded to the homeserver
	refuse *mautrix.RespError // refused with this error
}

// route is one path the homeserver serves, under each of its prefixes.
type route struct {
	prefixes []string
	// path follows the prefix: literal segments, {name} for one segment (unescaped), and a last
	// {name...} for one or more segments.
	path    string
	methods map[string]action // GET also serves HEAD; "*" serves every method
	// synapse is the servlet Synapse serves the path with (TestRouteTableAgreesWithSynapse reads
	// Synapse's own router); "" where Synapse's is not one servlet.
	synapse string
}

// call is a classified request: its action, the user it acts as, and its path's variables.
type call struct {
	action
	user id.UserID
	vars map[string]string
}

// Route names for the metric label of requests refused before or instead of routing.
const (
	callUnrecognized = "unrecognized"
	callRefused      = "refused"
	callForbidden    = "forbidden"
	callUnauthorized = "unauthorized"
)

var (
	errUnrecognized    = mautrix.MUnrecognized.WithMessage("Unrecognized request: heirloom's gateway forwards only the calls it knows")
	errMethod          = mautrix.MUnrecognized.WithMessage("Unrecognized request: method not allowed").WithStatus(http.StatusMethodNotAllowed)
	errPathNotUTF8     = mautrix.MInvalidParam.WithMessage("a path segment is not UTF-8")
	errBridgeUsersKeys = mautrix.MForbidden.WithMessage("heirloom keeps the E2EE devices and keys of the bridge's users: the bridge may not " +
		"change them (turn the bridge's own encryption off)")
	errBridgeUsersAccount = mautrix.MForbidden.WithMessage("heirloom keeps the E2EE devices of the bridge's users: the bridge may not " +
		"log them out, deactivate them or change their credentials")
	errAdminAPI  = mautrix.MForbidden.WithMessage("heirloom forwards only GET /_synapse/admin/v1/users/{userId}/admin of Synapse's admin API")
	errOtherUser = mautrix.MForbidden.WithMessage("the bridge may change only the user it acts as (user_id): heirloom's token also " +
		"covers heirloom's own users")
)

// classify finds the route of a request's escaped path and the action for its method.
func classify(method, escapedPath string) (*call, *mautrix.RespError) {
	segs := strings.Split(escapedPath, "/")
	for i := range compiledRoutes {
		p := &compiledRoutes[i]
		vars, ok := p.match(segs)
		if !ok {
			continue
		}
		for _, v := range vars {
			if !utf8.ValidString(v) {
				return nil, &errPathNotUTF8
			}
		}
		return p.route.call(method, vars)
	}
	return nil, &errUnrecognized
}

// otherUsersChange refuses a call that changes a user named in its path ({user}: profiles,
// presence, typing, account data, tags, filters, OpenID tokens) other than the one the bridge acts
// as. The homeserver refuses all of these for another user but one: a server admin may set anyone's
// profile, and the homeserver then sends the target's m.room.member into its rooms as the target.
// heirloom's token covers heirloom's own puppets and bot, so a bridge whose bot is an admin could
// otherwise rename them. Reads are forwarded: the homeserver answers them as it would the bridge.
func otherUsersChange(method string, c *call) *mautrix.RespError {
	target, named := c.vars["user"]
	if !named || method == http.MethodGet || method == http.MethodHead || id.UserID(target) == c.user {
		return nil
	}
	return &errOtherUser
}

// call is the route's action for method: GET serves HEAD too, "*" any method the route does not
// name, and a method it does not serve is a 405.
func (rt *route) call(method string, vars map[string]string) (*call, *mautrix.RespError) {
	act, ok := rt.methods[method]
	if !ok && method == http.MethodHead {
		act, ok = rt.methods[http.MethodGet]
	}
	if !ok {
		act, ok = rt.methods["*"]
	}
	if !ok {
		return nil, &errMethod
	}
	return &call{action: act, vars: vars}, nil
}

// pattern is a route under one of its prefixes, split into segments.
type pattern struct {
	segs  []string
	rest  bool // the last segment is {name...}
	route *route
}

// compiledRoutes are routeTable's patterns, in its order.
var compiledRoutes = compile(routeTable)

func compile(table []route) []pattern {
	var out []pattern
	for i := range table {
		for _, prefix := range table[i].prefixes {
			segs := strings.Split(prefix+table[i].path, "/")
			out = append(out, pattern{segs: segs, rest: strings.HasSuffix(segs[len(segs)-1], "...}"), route: &table[i]})
		}
	}
	return out
}

// match matches the path's segments (split on '/', still escaped) and returns the pattern's
// variables, unescaped: literal segments must be equal as they are, {name} takes one segment and
// {name...} one or more.
func (p *pattern) match(segs []string) (map[string]string, bool) {
	if len(segs) < len(p.segs) || !p.rest && len(segs) != len(p.segs) {
		return nil, false
	}
	for i, s := range p.segs {
		if !strings.HasPrefix(s, "{") && s != segs[i] {
			return nil, false
		}
	}
	vars := map[string]string{}
	for i, s := range p.segs {
		switch {
		case strings.HasSuffix(s, "...}"):
			vars[strings.TrimSuffix(s[1:], "...}")] = strings.Join(segs[i:], "/")
		case strings.HasPrefix(s, "{"):
			v, err := url.PathUnescape(segs[i])
			if err != nil {
				return nil, false
			}
			vars[strings.Trim(s, "{}")] = v
		}
	}
	return vars, true
}

// methods builds a route's method table from method, action pairs.
func methods(pairs ...any) map[string]action {
	m := make(map[string]action, len(pairs)/2)
	for i := 0; i+1 < len(pairs); i += 2 {
		m[pairs[i].(string)] = pairs[i+1].(action)
	}
	return m
}

// clientPrefixes are the client-server API prefixes of the given versions.
func clientPrefixes(versions ...string) []string {
	out := make([]string, len(versions))
	for i, v := range versions {
		out[i] = "/_matrix/client/" + v
	}
	return out
}

// The prefix sets Synapse registers its servlets under (synapse/rest/client/_base.py
// client_patterns: r0, v3 and unstable by default, api/v1 with v1=True, or a servlet's own list).
var (
	cAll      = clientPrefixes("api/v1", "r0", "v3", "unstable")
	cRel      = clientPrefixes("r0", "v3", "unstable")
	cR0V3     = clientPrefixes("r0", "v3")
	cV3U      = clientPrefixes("v3", "unstable")
	cV1U      = clientPrefixes("v1", "unstable")
	cV1       = clientPrefixes("v1")
	cV3       = clientPrefixes("v3")
	cUnstable = clientPrefixes("unstable")
	cMedia    = []string{"/_matrix/media/r0", "/_matrix/media/v3", "/_matrix/media/v1"}
	cRoot     = []string{""}
)

// The actions.
var (
	fwd          = action{name: "forward"}
	doSend       = action{name: "send", handle: serveSend}
	doInvite     = action{name: "invite", handle: serveInvite}
	doJoin       = action{name: "join", handle: serveJoin}
	doCreateRoom = action{name: "create_room", handle: serveCreateRoom}
	doRegister   = action{name: callRegister, handle: serveAccount}
	doLogin      = action{name: callLogin, handle: serveAccount}
	doMessages   = action{name: "messages", handle: serveRead}
	doContext    = action{name: "context", handle: serveRead}
	doEvent      = action{name: "event", handle: serveRead}
	doRelations  = action{name: "relations", handle: serveRead}
	doMedia      = action{name: "media_download", handle: serveMediaDownload}
	noKeys       = action{name: callRefused, refuse: &errBridgeUsersKeys}
	noAccount    = action{name: callRefused, refuse: &errBridgeUsersAccount}
	noAdmin      = action{name: callRefused, refuse: &errAdminAPI}
)

// Method tables used by many routes.
var (
	get       = methods("GET", fwd)
	post      = methods("POST", fwd)
	put       = methods("PUT", fwd)
	getPut    = methods("GET", fwd, "PUT", fwd)
	getPutDel = methods("GET", fwd, "PUT", fwd, "DELETE", fwd)
)
