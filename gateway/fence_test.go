package gateway_test

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/lease"
)

// heldLease is a lease store this process holds until the test takes it away.
type heldLease struct{ taken atomic.Bool }

func (s *heldLease) Describe() string { return "the test database" }
func (s *heldLease) TryAcquire(_ context.Context, me lease.Holder, _ time.Duration) (lease.Attempt, error) {
	return lease.Attempt{Acquired: true, Holder: me}, nil
}
func (s *heldLease) Renew(context.Context, lease.Holder, time.Duration) error {
	if s.taken.Load() {
		return lease.ErrNotHolder
	}
	return nil
}
func (s *heldLease) Release(context.Context, lease.Holder) error { return nil }

// A process that loses the lease delivers nothing more to the bridge, even with the delivery loop
// still running, and keeps what it did not deliver for the process that takes over, its attempts
// uncounted.
func TestNothingDeliveredOnceTheLeaseIsLost(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t)
	store := &heldLease{}
	l := lease.New(store, lease.Me(), lease.Timing{TTL: time.Hour, Renew: time.Hour, Margin: time.Minute, Poll: time.Second}, nil)
	_, err := l.TryAcquire(ctx)
	require.NoError(t, err)
	h.gw.GateTransports(l.Transport)
	h.run(t)

	first := `{"events":[` + memberEvent("$join", "@irc_alice:localhost", "@irc_alice:localhost", "join") + `,` +
		messageEvent("$m1", "@alice:localhost", "one") + `]}`
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/100", heirloomHS, first).status)
	require.Eventually(t, func() bool { return len(eventsOf(bridgeTxns(t, h.bridge))) == 2 }, 10*time.Second, 20*time.Millisecond)

	store.taken.Store(true)
	l.RenewOnce(ctx)
	require.False(t, l.Active())
	// A transaction taken just before the loss.
	second := `{"events":[` + messageEvent("$m2", "@alice:localhost", "two") + `]}`
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/101", heirloomHS, second).status)
	time.Sleep(1500 * time.Millisecond)
	require.Equal(t, []string{"$join", "$m1"}, eventsOf(bridgeTxns(t, h.bridge)), "nothing reached the bridge after the loss")
	depth, err := h.db.CountGatewayEvents(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, depth, "the undelivered event stays for the process that takes over")
	if txn, err := h.db.PendingGatewayTxn(ctx); err == nil && txn != nil {
		require.Zero(t, txn.Attempts, "a delivery the lease stopped is no failed attempt of the bridge")
	}
}
