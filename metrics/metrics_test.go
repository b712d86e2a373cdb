package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// Label values outside the fixed sets are counted as "other": a reason or trigger made of what
// users send cannot create new series.
func TestLabelsAreBounded(t *testing.T) {
	m := New()
	reg := prometheus.NewRegistry()
	require.NoError(t, m.Register(reg))
	for i := 0; i < 50; i++ {
		junk := strings.Repeat("x", i)
		m.BundleSent(junk, junk)
		m.BundleReceived(SentFailed, junk)
		m.IdentityChangeRefused(junk)
		m.DeviceRestored(junk)
		m.DeviceRestoreFailed(junk)
	}
	require.Equal(t, 1, testutil.CollectAndCount(m.bundlesSent))
	require.Equal(t, 1, testutil.CollectAndCount(m.bundlesReceived))
	require.Equal(t, 50.0, testutil.ToFloat64(m.bundlesSent.WithLabelValues(ReasonOther, ReasonOther)))
	require.Equal(t, 50.0, testutil.ToFloat64(m.bundlesReceived.WithLabelValues(receivedFailed, ReasonOther)))
	require.Equal(t, 1, testutil.CollectAndCount(m.identityRefused))
	require.Equal(t, 1, testutil.CollectAndCount(m.restored))

	m.BundleSent(sentSkipped, ReasonIdentityChanged)
	m.DeviceRestored(TriggerStartup)
	m.Delivered(300 * time.Millisecond)
	m.Imported(2 * time.Second)
	require.Equal(t, 1.0, testutil.ToFloat64(m.bundlesSent.WithLabelValues(sentSkipped, ReasonIdentityChanged)))
	require.Equal(t, 1.0, testutil.ToFloat64(m.restored.WithLabelValues(TriggerStartup)))
	require.Equal(t, 1, testutil.CollectAndCount(m.inviteToDelivered))
}

// A nil *Metrics counts nothing and does not panic.
func TestNilMetrics(t *testing.T) {
	var m *Metrics
	m.BundleSent(sentDelivered, ReasonNone)
	m.BundlesSent(SentFailed, ReasonTooLate, 3)
	m.BundleReceived(receivedImported, ReasonNone)
	m.BundlesReceived(ReceivedRejected, ReasonNotInviter, 2)
	m.Delivered(time.Second)
	m.Imported(time.Second)
	m.Redelivered(1)
	m.Recovered(1)
	m.IdentityChangeRefused(IdentitySend)
	m.DeviceRestored(TriggerStartup)
	m.DeviceRestoreFailed(TriggerStartup)
}
