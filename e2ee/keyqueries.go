package e2ee

import (
	"net/http"
	"strings"
	"sync/atomic"
)

// requestCounter wraps the HTTP transport of every puppet's client and counts the device key
// queries (POST …/keys/query) they send: the figure that says whether sending re-queries device
// lists it already holds (heirloom_key_queries_total).
type requestCounter struct {
	base       http.RoundTripper
	keyQueries atomic.Uint64
}

func (c *requestCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPost && strings.HasSuffix(req.URL.Path, "/keys/query") {
		c.keyQueries.Add(1)
	}
	return c.base.RoundTrip(req)
}

// countRequests returns a copy of client whose requests are counted by the returned counter.
func countRequests(client *http.Client) (*http.Client, *requestCounter) {
	counted := *client
	counter := &requestCounter{base: client.Transport}
	if counter.base == nil {
		counter.base = http.DefaultTransport
	}
	counted.Transport = counter
	return &counted, counter
}

// KeyQueries returns how many device key queries the puppets have sent since the manager started.
func (m *Manager) KeyQueries() uint64 { return m.requests.keyQueries.Load() }
