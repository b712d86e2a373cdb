package e2ee

import (
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Why a room's outbound megolm session rotates (rotationReason).
const (
	rotateExpired      = "expired"
	rotateVisibility   = "history visibility changed"
	rotateStateChanged = "room state changed"
	rotateMemberLeft   = "member left"
)

// RoomChange is a state change after which no outbound session created before it may be used
// again: a member leaving, being kicked or banned (MSC4268: a departed member may hold any
// existing session through a bundle, whether or not it was shared with them), or the room's
// history visibility changing.
type RoomChange struct {
	EventID id.EventID
	At      time.Time
	// Departed is the member who left or was banned; empty for a visibility change.
	Departed id.UserID
}

// RoomChangeOf returns the change a state event makes, if it is one. previous is the room's
// history visibility as heirloom knew it before the event: a visibility event is a change if it
// differs from that, and not if it repeats it (the echo of heirloom's own change) or if heirloom
// knew none (nil: the first visibility it learns of a room).
func RoomChangeOf(evt *event.Event, previous *event.HistoryVisibilityEventContent) (RoomChange, bool) {
	if evt.StateKey == nil {
		return RoomChange{}, false
	}
	change := RoomChange{EventID: evt.ID, At: time.UnixMilli(evt.Timestamp)}
	switch evt.Type.Type {
	case event.StateMember.Type:
		if m := evt.Content.AsMember().Membership; m == event.MembershipLeave || m == event.MembershipBan {
			change.Departed = id.UserID(*evt.StateKey)
			return change, true
		}
	case event.StateHistoryVisibility.Type:
		content, ok := evt.Content.Parsed.(*event.HistoryVisibilityEventContent)
		if ok && previous != nil && previous.HistoryVisibility != content.HistoryVisibility {
			return change, true
		}
	}
	return RoomChange{}, false
}

// rotationInput is what rotationReason decides on: the room's current outbound session and what
// is known of the room now.
type rotationInput struct {
	// Created is when the session was created.
	Created time.Time
	// Expired reports whether the session reached the room's rotation period or message count.
	Expired bool
	// SharedHistory is the history flag the session was created with (nil: not recorded).
	SharedHistory *bool
	// SharesHistory reports whether the room's history visibility shares history now.
	SharesHistory bool
	// ChangedBefore is the room's rotation mark (database.RotateAfter): the latest RoomChange the
	// transaction stream or the API saw, as the bound sessions created before it must rotate by.
	ChangedBefore time.Time
	// Departures are the changes in the room's member list at the time of the send.
	Departures []RoomChange
	// Known holds the departures already in the member list the session was created from: those
	// members never held it, so they do not rotate it. Nil when the session was created before the
	// machine was loaded (a restart): then no departure can be shown to be known.
	Known map[id.EventID]struct{}
	// Self is the puppet: its own departure rotates nothing.
	Self id.UserID
}

// rotationReason says why a room's outbound megolm session must not be used again, or "" if it
// may: it expired, the history flag it was created with is not the room's any more, a state change
// recorded for the room came after it was created, or a member left since it was created.
func rotationReason(in rotationInput) string {
	switch {
	case in.Expired:
		return rotateExpired
	case in.SharedHistory == nil || *in.SharedHistory != in.SharesHistory:
		return rotateVisibility
	case in.Created.Before(in.ChangedBefore):
		return rotateStateChanged
	}
	for _, d := range in.Departures {
		if _, known := in.Known[d.EventID]; known || d.Departed == "" || d.Departed == in.Self {
			continue
		}
		// Decided by event, not by time: a departure's origin_server_ts is whatever its server
		// says, so a backdated leave must still rotate, and a session whose member list is unknown
		// (created before a restart) rotates once for the departures it may not have seen.
		return rotateMemberLeft
	}
	return ""
}

// departuresOf returns the departures in a room's member list.
func departuresOf(members []*event.Event) []RoomChange {
	var out []RoomChange
	for _, evt := range members {
		if change, ok := RoomChangeOf(evt, nil); ok && change.Departed != "" {
			out = append(out, change)
		}
	}
	return out
}
