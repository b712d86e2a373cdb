package e2e

// In gateway mode the bridge is one principal: a bundle any of its users builds for an invite
// carries the room's shareable sessions any of them holds, with the inviting user as the one who
// shared them.

import (
	"fmt"
	"testing"
	"time"
)

// TestGatewayGhostSharesWhatTheBridgeCanRead: a js-sdk user shares the room's history with the
// bridge's bot as she invites it (MSC4268) and goes on talking; a ghost she invites without
// history joins later, and invites a second js-sdk user. The bundle the ghost's device sends
// carries what the bot holds: the second user decrypts the messages from before the bot joined
// (keys the bot took from her bundle) and from before the ghost joined (keys the bot got live),
// each as shared by the ghost, beside those the ghost holds itself (the session after its join,
// which the bot holds too: one entry for both copies).
func TestGatewayGhostSharesWhatTheBridgeCanRead(t *testing.T) {
	gw, gwURL := startGateway(t, "gw-js", nil)
	b := startJSBridge(t, jsBridgeOpts{Homeserver: gwURL, Registration: &e.jsBridgeGWReg})
	eventually(t, 30*time.Second, "the bridge bot's device", func() (bool, string) { return gw.deviceOf(t, b.BotID) != "", "" })
	u := newJSUser(t, true)
	var room struct {
		RoomID string `json:"room_id"`
	}
	e.peer(t, "createRoom", map[string]any{"user": u.UserID, "history_visibility": "shared"}, &room)
	roomID := room.RoomID
	beforeBot := "before the bridge came " + name("")
	jsSendID(t, u, roomID, beforeBot)

	// The user invites the bot; js-sdk shares the room's history with it first.
	e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": roomID, "target": b.BotID}, nil)
	b.waitEvent(t, map[string]any{"room_id": roomID, "type": "m.room.member", "state_key": b.BotID, "membership": "invite"})
	b.call(t, "join", map[string]any{"user": b.BotID, "room_id": roomID}, nil)
	e.peer(t, "waitForMembership", map[string]any{"user": u.UserID, "room_id": roomID, "target": b.BotID, "membership": "join"}, nil)
	beforeGhost := "before the ghost came " + name("")
	requireBridgeGot(t, b, roomID, beforeGhost, jsSendID(t, u, roomID, beforeGhost), u)

	// A ghost invited without history joins, speaks, and hears the user.
	ghost := "@" + name("jsg_heir") + ":" + domain
	b.call(t, "register", map[string]any{"user": ghost}, nil)
	e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": roomID, "target": ghost, "share_history": false}, nil)
	b.waitEvent(t, map[string]any{"room_id": roomID, "type": "m.room.member", "state_key": ghost, "membership": "invite"})
	b.call(t, "join", map[string]any{"user": ghost, "room_id": roomID}, nil)
	e.peer(t, "waitForMembership", map[string]any{"user": u.UserID, "room_id": roomID, "target": ghost, "membership": "join"}, nil)
	ghostLine := "the ghost speaks " + name("")
	var sent struct {
		EventID string `json:"event_id"`
	}
	b.call(t, "sendText", map[string]any{"user": ghost, "room_id": roomID, "body": ghostLine}, &sent)
	jsWaitDecrypted(t, u, roomID, map[string]any{"body": ghostLine})
	afterGhost := "after the ghost came " + name("")
	requireBridgeGot(t, b, roomID, afterGhost, jsSendID(t, u, roomID, afterGhost), u)
	if held := ghostHolds(t, gw, ghost, roomID); held == 0 {
		t.Fatalf("%s holds no room key of %s: the bundle would be the bot's alone", ghost, roomID)
	}

	// The ghost invites a second js-sdk user, who reads what the bridge could read.
	u2 := newJSUser(t, true)
	mark := gw.mark(t)
	b.call(t, "invite", map[string]any{"user": ghost, "room_id": roomID, "target": u2.UserID}, nil)
	jsAcceptInvite(t, u2, roomID)
	want := []string{beforeBot, beforeGhost, ghostLine, afterGhost}
	var read map[string]jsMessage
	eventually(t, 60*time.Second, u2.UserID+" to read the room's history", func() (bool, string) {
		read = decryptedBodies(jsMessages(t, u2, roomID, len(want), 5000))
		for _, body := range want {
			if _, ok := read[body]; !ok {
				return false, fmt.Sprintf("%q not decrypted; decrypted: %v", body, read)
			}
		}
		return true, ""
	})
	for _, body := range want {
		sender := u.UserID
		if body == ghostLine {
			sender = ghost
		}
		if m := read[body]; m.Sender != sender || m.Forwarder != ghost {
			t.Fatalf("%s read %q as %+v, want it from %s with keys shared by %s", u2.UserID, body, m, sender, ghost)
		}
	}
	// What an operator reads: whose keys went into the bundle.
	mark.wait(t, time.Second, "the pooled bundle", msgIs("Built a bundle of what the bridge's users hold", "room_id", roomID))
}

// ghostHolds is how many room keys heirloom holds for the bridge user in the room.
func ghostHolds(t testing.TB, h *instance, userID, roomID string) int {
	t.Helper()
	var n int
	if err := h.db(t).QueryRow(`SELECT COUNT(*) FROM crypto_megolm_inbound_session WHERE account_id=? AND room_id=? AND session IS NOT NULL`,
		userID, roomID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
