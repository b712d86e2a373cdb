package e2ee

import (
	"context"
	"errors"
	"net/http"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// A room key counts only from someone who could have had it: a joined or invited member of the
// room it names. Anyone with an Olm session can send one naming any room, and a past member holds
// the signed keys of every session he received.

// memberVerdict is what heirloom can establish of a user's membership in a room.
type memberVerdict int

const (
	notMember memberVerdict = iota
	member
	// unknownMember: neither heirloom's state store nor the homeserver can say. Synapse lets a
	// user read a room's state only once joined, so a puppet that is only invited cannot ask.
	unknownMember
	// unanswered: the homeserver did not answer (a 5xx, a timeout, a restart): no answer at all,
	// which a later question may get.
	unanswered
)

// isMember reports whether the user is joined to or invited into the room, as heirloom's state
// store knows it.
func (m *Manager) isMember(ctx context.Context, roomID id.RoomID, userID id.UserID) bool {
	membership, err := m.db.StateStore.GetMembership(ctx, roomID, userID)
	return err == nil && (membership == event.MembershipJoin || membership == event.MembershipInvite)
}

// membershipOf says whether the user is a joined or invited member of the room: from heirloom's
// state store when it says so; otherwise (it knows nothing, or knows of a departure the user may
// have undone) from the homeserver, asked as the puppet, and remembered.
func (p *Puppet) membershipOf(ctx context.Context, roomID id.RoomID, userID id.UserID) memberVerdict {
	if known, err := p.mgr.db.StateStore.TryGetMember(ctx, roomID, userID); err == nil && known != nil &&
		(known.Membership == event.MembershipJoin || known.Membership == event.MembershipInvite) {
		return member
	}
	var content event.MemberEventContent
	err := p.Client.StateEvent(ctx, roomID, event.StateMember, userID.String(), &content)
	var httpErr mautrix.HTTPError
	switch {
	case errors.Is(err, mautrix.MNotFound):
		return notMember // never a member
	case errors.As(err, &httpErr) && httpErr.IsStatus(http.StatusForbidden):
		// The puppet may not read the room's state (it is only invited, or not in the room).
		return unknownMember
	case err != nil:
		zerolog.Ctx(ctx).Warn().Err(err).Stringer("user_id", userID).Msg("The homeserver did not say whether the user is in the room")
		return unanswered
	}
	if err = p.mgr.db.StateStore.SetMembership(ctx, roomID, userID, content.Membership); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to record a membership")
	}
	if content.Membership == event.MembershipJoin || content.Membership == event.MembershipInvite {
		return member
	}
	return notMember
}

// joinedRoom reports whether heirloom's state store has the puppet joined to the room.
func (p *Puppet) joinedRoom(ctx context.Context, roomID id.RoomID) bool {
	membership, err := p.mgr.db.StateStore.GetMembership(ctx, roomID, p.UserID)
	return err == nil && membership == event.MembershipJoin
}

// senderVerdict says whether a room key's sender could have had it: a member of the room it names.
// While the puppet is only invited, the homeserver answers no membership question; the inviter
// (whose invite heirloom recorded) is known to be a member, anyone else is unknownMember. A
// question the homeserver did not answer is unanswered, joined or not: never "not a member".
func (p *Puppet) senderVerdict(ctx context.Context, roomID id.RoomID, sender id.UserID) memberVerdict {
	verdict := p.membershipOf(ctx, roomID, sender)
	if verdict != unknownMember || p.joinedRoom(ctx, roomID) {
		if verdict == unknownMember {
			return notMember
		}
		return verdict
	}
	if inv, err := p.mgr.db.GetInvite(ctx, p.UserID, roomID); err == nil && inv != nil && inv.Inviter == sender {
		return member
	}
	return unknownMember
}

// ReleaseHeldKeys stores the room keys held for the room until the puppet joined it, whose
// senders the homeserver now says are members (each under every rule of a room key). The
// transaction stream calls it when it sees the puppet's join.
func (p *Puppet) ReleaseHeldKeys(ctx context.Context, roomID id.RoomID) {
	keys := p.mgr.held.take(p.UserID, roomID)
	if len(keys) == 0 {
		p.mgr.heldRetries.done(puppetRoom{p.UserID, roomID})
		return
	}
	zerolog.Ctx(ctx).Info().Stringer("room_id", roomID).Int("count", len(keys)).
		Msg("Checking the room keys held until the puppet joined")
	for i := range keys {
		p.receiveRoomKey(ctx, keys[i].event(), &keys[i].content)
	}
	if !p.mgr.held.holdsFor(p.UserID, roomID) {
		p.mgr.heldRetries.done(puppetRoom{p.UserID, roomID})
	}
}
