package server

import (
	"context"
	"encoding/json"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// noteInviteEncryption records that the room a managed user is invited to is encrypted, from the
// invite's stripped state (unsigned.invite_room_state, where Synapse puts the room's
// m.room.encryption among others). Until it joins, the invitee may read nothing of the room, yet
// whether it is encrypted decides what the join needs first (gateway mode gives a ghost joining an
// encrypted DM its device before the join, so the inviter's first message is encrypted for it).
// It only ever marks a room encrypted, and never replaces an encryption event heirloom holds: the
// room's own state, read after the join, is the word that counts.
func (s *Server) noteInviteEncryption(ctx context.Context, evt *event.Event) {
	if evt.Type != event.StateMember || evt.Content.AsMember().Membership != event.MembershipInvite ||
		!s.cfg.IsManaged(id.UserID(evt.GetStateKey())) {
		return
	}
	content := strippedEncryption(evt.Unsigned.InviteRoomState)
	if content == nil {
		return
	}
	if known, err := s.db.StateStore.GetEncryptionEvent(ctx, evt.RoomID); err != nil || known != nil {
		return
	}
	if err := s.db.StateStore.SetEncryptionEvent(ctx, evt.RoomID, content); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Stringer("room_id", evt.RoomID).Msg("Failed to record the encryption of a room from its invite")
	}
}

// strippedEncryption returns the m.room.encryption content among an invite's stripped state
// events, or nil.
func strippedEncryption(stripped []*event.Event) *event.EncryptionEventContent {
	for _, st := range stripped {
		if st == nil || st.Type.Type != event.StateEncryption.Type || st.GetStateKey() != "" {
			continue
		}
		var content event.EncryptionEventContent
		if json.Unmarshal(st.Content.VeryRaw, &content) != nil || content.Algorithm == "" {
			continue
		}
		return &content
	}
	return nil
}
