package cryptostore

import (
	"maunium.net/go/mautrix/crypto/olm"
)

// SameRatchet reports whether two copies of a megolm session are the same ratchet: exported at
// the later of their first known indexes, they must be byte for byte equal. A session ID is only
// the session's public key, which every room member sees, so a forged key can carry a real ID;
// this is what tells a genuine copy from a forged one before two copies are merged.
func SameRatchet(a, b olm.InboundGroupSession) bool {
	index := max(a.FirstKnownIndex(), b.FirstKnownIndex())
	ea, errA := a.Export(index)
	eb, errB := b.Export(index)
	return errA == nil && errB == nil && string(ea) == string(eb)
}
