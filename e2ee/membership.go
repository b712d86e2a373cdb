package e2ee

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
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
	case err != nil:
		// 403: the puppet may not read the room's state (it is only invited, or not in the room).
		if !errors.As(err, &httpErr) || !httpErr.IsStatus(http.StatusForbidden) {
			zerolog.Ctx(ctx).Warn().Err(err).Stringer("user_id", userID).Msg("The homeserver did not say whether the user is in the room")
		}
		return unknownMember
	}
	if err = p.mgr.db.StateStore.SetMembership(ctx, roomID, userID, content.Membership); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to record a membership")
	}
	if content.Membership == event.MembershipJoin || content.Membership == event.MembershipInvite {
		return member
	}
	return notMember
}

// inRoom reports whether the puppet is joined to or invited into the room (membershipOf).
func (p *Puppet) inRoom(ctx context.Context, roomID id.RoomID) bool {
	return p.membershipOf(ctx, roomID, p.UserID) == member
}

// joinedRoom reports whether heirloom's state store has the puppet joined to the room.
func (p *Puppet) joinedRoom(ctx context.Context, roomID id.RoomID) bool {
	membership, err := p.mgr.db.StateStore.GetMembership(ctx, roomID, p.UserID)
	return err == nil && membership == event.MembershipJoin
}

// senderVerdict says whether a room key's sender could have had it: a member of the room it names.
// While the puppet is only invited, the homeserver answers no membership question; the inviter
// (whose invite heirloom recorded) is known to be a member, anyone else is unknownMember.
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

// Bounds of the room keys held until a join: per sender in a puppet's room (so that one sender
// cannot crowd out the others), per puppet and room, and in all.
const (
	heldKeysPerSender = 16
	heldKeysPerRoom   = 256
	heldKeysTotal     = 4096
	heldKeyMaxAge     = 24 * time.Hour
)

// heldKey is a room key a puppet received for a room it is only invited to, from a sender whose
// membership nobody can tell it yet.
type heldKey struct {
	evt     *crypto.DecryptedOlmEvent
	content *RoomKeyContent
	at      time.Time
}

type puppetRoom struct {
	puppet id.UserID
	room   id.RoomID
}

// heldKeys keeps such keys in memory until the puppet joins the room, when its sender's
// membership can be asked again (ReleaseHeldKeys): the key of a message sent while the puppet is
// invited is sent only then, and would otherwise be lost. A restart forgets them, as it forgets a
// message the homeserver never delivered.
type heldKeys struct {
	mu    sync.Mutex
	rooms map[puppetRoom][]heldKey
	total int
}

// hold keeps a key until the puppet joins; it reports false when the bounds are reached.
func (h *heldKeys) hold(puppet id.UserID, evt *crypto.DecryptedOlmEvent, content *RoomKeyContent) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	key := puppetRoom{puppet, content.RoomID}
	if h.total >= heldKeysTotal {
		h.dropStale() // keys of rooms a puppet never joined
	}
	if h.total >= heldKeysTotal || len(h.rooms[key]) >= heldKeysPerRoom {
		return false
	}
	fromSender := 0
	for _, k := range h.rooms[key] {
		if k.evt.Sender == evt.Sender {
			fromSender++
		}
	}
	if fromSender >= heldKeysPerSender {
		return false
	}
	if h.rooms == nil {
		h.rooms = map[puppetRoom][]heldKey{}
	}
	h.rooms[key] = append(h.rooms[key], heldKey{evt: evt, content: content, at: time.Now()})
	h.total++
	return true
}

// dropStale forgets every key held for longer than heldKeyMaxAge.
func (h *heldKeys) dropStale() {
	for key, keys := range h.rooms {
		fresh := keys[:0]
		for _, k := range keys {
			if time.Since(k.at) < heldKeyMaxAge {
				fresh = append(fresh, k)
			}
		}
		h.total -= len(keys) - len(fresh)
		if len(fresh) == 0 {
			delete(h.rooms, key)
		} else {
			h.rooms[key] = fresh
		}
	}
}

// take removes and returns the keys held for the puppet in the room that are not too old.
func (h *heldKeys) take(puppet id.UserID, roomID id.RoomID) []heldKey {
	h.mu.Lock()
	defer h.mu.Unlock()
	key := puppetRoom{puppet, roomID}
	keys := h.rooms[key]
	delete(h.rooms, key)
	h.total -= len(keys)
	fresh := keys[:0]
	for _, k := range keys {
		if time.Since(k.at) < heldKeyMaxAge {
			fresh = append(fresh, k)
		}
	}
	return fresh
}

// ReleaseHeldKeys stores the room keys held for the room until the puppet joined it, whose
// senders the homeserver now says are members (each under every rule of a room key). The
// transaction stream calls it when it sees the puppet's join.
func (p *Puppet) ReleaseHeldKeys(ctx context.Context, roomID id.RoomID) {
	keys := p.mgr.held.take(p.UserID, roomID)
	if len(keys) == 0 {
		return
	}
	zerolog.Ctx(ctx).Info().Stringer("room_id", roomID).Int("count", len(keys)).
		Msg("Checking the room keys held until the puppet joined")
	for _, k := range keys {
		p.receiveRoomKey(ctx, k.evt, k.content)
	}
}
