// Package metrics provides the Prometheus metrics heirloom's history sharing and puppet devices
// count into, for admins to alert on. Every label takes its values from a fixed set: a value
// outside it is counted as "other", so nothing a user sends can grow the number of series.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of a bundle a puppet sent (the sent bundle states that end it).
const (
	sentDelivered = "delivered"
	sentNothing   = "nothing"
	sentSkipped   = "skipped"
	SentFailed    = "failed"
)

// Outcomes of a bundle a puppet received: its arrival, then the state that ends it (or a retry).
const (
	ReceivedArrived  = "received"
	receivedImported = "imported"
	ReceivedRejected = "rejected"
	receivedExpired  = "expired"
	receivedRetry    = "retry"
	receivedFailed   = "failed"
)

// Reasons a bundle's outcome is counted under.
const (
	ReasonNone             = "none"
	ReasonOther            = "other"
	ReasonDisabled         = "disabled"
	ReasonNotEncrypted     = "not_encrypted"
	ReasonVisibility       = "visibility"
	ReasonNothingToShare   = "nothing_to_share"
	ReasonPuppetUnsigned   = "puppet_unsigned"
	ReasonNoCrossSigning   = "no_cross_signing"
	ReasonIdentityChanged  = "identity_changed"
	ReasonNoDevices        = "no_devices"
	ReasonInviteImpossible = "invite_impossible"
	ReasonTooLarge         = "too_large"
	ReasonUpload           = "upload"
	ReasonDelivery         = "delivery"
	ReasonInterrupted      = "interrupted"
	ReasonTooLate          = "too_late"
	ReasonNoLongerInvited  = "no_longer_invited"
	ReasonNotInviter       = "not_inviter"
	ReasonSenderUnsigned   = "sender_unsigned"
	ReasonBlacklisted      = "blacklisted"
	ReasonAcceptWindow     = "accept_window"
	ReasonMediaGone        = "media_gone"
	ReasonHashMismatch     = "hash_mismatch"
	ReasonDownload         = "download"
	ReasonDecrypt          = "decrypt"
	ReasonImport           = "import"
)

// Where a changed cross-signing identity stopped history sharing.
const (
	IdentitySend      = "send"      // a puppet's bundle for an invitee whose identity changed
	IdentityRedeliver = "redeliver" // a new device of such an invitee
	IdentityReceive   = "receive"   // a bundle from a sender whose identity changed
)

// What made heirloom check a puppet's device.
const (
	TriggerDeviceList    = "device_list"    // a device-list change for the puppet in a transaction
	TriggerUnknownDevice = "unknown_device" // the homeserver answered M_UNKNOWN_DEVICE
	TriggerStartup       = "startup"        // the check at startup of the puppets active within a day
	TriggerLoad          = "load"           // the check of another puppet when its machine first loads
)

func set(values ...string) map[string]bool {
	out := make(map[string]bool, len(values))
	for _, v := range values {
		out[v] = true
	}
	return out
}

var (
	sentOutcomes     = set(sentDelivered, sentNothing, sentSkipped, SentFailed)
	receivedOutcomes = set(ReceivedArrived, receivedImported, ReceivedRejected, receivedExpired, receivedRetry, receivedFailed)
	reasons          = set(ReasonNone, ReasonOther, ReasonDisabled, ReasonNotEncrypted, ReasonVisibility, ReasonNothingToShare,
		ReasonPuppetUnsigned, ReasonNoCrossSigning, ReasonIdentityChanged, ReasonNoDevices, ReasonInviteImpossible,
		ReasonTooLarge, ReasonUpload, ReasonDelivery, ReasonInterrupted, ReasonTooLate, ReasonNoLongerInvited,
		ReasonNotInviter, ReasonSenderUnsigned, ReasonBlacklisted, ReasonAcceptWindow, ReasonMediaGone,
		ReasonHashMismatch, ReasonDownload, ReasonDecrypt, ReasonImport)
	identityWheres = set(IdentitySend, IdentityRedeliver, IdentityReceive)
	triggers       = set(TriggerDeviceList, TriggerUnknownDevice, TriggerStartup, TriggerLoad)
)

// bounded returns value if allowed holds it, else "other".
func bounded(allowed map[string]bool, value string) string {
	if allowed[value] {
		return value
	}
	return ReasonOther
}

// Metrics are the collectors. A nil *Metrics counts nothing, so tests and tools need none.
type Metrics struct {
	bundlesSent       *prometheus.CounterVec
	bundlesReceived   *prometheus.CounterVec
	inviteToDelivered prometheus.Histogram
	joinToImported    prometheus.Histogram
	redelivered       prometheus.Counter
	recovered         prometheus.Counter
	identityRefused   *prometheus.CounterVec
	restored          *prometheus.CounterVec
	restoreFailed     *prometheus.CounterVec
}

