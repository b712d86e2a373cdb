package e2ee

import (
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee/cryptostore"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// Reasons a copy of a session is not stored (logged, and counted as skipped in a bundle's report).
const (
	reasonContradicts  = "key contradicts the session already held"
	reasonOtherSender  = "key claims another sender than the session already held"
	ReasonHeldNoBetter = "session already held at an index as early"
)

// isDirect reports whether a copy came over Olm from the device that created the session (an
// m.room_key, or the puppet's own outbound session), rather than from someone else's word.
func isDirect(s *crypto.InboundGroupSession) bool {
	return s.KeySource == id.KeySourceDirect || s.KeySource == ""
}

func sharesHistory(s *crypto.InboundGroupSession) bool {
	return s.SharedHistory != nil && *s.SharedHistory
}

// MergeSessions decides what the stored row of a megolm session becomes when a second copy of it
// arrives. held and incoming are copies of the same session ID in the same room (a copy claiming
// another room is another row, and never reaches this). It returns the row to store, or nil and
// the reason to keep held unchanged. Neither input is modified.
//
// mautrix's own merge compares first indexes only and keeps the newer copy's flags, and (since
// v0.33.0) takes the sender claims of the copy received directly: it lets a copy launder what the
// older one said, or re-attribute it. heirloom's rules, field by field:
//
//   - ratchet: two copies must be the same ratchet (cryptostore.SameRatchet). If they are not,
//     one is forged: a copy received directly (signed by the session's own key inside m.room_key)
//     replaces an imported copy (an export carries no signature); in every other case the held
//     copy stays and the incoming one is dropped.
//   - sender claims (sender_key, signing_key) and provenance: when the two copies claim different
//     senders, the held copy stays as it is, whichever came directly. Olm authenticates the device
//     that relayed a key, not the session's creator: a member who re-sends a session he received
//     must not make it his, nor erase whose bundle supplied it (keys_shared_by). Only a "not
//     shared" from the incoming copy is heard even then (see shared_history).
//   - index: the earlier first known index wins, and the row takes that copy's provenance
//     (key_source, source_user, forwarding chain): keys_shared_by then names whoever supplied the
//     earliest messages. At equal indexes a direct copy's provenance wins.
//   - shared_history: keybundle.SharedWhenMerged: true only if both copies say true. A session
//     someone once marked not shareable is never turned shareable by another copy.
//   - limits (max_age, max_messages, is_scheduled): the direct copy's, else the held copy's.
//   - received_at: the earlier of the two.
func MergeSessions(held, incoming *crypto.InboundGroupSession) (*crypto.InboundGroupSession, string) {
	heldDirect, inDirect := isDirect(held), isDirect(incoming)
	if !cryptostore.SameRatchet(held.Internal, incoming.Internal) {
		if inDirect && !heldDirect {
			out := *incoming
			out.SharedHistory = sharedFlag(sharesHistory(incoming))
			if held.ReceivedAt.Before(out.ReceivedAt) && !held.ReceivedAt.IsZero() {
				out.ReceivedAt = held.ReceivedAt
			}
			return &out, ""
		}
		return nil, reasonContradicts
	}
	if held.SenderKey != incoming.SenderKey || held.SigningKey != incoming.SigningKey {
		// The held claims and provenance stay. But a copy that says "not shared" is heard even
		// then: whoever relayed the held copy first must not keep a session shareable that its
		// sender marked otherwise.
		if flag := keybundle.SharedWhenMerged(sharesHistory(held), sharesHistory(incoming)); flag != sharesHistory(held) {
			out := *held
			out.SharedHistory = sharedFlag(flag)
			return &out, ""
		}
		return nil, reasonOtherSender
	}
	// The copy whose ratchet (and so whose provenance) the row keeps.
	base, other := held, incoming
	heldIndex, inIndex := held.Internal.FirstKnownIndex(), incoming.Internal.FirstKnownIndex()
	if inIndex < heldIndex || (inIndex == heldIndex && inDirect && !heldDirect) {
		base, other = incoming, held
	}
	out := *base
	// Limits come from the copy Olm authenticated, whichever ratchet the row keeps.
	limits := held
	if authority := directOf(held, incoming); authority != nil {
		limits = authority
	}
	out.MaxAge, out.MaxMessages, out.IsScheduled = limits.MaxAge, limits.MaxMessages, limits.IsScheduled
	shared := keybundle.SharedWhenMerged(sharesHistory(held), sharesHistory(incoming))
	out.SharedHistory = sharedFlag(shared)
	if !other.ReceivedAt.IsZero() && other.ReceivedAt.Before(out.ReceivedAt) {
		out.ReceivedAt = other.ReceivedAt
	}
	if base == held && shared == sharesHistory(held) && out.MaxAge == held.MaxAge && out.MaxMessages == held.MaxMessages &&
		out.IsScheduled == held.IsScheduled {
		return nil, ReasonHeldNoBetter
	}
	return &out, ""
}

func sharedFlag(shared bool) *bool { return &shared }

// directOf returns the one copy of the two that came directly, or nil if both or neither did.
func directOf(a, b *crypto.InboundGroupSession) *crypto.InboundGroupSession {
	switch {
	case isDirect(a) && !isDirect(b):
		return a
	case isDirect(b) && !isDirect(a):
		return b
	}
	return nil
}
