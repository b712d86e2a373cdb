package gateway

import (
	"context"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
)

// readerForJoin gives a bridge user who joins an encrypted room its E2EE device before the join,
// when no bridge user in the room has one yet: someone who starts a chat with a ghost (Element
// creates an encrypted DM and invites the ghost) encrypts his first message for the devices the
// ghost has once he sees it join, and a device created after the join would miss it. heirloom knows
// the room is encrypted from the invite's stripped state. Every other join (a room with a bridge
// reader already, an unencrypted or unknown one) creates nothing: ghosts that never read an
// encrypted room cost nothing. It returns e2ee.ErrNotProvisioned when the user gets no device.
func (g *Gateway) readerForJoin(ctx context.Context, user id.UserID, roomID id.RoomID) (*e2ee.Puppet, error) {
	encrypted, err := g.db.StateStore.IsEncrypted(ctx, roomID)
	if err != nil || !encrypted || g.hasReaderInRoom(ctx, roomID) {
		return nil, e2ee.ErrNotProvisioned
	}
	p, err := g.identity(ctx, user)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Stringer("room_id", roomID).Msg("Failed to create the device of a bridge user joining an encrypted room")
		return nil, err
	}
	zerolog.Ctx(ctx).Info().Stringer("room_id", roomID).Msg("The joining bridge user is the encrypted room's first reader")
	return p, nil
}

// hasReaderInRoom reports whether a bridge user with an E2EE device is in the room (joined or
// invited, as heirloom knows the room's members).
func (g *Gateway) hasReaderInRoom(ctx context.Context, roomID id.RoomID) bool {
	members, err := g.db.StateStore.GetRoomJoinedOrInvitedMembers(ctx, roomID)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Stringer("room_id", roomID).Msg("Failed to list the room's members")
		return false
	}
	for _, u := range members {
		if !g.cfg.IsBridgeUser(u) {
			continue
		}
		if _, err = g.mgr.Get(ctx, u); err == nil {
			return true
		}
	}
	return false
}
