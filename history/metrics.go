package history

import (
	"strings"
	"time"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/keybundle"
	"github.com/heirloom-matrix/heirloom/metrics"
)

// The reasons bundles record are sentences (some with names or errors in them); metrics count
// them under fixed labels.

var sentReasonLabels = map[string]string{
	"":                     metrics.ReasonNone,
	ReasonDisabled:         metrics.ReasonDisabled,
	ReasonNotEncrypted:     metrics.ReasonNotEncrypted,
	ReasonVisibility:       metrics.ReasonVisibility,
	ReasonNothingToShare:   metrics.ReasonNothingToShare,
	ReasonPuppetUnsigned:   metrics.ReasonPuppetUnsigned,
	ReasonNoCrossSigning:   metrics.ReasonNoCrossSigning,
	ReasonIdentityChanged:  metrics.ReasonIdentityChanged,
	ReasonNoDevices:        metrics.ReasonNoDevices,
	ReasonInviteeBanned:    metrics.ReasonInviteImpossible,
	ReasonInviteeJoined:    metrics.ReasonInviteImpossible,
	ReasonNoInvitePower:    metrics.ReasonInviteImpossible,
	ReasonDeliveryTooLate:  metrics.ReasonTooLate,
	ReasonNoLongerInvited:  metrics.ReasonNoLongerInvited,
	ReasonInterrupted:      metrics.ReasonInterrupted,
	ReasonDeviceNowUnknown: metrics.ReasonNoDevices,
}

// sentReasonLabel returns the label a sent bundle's reason is counted under.
func sentReasonLabel(reason string) string {
	if label, ok := sentReasonLabels[reason]; ok {
		return label
	}
	switch {
	case strings.Contains(reason, keybundle.ErrBundleTooLarge.Error()):
		return metrics.ReasonTooLarge
	case strings.HasPrefix(reason, "delivery failed"):
		return metrics.ReasonDelivery
	case strings.HasPrefix(reason, "failed to upload"):
		return metrics.ReasonUpload
	}
	return metrics.ReasonOther
}

// receivedReasonLabel returns the label a received bundle's error is counted under.
func receivedReasonLabel(b *database.ReceivedBundle) string {
	e := b.Error
	switch {
	case e == "":
		return metrics.ReasonNone
	case strings.HasPrefix(e, "sender ") && strings.Contains(e, "is not the inviter"):
		return metrics.ReasonNotInviter
	case strings.Contains(e, "cross-signing identity changed"):
		return metrics.ReasonIdentityChanged
	case strings.Contains(e, "blacklisted"):
		return metrics.ReasonBlacklisted
	case strings.Contains(e, "not cross-signed"):
		return metrics.ReasonSenderUnsigned
	case strings.Contains(e, "accept window") || strings.Contains(e, "invite accepted more than"):
		return metrics.ReasonAcceptWindow
	case strings.Contains(e, "media is gone"):
		return metrics.ReasonMediaGone
	case strings.Contains(e, keybundle.ErrBundleTooLarge.Error()):
		return metrics.ReasonTooLarge
	case e == errHashMismatch.Error():
		return metrics.ReasonHashMismatch
	case strings.HasPrefix(e, "gave up after") || strings.Contains(e, "failed to download"):
		return metrics.ReasonDownload
	case b.State == database.ReceivedFailed && b.Imported == 0 && strings.Contains(e, "decrypt"):
		return metrics.ReasonDecrypt
	case b.State == database.ReceivedFailed:
		return metrics.ReasonImport
	}
	return metrics.ReasonOther
}

// sentOutcome counts a sent bundle that reached a final state.
func (s *Service) sentOutcome(b *database.SentBundle) {
	switch b.State {
	case database.SentDelivered, database.SentNothing, database.SentSkipped, database.SentFailed:
		s.Metrics.BundleSent(b.State, sentReasonLabel(b.Reason))
		if b.Reason == ReasonIdentityChanged {
			s.Metrics.IdentityChangeRefused(metrics.IdentitySend)
		}
	}
}

// receivedOutcome counts what became of a received bundle, and how long its import took after
// the puppet accepted the invite.
func (s *Service) receivedOutcome(b *database.ReceivedBundle, acceptedAt int64) {
	switch b.State {
	case database.ReceivedImported, database.ReceivedRejected, database.ReceivedExpired, database.ReceivedRetry, database.ReceivedFailed:
	default:
		return
	}
	label := receivedReasonLabel(b)
	s.Metrics.BundleReceived(b.State, label)
	if label == metrics.ReasonIdentityChanged {
		s.Metrics.IdentityChangeRefused(metrics.IdentityReceive)
	}
	if b.State == database.ReceivedImported && acceptedAt > 0 {
		s.Metrics.Imported(time.Since(time.UnixMilli(acceptedAt)))
	}
}
