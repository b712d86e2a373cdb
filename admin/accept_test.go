package admin

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"
)

// The bot's rule for which messages it acts on, case by case: what runs, what is answered
// instead, what is refused, and what is dropped unanswered.
func TestDecide(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	// An admin's command, decrypted, from a cross-signed device, in an encrypted DM, just sent.
	valid := message{admin: true, dm: true, roomEncrypted: true, eventEncrypted: true, decrypted: true, command: true,
		trust: id.TrustStateCrossSignedTOFU, sent: now.Add(-time.Second), received: now}
	for _, tc := range []struct {
		name       string
		mutate     func(*message)
		want       action
		waitForKey bool
		wantReason string
	}{
		{"an admin's command from a cross-signed device", func(*message) {}, run, false, ""},
		{"cross-signed and verified", func(m *message) { m.trust = id.TrustStateCrossSignedVerified }, run, false, ""},
		{"in a room with more members", func(m *message) { m.dm = false }, run, false, ""},
		{"sent exactly ten minutes before", func(m *message) { m.sent = now.Add(-maxAge) }, run, false, ""},
		{"dated a minute ahead", func(m *message) { m.sent = now.Add(maxAhead) }, run, false, ""},

		// Who: only admins; anyone else in a DM is refused before the bot decrypts anything.
		{"not an admin, in a DM, still encrypted", func(m *message) { m.admin, m.decrypted = false, false }, refuse, false, "not an admin"},
		{"not an admin, in a DM, undecryptable", func(m *message) { m.admin, m.decrypted, m.undecryptable = false, false, true }, refuse, false, "not an admin"},
		{"not an admin, addressed to the bot in a room", func(m *message) { m.admin, m.dm = false, false }, refuse, false, "not an admin"},
		{"not an admin, talking in a room", func(m *message) { m.admin, m.dm, m.command = false, false, false }, ignore, false, reasonNotCommand},

		// Decryption: only an admin's message waits for its key.
		{"an admin's message, to decrypt", func(m *message) { m.decrypted = false }, decrypt, true, ""},
		{"an admin's message in a room, to decrypt", func(m *message) { m.decrypted, m.dm = false, false }, decrypt, true, ""},
		{"someone else's message in a room, to decrypt without waiting", func(m *message) { m.decrypted, m.dm, m.admin = false, false, false }, decrypt, false, ""},
		{"an admin's undecryptable message in a DM", func(m *message) { m.decrypted, m.undecryptable = false, true }, tellUndecryptable, false, "could not decrypt"},
		{"an admin's undecryptable message in a room", func(m *message) { m.decrypted, m.undecryptable, m.dm = false, true, false }, ignore, false, reasonUndecryptable},
		{"someone else's undecryptable message in a room", func(m *message) {
			m.decrypted, m.undecryptable, m.dm, m.admin = false, true, false, false
		}, ignore, false, reasonUndecryptable},

		// Where and how: encrypted rooms, encrypted events.
		{"the room is not encrypted", func(m *message) { m.roomEncrypted = false }, tellNotEncrypted, false, "not encrypted"},
		{"the room is not encrypted, the command in the clear", func(m *message) {
			m.roomEncrypted, m.eventEncrypted, m.decrypted = false, false, false
		}, tellNotEncrypted, false, "not encrypted"},
		{"the command in the clear in an encrypted room", func(m *message) { m.eventEncrypted, m.decrypted = false, false }, tellSendEncrypted, false, "in the clear"},
		{"not a text message for the bot", func(m *message) { m.command = false }, ignore, false, reasonNotCommand},

		// From which device: one the admin's cross-signing identity signs, with its own room key.
		{"forwarded room key", func(m *message) { m.forwarded = true }, tellUntrusted, false, "forwarded"},
		{"forwarded room key from a verified device", func(m *message) {
			m.forwarded, m.trust = true, id.TrustStateCrossSignedVerified
		}, tellUntrusted, false, "forwarded"},
		{"unsigned device", func(m *message) { m.trust = id.TrustStateUnset }, tellUntrusted, false, "does not sign"},
		{"unknown device", func(m *message) { m.trust = id.TrustStateUnknownDevice }, tellUntrusted, false, "does not sign"},
		{"forwarded trust", func(m *message) { m.trust = id.TrustStateForwarded }, tellUntrusted, false, "does not sign"},
		{"key backup", func(m *message) { m.trust = id.TrustStateBackup }, tellUntrusted, false, "does not sign"},
		{"identity changed", func(m *message) { m.trust = id.TrustStateCrossSignedUntrusted }, tellUntrusted, false, "does not sign"},
		{"device key mismatch", func(m *message) { m.trust = id.TrustStateDeviceKeyMismatch }, tellUntrusted, false, "does not sign"},
		{"blacklisted", func(m *message) { m.trust = id.TrustStateBlacklisted }, tellUntrusted, false, "does not sign"},

		// When: within ten minutes before heirloom got it, and not dated ahead of its clock.
		{"sent a moment over ten minutes before", func(m *message) { m.sent = now.Add(-maxAge - time.Second) }, ignore, false, "over 10m0s"},
		{"sent while heirloom was down for hours", func(m *message) { m.sent = now.Add(-5 * time.Hour) }, ignore, false, "before heirloom got it"},
		{"stale and still encrypted: not even decrypted", func(m *message) {
			m.sent, m.decrypted = now.Add(-time.Hour), false
		}, ignore, false, "before heirloom got it"},
		{"stale, from someone else in a room", func(m *message) {
			m.sent, m.admin, m.dm = now.Add(-time.Hour), false, false
		}, ignore, false, "before heirloom got it"},
		{"dated over a minute ahead", func(m *message) { m.sent = now.Add(maxAhead + time.Second) }, ignore, false, "ahead of heirloom's clock"},
		{"dated a day ahead, still encrypted", func(m *message) {
			m.sent, m.decrypted = now.Add(24*time.Hour), false
		}, ignore, false, "ahead of heirloom's clock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := valid
			tc.mutate(&m)
			v := decide(m)
			require.Equal(t, tc.want, v.action, "reason: %q", v.reason)
			require.Equal(t, tc.waitForKey, v.waitForKey, "waits for the room key")
			require.Contains(t, v.reason, tc.wantReason)
			if tc.want != run {
				require.NotEmpty(t, v.reason, "every verdict but run says why")
			}
		})
	}
}
