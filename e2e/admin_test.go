package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// heirloom's bot answers admins in an encrypted DM (package admin).

const (
	botRefusal  = "Sorry, I only answer the administrators of this heirloom bridge, so I will not reply to you again."
	botGreeting = "Hello! I am heirloom's bot. Send help for the list of commands."
)

// botMessage is a message of the bot as a js-sdk user's client shows it.
type botMessage struct {
	EventID      string `json:"event_id"`
	Sender       string `json:"sender"`
	Body         string `json:"body"`
	Encrypted    bool   `json:"encrypted"`
	Decrypted    bool   `json:"decrypted"`
	ShieldColour string `json:"shield_colour"`
	ShieldReason string `json:"shield_reason"`
}

// requireFromSignedDevice checks that the client decrypted the message and shows it with no
// warning: sent from a device its owner's identity signs.
func requireFromSignedDevice(t *testing.T, m botMessage) {
	t.Helper()
	if !m.Encrypted || !m.Decrypted || m.ShieldColour != "NONE" {
		t.Fatalf("the bot's message %q: encrypted=%t decrypted=%t shield %s %s, want decrypted with no shield",
			m.Body, m.Encrypted, m.Decrypted, m.ShieldColour, m.ShieldReason)
	}
}

// botReply waits for the bot's next message in the room after the event.
func botReply(t *testing.T, u jsUser, roomID, bot, after string) botMessage {
	t.Helper()
	var m botMessage
	e.peer(t, "waitForMessage", map[string]any{"user": u.UserID, "room_id": roomID, "sender": bot, "after_event_id": after,
		"timeout_ms": 60000}, &m)
	return m
}

// ask sends the admin's command and returns the bot's answer, checked to come encrypted from the
// bot's signed device and to contain every want.
func ask(t *testing.T, admin jsUser, roomID, bot, command string, want ...string) string {
	t.Helper()
	var sent struct {
		EventID string `json:"event_id"`
	}
	e.peer(t, "send", map[string]any{"user": admin.UserID, "room_id": roomID, "body": command}, &sent)
	reply := botReply(t, admin, roomID, bot, sent.EventID)
	requireFromSignedDevice(t, reply)
	for _, w := range want {
		if !strings.Contains(reply.Body, w) {
			t.Fatalf("the bot's answer to %q lacks %q:\n%s", command, w, reply.Body)
		}
	}
	return reply.Body
}

// waitBotLeft waits until the bot has left (or rejected) the room and returns its member event.
func waitBotLeft(t *testing.T, u jsUser, roomID, bot string) (reason string) {
	t.Helper()
	e.peer(t, "waitForMembership", map[string]any{"user": u.UserID, "room_id": roomID, "target": bot, "membership": "leave",
		"timeout_ms": 30000}, nil)
	var ev struct {
		Membership string `json:"membership"`
		Sender     string `json:"sender"`
		Reason     string `json:"reason"`
	}
	e.peer(t, "memberEvent", map[string]any{"user": u.UserID, "room_id": roomID, "target": bot}, &ev)
	if ev.Sender != bot {
		t.Fatalf("the bot's leave in %s was sent by %s", roomID, ev.Sender)
	}
	return ev.Reason
}

