package e2ee

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func TestRotationReason(t *testing.T) {
	created := time.UnixMilli(1_700_000_000_000)
	yes, no := true, false
	const self = id.UserID("@heirloom_p:hs")
	leave := func(evtID id.EventID, who id.UserID, at time.Time) RoomChange {
		return RoomChange{EventID: evtID, At: at, Departed: who}
	}
	for _, tc := range []struct {
		name string
		in   rotationInput
		want string
	}{
		{"fresh session, nothing changed", rotationInput{Created: created, SharedHistory: &yes, SharesHistory: true}, ""},
		{"expired", rotationInput{Created: created, Expired: true, SharedHistory: &yes, SharesHistory: true}, rotateExpired},
		{"history flag not recorded", rotationInput{Created: created, SharesHistory: true}, rotateVisibility},
		{"history became shared", rotationInput{Created: created, SharedHistory: &no, SharesHistory: true}, rotateVisibility},
		{"history stopped being shared", rotationInput{Created: created, SharedHistory: &yes, SharesHistory: false}, rotateVisibility},
		{"unshared all along", rotationInput{Created: created, SharedHistory: &no, SharesHistory: false}, ""},
		{"state changed after creation", rotationInput{Created: created, SharedHistory: &yes, SharesHistory: true,
			ChangedBefore: created.Add(time.Millisecond)}, rotateStateChanged},
		{"state changed before creation", rotationInput{Created: created, SharedHistory: &yes, SharesHistory: true,
			ChangedBefore: created}, ""},
		{"member left after creation", rotationInput{Created: created, SharedHistory: &yes, SharesHistory: true,
			Departures: []RoomChange{leave("$l", "@bob:hs", created.Add(time.Minute))}}, rotateMemberLeft},
		{"member left within the clock slack before creation", rotationInput{Created: created, SharedHistory: &yes, SharesHistory: true,
			Departures: []RoomChange{leave("$l", "@bob:hs", created.Add(-500*time.Millisecond))}}, rotateMemberLeft},
		{"a departure the session's member list did not show, however old its timestamp", rotationInput{Created: created,
			SharedHistory: &yes, SharesHistory: true, Known: map[id.EventID]struct{}{"$other": {}},
			Departures: []RoomChange{leave("$l", "@bob:hs", created.Add(-time.Hour))}}, rotateMemberLeft},
		{"a session from before a restart, whose member list is not known", rotationInput{Created: created,
			SharedHistory: &yes, SharesHistory: true,
			Departures: []RoomChange{leave("$l", "@bob:hs", created.Add(-time.Hour))}}, rotateMemberLeft},
		{"departure already listed at creation", rotationInput{Created: created, SharedHistory: &yes, SharesHistory: true,
			Departures: []RoomChange{leave("$l", "@bob:hs", created.Add(time.Minute))},
			Known:      map[id.EventID]struct{}{"$l": {}}}, ""},
		{"the puppet's own departure", rotationInput{Created: created, SharedHistory: &yes, SharesHistory: true, Self: self,
			Departures: []RoomChange{leave("$l", self, created.Add(time.Minute))}}, ""},
		{"a visibility change is not a departure", rotationInput{Created: created, SharedHistory: &yes, SharesHistory: true,
			Departures: []RoomChange{{EventID: "$v", At: created.Add(time.Minute)}}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, rotationReason(tc.in))
		})
	}
}

func TestRoomChangeOf(t *testing.T) {
	stateKey := func(s string) *string { return &s }
	member := func(who, membership string) *event.Event {
		return &event.Event{Type: event.StateMember, StateKey: stateKey(who), ID: "$m", Timestamp: 5,
			Content: event.Content{Parsed: &event.MemberEventContent{Membership: event.Membership(membership)}}}
	}
	visibility := func(v event.HistoryVisibility) *event.Event {
		return &event.Event{Type: event.StateHistoryVisibility, StateKey: stateKey(""), ID: "$v", Timestamp: 7,
			Content: event.Content{Parsed: &event.HistoryVisibilityEventContent{HistoryVisibility: v}}}
	}
	known := func(v event.HistoryVisibility) *event.HistoryVisibilityEventContent {
		return &event.HistoryVisibilityEventContent{HistoryVisibility: v}
	}
	for _, tc := range []struct {
		name     string
		evt      *event.Event
		previous *event.HistoryVisibilityEventContent
		want     *RoomChange
	}{
		{"leave", member("@bob:hs", "leave"), nil, &RoomChange{EventID: "$m", At: time.UnixMilli(5), Departed: "@bob:hs"}},
		{"ban", member("@bob:hs", "ban"), nil, &RoomChange{EventID: "$m", At: time.UnixMilli(5), Departed: "@bob:hs"}},
		{"join", member("@bob:hs", "join"), nil, nil},
		{"invite", member("@bob:hs", "invite"), nil, nil},
		{"visibility changed", visibility(event.HistoryVisibilityJoined), known(event.HistoryVisibilityShared),
			&RoomChange{EventID: "$v", At: time.UnixMilli(7)}},
		{"visibility changed between two unshared values", visibility(event.HistoryVisibilityInvited), known(event.HistoryVisibilityJoined),
			&RoomChange{EventID: "$v", At: time.UnixMilli(7)}},
		{"visibility repeated (an echo)", visibility(event.HistoryVisibilityShared), known(event.HistoryVisibilityShared), nil},
		{"first visibility learned", visibility(event.HistoryVisibilityShared), nil, nil},
		{"not a state event", &event.Event{Type: event.EventMessage, ID: "$x"}, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := RoomChangeOf(tc.evt, tc.previous)
			if tc.want == nil {
				require.False(t, ok, "no change: %+v", got)
				return
			}
			require.True(t, ok)
			require.Equal(t, *tc.want, got)
		})
	}
}
