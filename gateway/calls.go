package gateway

import (
	"net/http"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// The handlers of the calls heirloom handles itself, from a classified request's variables.

func serveSend(g *Gateway, w http.ResponseWriter, r *http.Request, c *call) {
	txnID, hasTxn := c.vars["txn"]
	evtType := event.Type{Type: c.vars["type"], Class: event.MessageEventType}
	g.handleSend(w, r, c.user, id.RoomID(c.vars["room"]), evtType, txnID, hasTxn)
}

func serveInvite(g *Gateway, w http.ResponseWriter, r *http.Request, c *call) {
	g.handleInvite(w, r, c.user, id.RoomID(c.vars["room"]))
}

func serveJoin(g *Gateway, w http.ResponseWriter, r *http.Request, c *call) {
	g.handleJoin(w, r, c.user, c.vars["room"])
}

func serveCreateRoom(g *Gateway, w http.ResponseWriter, r *http.Request, _ *call) {
	g.handleCreateRoom(w, r)
}

func serveAccount(g *Gateway, w http.ResponseWriter, r *http.Request, c *call) {
	g.handleAccount(w, r, c.name)
}

func serveRead(g *Gateway, w http.ResponseWriter, r *http.Request, c *call) {
	g.handleRead(w, r, c.user, id.RoomID(c.vars["room"]))
}

func serveMediaDownload(g *Gateway, w http.ResponseWriter, r *http.Request, c *call) {
	if !g.serveMedia(w, r, c.user, c.vars["server"], c.vars["media"]) {
		g.proxy.ServeHTTP(w, r)
	}
}