// New creates the collectors; Register adds them to a registry.
func New() *Metrics {
	return &Metrics{
		bundlesSent: NewCounterVec("heirloom_bundles_sent_total",
			"Key bundles puppets built for invites and reshares, by outcome (delivered, nothing, skipped, failed) and reason.", "outcome", "reason"),
		bundlesReceived: NewCounterVec("heirloom_bundles_received_total",
			"Key bundles puppets received (outcome received), then what became of them (imported, rejected, expired, retry, failed), by reason.", "outcome", "reason"),
		inviteToDelivered: NewHistogram("heirloom_bundle_invite_to_delivered_seconds",
			"Time from a puppet's invite (the API call, or its echo for invites sent directly) to its bundle delivered.",
			0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
		joinToImported: NewHistogram("heirloom_bundle_join_to_imported_seconds",
			"Time from a puppet accepting an invite to the inviter's bundle imported.",
			0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400),
		redelivered: NewCounter("heirloom_bundle_redeliveries_total",
			"Devices an invitee added after the invite that got the invite's bundle."),
		recovered: NewCounter("heirloom_to_device_recovered_total",
			"To-device messages the homeserver never pushed that the inbox sweep fetched."),
		identityRefused: NewCounterVec("heirloom_identity_changes_refused_total",
			"History sharing refused because a cross-signing identity changed since heirloom first saw it, by where (send, redeliver, receive).", "where"),
		restored: NewCounterVec("heirloom_puppet_devices_restored_total",
			"Puppet devices the homeserver deleted that heirloom recreated with the same keys, by what noticed it.", "trigger"),
		restoreFailed: NewCounterVec("heirloom_puppet_device_restore_failures_total",
			"Deleted puppet devices heirloom could not restore, by what noticed it (GET /status lists them).", "trigger"),
	}
}

// Register adds every collector to reg.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.bundlesSent, m.bundlesReceived, m.inviteToDelivered, m.joinToImported,
		m.redelivered, m.recovered, m.identityRefused, m.restored, m.restoreFailed} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// BundleSent counts a sent bundle reaching outcome, for reason.
func (m *Metrics) BundleSent(outcome, reason string) { m.BundlesSent(outcome, reason, 1) }

// BundlesSent counts n sent bundles reaching outcome, for reason.
func (m *Metrics) BundlesSent(outcome, reason string, n int64) {
	if m != nil && n > 0 {
		m.bundlesSent.WithLabelValues(bounded(sentOutcomes, outcome), bounded(reasons, reason)).Add(float64(n))
	}
}

// BundleReceived counts a received bundle reaching outcome, for reason.
func (m *Metrics) BundleReceived(outcome, reason string) { m.BundlesReceived(outcome, reason, 1) }

// BundlesReceived counts n received bundles reaching outcome, for reason.
func (m *Metrics) BundlesReceived(outcome, reason string, n int64) {
	if m != nil && n > 0 {
		m.bundlesReceived.WithLabelValues(bounded(receivedOutcomes, outcome), bounded(reasons, reason)).Add(float64(n))
	}
}

// Delivered records the time from an invite to its bundle delivered.
func (m *Metrics) Delivered(d time.Duration) {
	if m != nil {
		m.inviteToDelivered.Observe(d.Seconds())
	}
}

// Imported records the time from accepting an invite to the inviter's bundle imported.
func (m *Metrics) Imported(d time.Duration) {
	if m != nil {
		m.joinToImported.Observe(d.Seconds())
	}
}

// Redelivered counts devices added later that got a bundle.
func (m *Metrics) Redelivered(devices int) {
	if m != nil && devices > 0 {
		m.redelivered.Add(float64(devices))
	}
}

// Recovered counts to-device messages the sweep found that were never pushed.
func (m *Metrics) Recovered(messages int) {
	if m != nil && messages > 0 {
		m.recovered.Add(float64(messages))
	}
}

// IdentityChangeRefused counts history sharing refused for a changed identity.
func (m *Metrics) IdentityChangeRefused(where string) {
	if m != nil {
		m.identityRefused.WithLabelValues(bounded(identityWheres, where)).Inc()
	}
}

// DeviceRestored counts a restored puppet device.
func (m *Metrics) DeviceRestored(trigger string) {
	if m != nil {
		m.restored.WithLabelValues(bounded(triggers, trigger)).Inc()
	}
}

// DeviceRestoreFailed counts a puppet device that could not be restored.
func (m *Metrics) DeviceRestoreFailed(trigger string) {
	if m != nil {
		m.restoreFailed.WithLabelValues(bounded(triggers, trigger)).Inc()
	}
}
