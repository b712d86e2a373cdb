package gateway

import (
	"net/http"
	"strings"

	"maunium.net/go/mautrix/event"
)

// Names of the bridge calls the gateway handles itself; everything else is "forward".
const (
	routeForward       = "forward"
	routeSend          = "send"
	routeInvite        = "invite"
	routeJoin          = "join"
	routeCreateRoom    = "create_room"
	routeMessages      = "messages"
	routeContext       = "context"
	routeEvent         = "event"
	routeRelations     = "relations"
	routeMediaDownload = "media_download"
	routeRegister      = "register"
	routeLogin         = "login"
)

// route is what matchRoute found in a request's path.
type route struct {
	name    string
	room    string // room ID, or room ID or alias for a join
	evtType event.Type
	txnID   string
	server  string
	mediaID string
}

// clientVersions are the client-server API prefixes bridges use (mautrix-python and the
// matrix-bot-sdk use v3; older libraries r0); Synapse serves most calls under unstable too, and
// the oldest (login, createRoom) under api/v1.
var clientVersions = map[string]bool{"v3": true, "r0": true, "v1": true, "unstable": true}

// matchRoute finds which handled call a request is. It works on the decoded path: bridges
// escape room IDs differently ("%21room" or "!room"), and Go has decoded either.
func matchRoute(r *http.Request) route {
	seg := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(seg) < 3 || seg[0] != "_matrix" {
		return route{name: routeForward}
	}
	switch {
	case seg[1] == "client" && clientVersions[seg[2]]:
		return matchClient(r.Method, seg[3:], seg[2])
	case seg[1] == "client" && seg[2] == "api" && len(seg) > 3 && seg[3] == "v1":
		return matchClient(r.Method, seg[4:], "api/v1")
	case seg[1] == "media" && (seg[2] == "v3" || seg[2] == "r0") && len(seg) >= 6 &&
		(seg[3] == "download" || seg[3] == "thumbnail") && r.Method == http.MethodGet:
		return route{name: routeMediaDownload, server: seg[4], mediaID: seg[5]}
	}
	return route{name: routeForward}
}

func matchClient(method string, seg []string, version string) route {
	n := len(seg)
	switch {
	case version == "v1" && n >= 4 && seg[0] == "media" && (seg[1] == "download" || seg[1] == "thumbnail") && method == http.MethodGet:
		return route{name: routeMediaDownload, server: seg[2], mediaID: seg[3]}
	case n == 5 && seg[0] == "rooms" && seg[2] == "send" && method == http.MethodPut:
		return route{name: routeSend, room: seg[1], evtType: event.Type{Type: seg[3], Class: event.MessageEventType}, txnID: seg[4]}
	case n == 3 && seg[0] == "rooms" && seg[2] == "invite" && method == http.MethodPost:
		return route{name: routeInvite, room: seg[1]}
	case n == 3 && seg[0] == "rooms" && seg[2] == "join" && method == http.MethodPost:
		return route{name: routeJoin, room: seg[1]}
	case n == 2 && seg[0] == "join" && method == http.MethodPost:
		return route{name: routeJoin, room: seg[1]}
	case n == 1 && seg[0] == "register" && method == http.MethodPost:
		return route{name: routeRegister}
	case n == 1 && seg[0] == "login" && method == http.MethodPost:
		return route{name: routeLogin}
	case n == 1 && seg[0] == "createRoom" && method == http.MethodPost:
		return route{name: routeCreateRoom}
	case n == 3 && seg[0] == "rooms" && seg[2] == "messages" && method == http.MethodGet:
		return route{name: routeMessages, room: seg[1]}
	case n == 4 && seg[0] == "rooms" && seg[2] == "context" && method == http.MethodGet:
		return route{name: routeContext, room: seg[1]}
	case n == 4 && seg[0] == "rooms" && seg[2] == "event" && method == http.MethodGet:
		return route{name: routeEvent, room: seg[1]}
	case n >= 4 && seg[0] == "rooms" && seg[2] == "relations" && method == http.MethodGet:
		return route{name: routeRelations, room: seg[1]}
	}
	return route{name: routeForward}
}
