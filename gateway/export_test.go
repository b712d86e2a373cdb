package gateway

import (
	"context"

	"maunium.net/go/mautrix/id"
)

// ExposeMedia is exposeMedia, for the tests of serveMedia.
func (g *Gateway) ExposeMedia(ctx context.Context, content map[string]any) error {
	return g.exposeMedia(ctx, content)
}

// RoomEncrypted is roomEncrypted, for the tests of what heirloom believes of a room it half knows.
func (g *Gateway) RoomEncrypted(ctx context.Context, user id.UserID, roomID id.RoomID) (bool, error) {
	return g.roomEncrypted(ctx, user, roomID)
}
