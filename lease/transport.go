package lease

import "net/http"

// Transport returns a transport that sends a request through next only while this process holds
// the lease, checked as the request leaves: every request to the homeserver and to the bridge goes
// through one, so a process that lost the lease sends nothing, whatever was under way.
func (l *Lease) Transport(next http.RoundTripper) http.RoundTripper {
	if next == nil {
		next = http.DefaultTransport
	}
	return &fencedTransport{lease: l, next: next}
}

type fencedTransport struct {
	lease *Lease
	next  http.RoundTripper
}

func (t *fencedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !t.lease.Active() {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, ErrNotActive
	}
	return t.next.RoundTrip(req)
}
