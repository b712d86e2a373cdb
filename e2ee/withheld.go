package e2ee

import (
	"context"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"

	"github.com/heirloom-matrix/heirloom/e2ee/cryptostore"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// A withheld entry turns "no key yet", which callers wait and sweep for, into a final failure. It
// is held under the room and session ID alone (mautrix's table has no other key), and a session
// ID is public: anyone in the room has seen it. So an entry answers for an event only where it
// speaks of the event's own sender's session:
//   - its sender_key is the event's (when the event still names one, as clients SHOULD), and is a
//     key of a device of the event's sender that heirloom knows (when the event names none);
//   - one a device sent (receiveWithheld keeps only a member's word about its own device's
//     session) answers for the events of the user who sent it only: a device's Curve25519 key is
//     its uploader's word, and another user's device may name the same one. (An entry stored
//     before heirloom recorded its sender answers for events of a user whose known device has its
//     sender_key.)
//   - one a key bundle carried is m.history_not_shared, its sender's word about history: it
//     answers only for events sent before the bundle arrived. A message sent after it gets its key
//     from its sender directly, and reading it before that key comes is "no key yet".
//
// Anything else reads as "no key yet": the entry stays, and a key that arrives replaces it.

// withheldSpeaksFor reports whether the withheld entry held for the event's session answers for
// the event (the rules above).
func (p *Puppet) withheldSpeaksFor(ctx context.Context, evt *event.Event, content *event.EncryptedEventContent) bool {
	w, err := cryptostore.WithheldEntry(ctx, p.Store.DB, p.Store.AccountID, evt.RoomID, content.SessionID)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to read a withheld entry")
		return false
	} else if w == nil {
		return false
	}
	switch {
	case content.SenderKey != "" && w.SenderKey != content.SenderKey:
		return false
	case w.FromBundle:
		return keybundle.IsHistoryNotShared(w.Code) && evt.Timestamp < w.ReceivedAt.UnixMilli()
	case w.Sender != "":
		return w.Sender == evt.Sender
	default:
		return p.ownsDevice(ctx, evt.Sender, w.SenderKey)
	}
}
