package gateway

import (
	"context"
	"errors"
	"fmt"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
)

// confirmPlain asks the homeserver whether a room heirloom's state store holds as unencrypted has
// an m.room.encryption event. What the store holds may be half of the room's state: the homeserver
// pushes a new room's state in several transactions, and a bridge creates a room and sends into it,
// or invites to it, at once (matrix-appservice-bridge 12 does). Each room is asked once: a later
// m.room.encryption reaches the store in the transactions, in order. An answer heirloom cannot read
// is an error, so that nothing goes out in the clear on a guess.
func (g *Gateway) confirmPlain(ctx context.Context, user id.UserID, roomID id.RoomID) (bool, error) {
	if _, ok := g.plainRooms.Load(roomID); ok {
		return false, nil
	}
	var content event.EncryptionEventContent
	err := g.mgr.Client(ctx, user).StateEvent(ctx, roomID, event.StateEncryption, "", &content)
	switch {
	case err == nil:
		// An m.room.encryption event, whatever it holds: the room is encrypted for good.
		if content.Algorithm == "" {
			content.Algorithm = id.AlgorithmMegolmV1
		}
		if err = g.db.StateStore.SetEncryptionEvent(ctx, roomID, &content); err != nil {
			return true, fmt.Errorf("failed to record the room's encryption: %w", err)
		}
		return true, nil
	case errors.Is(err, mautrix.MNotFound):
		g.plainRooms.Store(roomID, struct{}{})
		return false, nil
	case errors.Is(err, mautrix.MForbidden):
		return false, fmt.Errorf("%w: %w", e2ee.ErrUnknownRoom, err)
	default:
		return false, fmt.Errorf("failed to ask the homeserver whether the room is encrypted: %w", err)
	}
}
