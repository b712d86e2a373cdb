package gateway

import (
	"net/http"
	"net/http/httputil"
)

// GateTransports passes every request the gateway makes itself, transactions and queries to the
// bridge and the bridge's calls forwarded to the homeserver, through gate: the daemon's lease, so
// that a process that lost it sends nothing more. Call it before the gateway serves.
func (g *Gateway) GateTransports(gate func(http.RoundTripper) http.RoundTripper) {
	g.deliverer.Transport = gate(g.deliverer.Transport)
	if proxy, ok := g.proxy.(*httputil.ReverseProxy); ok {
		proxy.Transport = gate(proxy.Transport)
	}
}
