package gateway

import (
	"errors"

	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/fault"
)

// What a decrypted payload may become for the bridge. Everything in it is the sender's word: the
// homeserver saw only m.room.encrypted, and none of its checks for the payload's type ran (power
// levels for a redaction or a state change, the auth rules of a membership). So the bridge gets
// a payload decrypted only if its type is one a client shows from encrypted content, and the
// content is one the bridge can parse; anything else goes to it as it arrived, encrypted, as it
// would without heirloom.

// bridgeTypes are the event types decrypted for the bridge: messages, stickers, reactions, polls
// (stable and MSC3381), live location (MSC3672) and 1:1 VoIP calls, as Element sends them
// encrypted. Not in-room verification (m.key.verification.*): heirloom holds the bridge users'
// keys, so a bridge acting on a verification request would answer for keys it does not hold (the
// request itself is an m.room.message, and goes through). Not redactions (clients send them in
// the clear: the homeserver must see what they redact), state types, m.room.encrypted again, or
// types nobody defined.
var bridgeTypes = map[string]bool{
	"m.room.message": true, "m.sticker": true, "m.reaction": true,
	"m.poll.start": true, "m.poll.response": true, "m.poll.end": true,
	"org.matrix.msc3381.poll.start": true, "org.matrix.msc3381.poll.response": true, "org.matrix.msc3381.poll.end": true,
	"m.beacon": true, "org.matrix.msc3672.beacon": true,
	"m.call.invite": true, "m.call.candidates": true, "m.call.answer": true, "m.call.hangup": true, "m.call.select_answer": true,
	"m.call.reject": true, "m.call.negotiate": true, "m.call.sdp_stream_metadata_changed": true, "m.call.asserted_identity": true,
	"org.matrix.call.sdp_stream_metadata_changed": true, "org.matrix.call.asserted_identity": true,
}

// Bounds of decrypted content handed to the bridge. The homeserver refuses an event whose content
// nests deeper than 126 levels (Synapse 1.163: M_BAD_JSON "Invalid event JSON"), so no bridge ever
// gets deeper content in the clear; mautrix-python (heisenbridge) fails on a transaction past about
// 980 levels, answering 500, and mautrix-go past 10,000. The size is the homeserver's limit on a
// whole event.
const (
	maxContentDepth = 100
	maxContentSize  = 64 << 10
)

var (
	errNotForBridge    = errors.New("the decrypted type is not one heirloom decrypts for the bridge")
	errContentTooDeep  = errors.New("the decrypted content nests deeper than a bridge is given")
	errContentTooLarge = errors.New("the decrypted content is larger than a bridge is given")
)

// checkDecrypted reports why a decrypted payload goes to the bridge encrypted, or nil if it may
// go decrypted.
func checkDecrypted(d *e2ee.Decrypted) error {
	switch content := d.Event.Content.VeryRaw; {
	case !bridgeTypes[d.Event.Type.Type] || d.Event.StateKey != nil:
		return errNotForBridge
	case len(content) > maxContentSize:
		return errContentTooLarge
	case jsonDepth(content) > maxContentDepth && !fault.Active("gateway_unbounded_content"):
		return errContentTooDeep
	}
	return nil
}

// jsonDepth is the deepest nesting of arrays and objects in a JSON document.
func jsonDepth(data []byte) int {
	depth, deepest := 0, 0
	inString, escaped := false, false
	for _, c := range data {
		switch {
		case escaped:
			escaped = false
		case inString:
			if c == '\\' {
				escaped = true
			} else if c == '"' {
				inString = false
			}
		case c == '"':
			inString = true
		case c == '[' || c == '{':
			depth++
			deepest = max(deepest, depth)
		case c == ']' || c == '}':
			depth--
		}
	}
	return deepest
}
