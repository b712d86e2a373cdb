package e2ee

import (
	"context"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// refuseOtherUsersKeyRequests is the puppets' AllowKeyShare. mautrix's default answers another
// user's m.room_key_request for any session that was shared with the requesting device, and
// forwards it from its first known index: a member who joined a `joined`-visibility room late, or
// has left since, would get every message the puppet sent in that session before he was let in.
// matrix-rust-sdk re-shares only from the index it first shared at; a puppet has one device and no
// other device of its own that could ask, so heirloom answers no other user at all. The refusal is
// silent: a withheld reply would let anyone make puppets send to-device messages on demand.
// Requests from the puppet's own user keep mautrix's rules (a device its own identity signs).
func refuseOtherUsersKeyRequests(mach *crypto.OlmMachine) func(context.Context, *id.Device, event.RequestedKeyInfo) *crypto.KeyShareRejection {
	ownRules := mach.AllowKeyShare
	return func(ctx context.Context, device *id.Device, info event.RequestedKeyInfo) *crypto.KeyShareRejection {
		if device.UserID != mach.Client.UserID {
			zerolog.Ctx(ctx).Info().Stringer("requester", device.UserID).Stringer("requesting_device_id", device.DeviceID).
				Stringer("room_id", info.RoomID).Stringer("session_id", info.SessionID).
				Msg("Refusing room key request from another user")
			return &crypto.KeyShareRejectNoResponse
		}
		return ownRules(ctx, device, info)
	}
}

// isForeignKeyRequest reports whether a plaintext to-device event is a room key request from
// another user than the puppet. Those are dropped before mautrix sees them: its handler would
// first query the requester's device keys from the homeserver, for a request that is refused anyway.
func (p *Puppet) isForeignKeyRequest(evt *event.Event) bool {
	return evt.Type == event.ToDeviceRoomKeyRequest && evt.Sender != p.UserID
}
