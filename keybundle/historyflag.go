package keybundle

import (
	"encoding/json"

	"maunium.net/go/mautrix/event"
)

// The names under which a megolm session's history flag travels. The MSC text names the stable
// `shared_history` and the unstable `org.matrix.msc3061.shared_history`; matrix-rust-sdk 0.19
// (Element) reads only `m.shared_history` and the unstable name, and itself writes
// `m.shared_history` in exports. heirloom reads all three.
const (
	FlagStable   = "shared_history"
	FlagRust     = "m.shared_history"
	FlagUnstable = "org.matrix.msc3061.shared_history"
)

// HistoryFlag reads the history flag from the fields of an m.room_key, forwarded key or exported
// session. It is true only if at least one of the three names is the boolean true and none is
// present with any other value: absent or non-boolean means false (MSC4268), and a content that
// contradicts itself is not trusted to share history.
func HistoryFlag(fields map[string]json.RawMessage) bool {
	seenTrue := false
	for _, name := range [...]string{FlagStable, FlagRust, FlagUnstable} {
		raw, ok := fields[name]
		if !ok {
			continue
		}
		var value bool
		if err := json.Unmarshal(raw, &value); err != nil || !value {
			return false
		}
		seenTrue = true
	}
	return seenTrue
}

// HistoryFlagJSON is HistoryFlag over a JSON object; anything that is not an object yields false.
func HistoryFlagJSON(data []byte) bool {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return false
	}
	return HistoryFlag(fields)
}

// SendFlagFields returns the flag fields heirloom writes into an m.room_key: the stable name and
// the unstable one, the pair matrix-rust-sdk reads. Never `m.shared_history` together with the
// unstable name: rust-sdk rejects the whole key when both are present.
func SendFlagFields(shared bool) map[string]any {
	return map[string]any{FlagStable: shared, FlagUnstable: shared}
}

// VisibilitySharesHistory reports whether sessions created under the given history visibility may
// be shared with future members: `shared` and `world_readable` do; an absent event counts as
// `shared` (the spec's default); `joined`, `invited` and any unknown value do not.
func VisibilitySharesHistory(content *event.HistoryVisibilityEventContent) bool {
	if content == nil {
		return true
	}
	switch content.HistoryVisibility {
	case event.HistoryVisibilityShared, event.HistoryVisibilityWorldReadable:
		return true
	default:
		return false
	}
}

// How a stored session's shared_history is set: one rule per way a session enters a store.

// SharedWhenCreated is the flag of a session a puppet creates (its outbound session, and the
// inbound copy it keeps): the room's history visibility when it is created
// (VisibilitySharesHistory), as rust-sdk sets it.
func SharedWhenCreated(visibility *event.HistoryVisibilityEventContent) bool {
	return VisibilitySharesHistory(visibility)
}

// SharedWhenReceived is the flag of a session received in an m.room_key: the key's own flag, read
// under any of its names (HistoryFlag).
func SharedWhenReceived(fields map[string]json.RawMessage) bool {
	return HistoryFlag(fields)
}

// SharedWhenForwarded is the flag of a session taken from an m.forwarded_room_key: never shared. A
// forward is the forwarding device's word for the key, not the creator's consent to share history.
func SharedWhenForwarded() bool { return false }

// SharedWhenImported is the flag of a session imported from a bundle's room_keys: shared, for a
// bundle carries a key only if its creator shared history (the others are withheld entries).
func SharedWhenImported() bool { return true }

// SharedWhenMerged is the flag of a row that merges two copies of a session: shared only if both
// say so, so that no copy turns shareable a session someone marked otherwise.
func SharedWhenMerged(held, incoming bool) bool { return held && incoming }