// An admin talks to heirloom's bot in an encrypted DM: every command answers correctly, from the
// bot's own device, which the admin's client sees signed by its owner; someone else is refused once
// and ignored after.
func TestAdminBot(t *testing.T) {
	var status statusResponse
	apiOK(t, "GET", "/status", nil, &status)
	if status.Bot == nil || status.Bot.DeviceID == "" || status.Bot.MasterKey == "" {
		t.Fatalf("GET /status names no bot device: %+v", status.Bot)
	}
	bot := status.Bot.UserID
	var admin jsUser
	e.peer(t, "register", map[string]any{"username": name(adminPrefix), "cross_signing": true}, &admin)
	var dm struct {
		RoomID string `json:"room_id"`
	}
	e.peer(t, "createRoom", map[string]any{"user": admin.UserID, "history_visibility": "shared", "invite": []string{bot}}, &dm)
	e.peer(t, "waitForMembership", map[string]any{"user": admin.UserID, "room_id": dm.RoomID, "target": bot, "membership": "join",
		"timeout_ms": 30000}, nil)
	var greeting botMessage
	e.peer(t, "waitForMessage", map[string]any{"user": admin.UserID, "room_id": dm.RoomID, "sender": bot, "body": botGreeting,
		"timeout_ms": 60000}, &greeting)
	requireFromSignedDevice(t, greeting)
	requireSignedByOwner(t, admin, puppetIdentity{UserID: bot, DeviceID: status.Bot.DeviceID, MasterKey: status.Bot.MasterKey})

	ask(t, admin, dm.RoomID, bot, "help", "- status:", "- puppet <user>:", "- bundles <room>:",
		"- identity <user> [confirm <master key>]:", "- reshare <room> <user> [puppet]:", "- retry <room> [puppet]:")

	// The bot loses the admin's room key, as when Synapse skips a push (the bot, the appservice's
	// sender, cannot sync its inbox): it asks the admin's device for it and answers all the same.
	res, err := e.dbWritable(t).Exec(`DELETE FROM crypto_megolm_inbound_session WHERE account_id=? AND room_id=?`, bot, dm.RoomID)
	if n, _ := res.RowsAffected(); err != nil || n == 0 {
		t.Fatalf("deleting the bot's copy of the admin's room key: %v (%d rows)", err, n)
	}
	mark := e.mark(t)
	ask(t, admin, dm.RoomID, bot, "help", "- status:")
	mark.wait(t, time.Second, "the bot's request for the lost key", msgIs("Asked the sender's device for a room key the homeserver did not deliver"))
	mark.wait(t, time.Second, "the forwarded key", msgIs("Stored the room key its sender's device forwarded", "room_id", dm.RoomID))
	apiOK(t, "GET", "/status", nil, &status)
	ask(t, admin, dm.RoomID, bot, "status", "homeserver reachable: yes", fmt.Sprintf("puppets: %d\n", status.Puppets),
		"bundles received:", "devices not restored: none")

	// A puppet's room with history, and a user it invited without sharing it.
	p := newPuppet(t)
	x := newJSUser(t, true)
	roomID := puppetCreateRoom(t, p, "shared")
	puppetSend(t, p, roomID, "history the reshare brings")
	apiOK(t, "POST", "/puppets/"+p.UserID+"/rooms/"+roomID+"/invite", map[string]any{"user_id": x.UserID, "share_history": false}, nil)
	ask(t, admin, dm.RoomID, bot, "puppet "+p.UserID, "device: "+p.DeviceID, "master key: "+p.MasterKey, "- "+roomID,
		"last activity: 20")
	ask(t, admin, dm.RoomID, bot, "bundles "+roomID, "invite", "skipped", "history sharing was not requested")
	ask(t, admin, dm.RoomID, bot, "reshare "+roomID+" "+x.UserID, "Reshared", "delivered", "device "+x.DeviceID+": delivered")
	e.peer(t, "join", map[string]any{"user": x.UserID, "room_id": roomID}, nil)
	jsDecrypted(t, x, "", roomID, "history the reshare brings")
	ask(t, admin, dm.RoomID, bot, "bundles "+roomID, "reshare", "device "+x.DeviceID+": delivered")

	ask(t, admin, dm.RoomID, bot, "identity "+x.UserID, "master key: "+x.MasterKey, "changed: no")
	var reset struct {
		MasterKey string `json:"master_key"`
	}
	e.peer(t, "resetCrossSigning", map[string]any{"user": x.UserID}, &reset)
	ask(t, admin, dm.RoomID, bot, "identity "+x.UserID, "master key: "+reset.MasterKey, "first seen: "+x.MasterKey, "changed: yes")
	ask(t, admin, dm.RoomID, bot, "identity "+x.UserID+" confirm "+x.MasterKey, "Not confirmed")
	ask(t, admin, dm.RoomID, bot, "identity "+x.UserID+" confirm "+reset.MasterKey, "Confirmed", "changed: no")
	var ident struct {
		Changed bool `json:"changed"`
	}
	apiOK(t, "GET", "/identities/"+x.UserID, nil, &ident)
	if ident.Changed {
		t.Fatal("the identities API still sees the identity changed after the bot confirmed it")
	}
	ask(t, admin, dm.RoomID, bot, "retry "+roomID, "No received bundle in "+roomID+" failed or waits for a retry.")
	ask(t, admin, dm.RoomID, bot, "frobnicate", `I do not know the command "frobnicate"`)

	// Someone who is not an admin invites the bot: one refusal, then silence.
	stranger := newJSUser(t, true)
	for i, want := range []string{botRefusal, ""} {
		var room struct {
			RoomID string `json:"room_id"`
		}
		e.peer(t, "createRoom", map[string]any{"user": stranger.UserID, "history_visibility": "shared", "invite": []string{bot}}, &room)
		if reason := waitBotLeft(t, stranger, room.RoomID, bot); reason != want {
			t.Fatalf("invite %d from a stranger: the bot rejected it with %q, want %q", i+1, reason, want)
		}
	}
	// The admin's room becomes a group room: there the bot hears only what is addressed to it.
	// Someone who is not an admin addresses it: one refusal, then silence.
	member := newJSUser(t, true)
	e.peer(t, "invite", map[string]any{"user": admin.UserID, "room_id": dm.RoomID, "target": member.UserID, "share_history": false}, nil)
	e.peer(t, "join", map[string]any{"user": member.UserID, "room_id": dm.RoomID}, nil)
	var first string
	for _, said := range []struct {
		who  jsUser
		body string
	}{
		{member, "status, please"}, {member, "!heirloom status"}, {member, "!heirloom status"}, {admin, "hello everyone"},
	} {
		var sent struct {
			EventID string `json:"event_id"`
		}
		e.peer(t, "send", map[string]any{"user": said.who.UserID, "room_id": dm.RoomID, "body": said.body}, &sent)
		if first == "" {
			first = sent.EventID
		}
	}
	// The member's messages are handled first (the refusal may come after a command sent at once,
	// on a loaded machine); the bot answers in order, so once the admin's next command is
	// answered, every message before it has been handled.
	e.peer(t, "waitForMessage", map[string]any{"user": member.UserID, "room_id": dm.RoomID, "sender": bot, "body": botRefusal,
		"after_event_id": first, "timeout_ms": 30000}, nil)
	help := ask(t, admin, dm.RoomID, bot, "heirloom: help", "Commands:")
	var after struct {
		Messages []botMessage `json:"messages"`
	}
	e.peer(t, "messages", map[string]any{"user": member.UserID, "room_id": dm.RoomID, "timeout_ms": 1000}, &after)
	var answers []string
	seen := false
	for _, m := range after.Messages {
		if m.EventID == first {
			seen = true
		} else if seen && m.Sender == bot {
			requireFromSignedDevice(t, m)
			answers = append(answers, m.Body)
		}
	}
	if want := []string{botRefusal, help}; !seen || fmt.Sprint(answers) != fmt.Sprint(want) {
		t.Fatalf("after the member's first message, the bot said %q, want %q", answers, want)
	}
}
