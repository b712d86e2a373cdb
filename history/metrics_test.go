package history

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/keybundle"
	"github.com/heirloom-matrix/heirloom/metrics"
)

// Every reason a sent bundle records maps to its own fixed label, and reasons made of errors or
// names map to a fixed label too: the metrics' series cannot grow with what happens.
func TestReasonLabelsAreFixed(t *testing.T) {
	for reason, want := range map[string]string{
		"":                    metrics.ReasonNone,
		ReasonIdentityChanged: metrics.ReasonIdentityChanged,
		ReasonNoCrossSigning:  metrics.ReasonNoCrossSigning,
		ReasonVisibility:      metrics.ReasonVisibility,
		ReasonInviteeJoined:   metrics.ReasonInviteImpossible,
		ReasonDeliveryTooLate: metrics.ReasonTooLate,
		ReasonInterrupted:     metrics.ReasonInterrupted,
		"delivery failed: failed to send bundle details: connection refused":           metrics.ReasonDelivery,
		"failed to upload bundle: M_TOO_LARGE":                                         metrics.ReasonUpload,
		keybundle.ErrBundleTooLarge.Error() + ": 70000000 bytes over max_bundle_size":  metrics.ReasonTooLarge,
		"something nobody foresaw, with @mallory:example.com and !room:example.com in": metrics.ReasonOther,
	} {
		require.Equal(t, want, sentReasonLabel(reason), "%q", reason)
	}
	for reason, want := range map[string]string{
		"sender @eve:x is not the inviter @alice:x":                           metrics.ReasonNotInviter,
		"sender's cross-signing identity changed since heirloom first saw it": metrics.ReasonIdentityChanged,
		"sender device is not cross-signed by its owner":                      metrics.ReasonSenderUnsigned,
		"invite accepted more than 24h0m0s ago":                               metrics.ReasonAcceptWindow,
		"bundle media is gone from the homeserver (M_NOT_FOUND)":              metrics.ReasonMediaGone,
		errHashMismatch.Error():                                               metrics.ReasonHashMismatch,
		"gave up after 8 attempts: connection reset":                          metrics.ReasonDownload,
	} {
		require.Equal(t, want, receivedReasonLabel(&database.ReceivedBundle{State: database.ReceivedRejected, Error: reason}), "%q", reason)
	}
	labels := map[string]bool{}
	for i := 0; i < 100; i++ {
		labels[sentReasonLabel(strings.Repeat("x", i))] = true
		labels[receivedReasonLabel(&database.ReceivedBundle{State: database.ReceivedFailed, Error: strings.Repeat("y", i)})] = true
	}
	require.Len(t, labels, 3, "arbitrary reasons collapse into other / import / none: %v", labels)
}
