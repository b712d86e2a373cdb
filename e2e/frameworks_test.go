package e2e

// Gateway mode with each common appservice framework, as it is: heisenbridge on mautrix-python
// (TestGatewayHeisenbridge, TestGatewayHeisenbridgeDM), a bridge on matrix-appservice-bridge 12.0.1
// (which runs on @vector-im/matrix-bot-sdk) and one on the upstream matrix-bot-sdk 0.8.0, which
// registers its ghosts the way bridges did before MSC4190. Each framework's tests run on a gateway
// profile of their own and in parallel with each other's.

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// framework is an appservice framework behind heirloom's gateway, with a test bridge on it.
type framework struct {
	profile string              // the gateway profile: Synapse loads the registration heirloom generated
	script  string              // the test bridge in interop/bridge
	reg     *bridgeRegistration // the bridge's own registration
	prefix  string              // its ghosts' localpart prefix
}

// TestGatewayMatrixAppserviceBridge: a bridge on matrix-appservice-bridge 12.0.1, unmodified,
// behind heirloom: its ghosts in a js-sdk user's encrypted room and in an encrypted DM.
func TestGatewayMatrixAppserviceBridge(t *testing.T) {
	t.Parallel()
	runFramework(t, framework{profile: "gw-js", script: mabBridge, reg: &e.jsBridgeGWReg, prefix: "jsg_"})
}

// TestGatewayMatrixBotSDK: a bridge on the upstream matrix-bot-sdk 0.8.0, unmodified, behind
// heirloom. Its Intent.ensureRegistered registers ghosts without inhibit_login, which Synapse
// refuses to an appservice with MSC4190 on: heirloom absorbs it, and the bridge never notices.
func TestGatewayMatrixBotSDK(t *testing.T) {
	t.Parallel()
	runFramework(t, framework{profile: "gw-bs", script: botsdkBridge, reg: &e.botsdkGWReg, prefix: "bsg_"})
}

func runFramework(t *testing.T, fw framework) {
	gw, gwURL := startGateway(t, fw.profile, nil)
	b := startJSBridge(t, jsBridgeOpts{Script: fw.script, Homeserver: gwURL, Registration: fw.reg})
	t.Run("encrypted room", func(t *testing.T) { ghostInEncryptedRoom(t, gw, b, fw.prefix) })
	t.Run("encrypted DM", func(t *testing.T) { ghostInEncryptedDM(t, gw, b, fw.prefix) })
}

// ghostInEncryptedRoom: a ghost registered the framework's way joins a js-sdk user's encrypted
// room, speaks (the user decrypts it from a device signed by its owner), hears the user's
// encrypted answer in plaintext, and invites a second js-sdk user, who reads what was said before.
func ghostInEncryptedRoom(t *testing.T, gw *instance, b *jsBridge, prefix string) {
	u := newJSUser(t, true)
	ghost := "@" + name(prefix+"room") + ":" + domain
	b.call(t, "register", map[string]any{"user": ghost, "displayname": "Bridged ghost"}, nil)
	var room struct {
		RoomID string `json:"room_id"`
	}
	e.peer(t, "createRoom", map[string]any{"user": u.UserID, "history_visibility": "shared"}, &room)
	e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": room.RoomID, "target": ghost}, nil)
	b.waitEvent(t, map[string]any{"room_id": room.RoomID, "type": "m.room.member", "state_key": ghost, "membership": "invite"})
	b.call(t, "join", map[string]any{"user": ghost, "room_id": room.RoomID}, nil)
	e.peer(t, "waitForMembership", map[string]any{"user": u.UserID, "room_id": room.RoomID, "target": ghost, "membership": "join"}, nil)

	text := "from the ghost " + name("")
	var sent struct {
		EventID string `json:"event_id"`
	}
	b.call(t, "sendText", map[string]any{"user": ghost, "room_id": room.RoomID, "body": text}, &sent)
	if m := jsWaitDecrypted(t, u, room.RoomID, map[string]any{"body": text}); m.Sender != ghost || m.EventID != sent.EventID {
		t.Fatalf("the ghost's text arrived as %+v, want event %s from %s", m, sent.EventID, ghost)
	}
	requireBridgeDeviceSigned(t, u, gw, ghost)

	reply := "to the ghost " + name("")
	replyID := jsSendID(t, u, room.RoomID, reply)
	requireBridgeGot(t, b, room.RoomID, reply, replyID, u)

	u2 := newJSUser(t, true)
	b.call(t, "invite", map[string]any{"user": ghost, "room_id": room.RoomID, "target": u2.UserID}, nil)
	jsAcceptInvite(t, u2, room.RoomID)
	var read map[string]jsMessage
	eventually(t, 60*time.Second, u2.UserID+" to read the room's history", func() (bool, string) {
		read = decryptedBodies(jsMessages(t, u2, room.RoomID, 2, 5000))
		_, a := read[text]
		_, r := read[reply]
		return a && r, fmt.Sprintf("%v", read)
	})
	if m := read[text]; m.Sender != ghost || m.Forwarder != ghost {
		t.Fatalf("%s read the ghost's text as %+v, want it from %s with keys shared by %s", u2.UserID, m, ghost, ghost)
	}
	if m := read[reply]; m.Sender != u.UserID || m.Forwarder != ghost {
		t.Fatalf("%s read the reply as %+v, want it from %s with keys shared by %s", u2.UserID, m, u.UserID, ghost)
	}
}

// ghostInEncryptedDM: a js-sdk user starts a chat with a ghost as Element does (an encrypted room,
// is_direct, the ghost invited); the bridge accepts, its ghost joins, receives the user's messages
// decrypted from the first one on, and answers; the user decrypts the answers.
func ghostInEncryptedDM(t *testing.T, gw *instance, b *jsBridge, prefix string) {
	u := newJSUser(t, true)
	ghost := "@" + name(prefix+"dm") + ":" + domain
	b.call(t, "register", map[string]any{"user": ghost}, nil)
	var dm struct {
		RoomID string `json:"room_id"`
	}
	e.peer(t, "createRoom", map[string]any{"user": u.UserID, "history_visibility": "shared", "preset": "trusted_private_chat",
		"is_direct": true, "invite": []string{ghost}}, &dm)
	inv := b.waitEvent(t, map[string]any{"room_id": dm.RoomID, "type": "m.room.member", "state_key": ghost, "membership": "invite"})
	if inv.Event.Sender != u.UserID || !strings.Contains(string(inv.Event.Content), `"is_direct":true`) {
		t.Fatalf("the bridge saw the invite as %s from %s, want a direct invite from %s", inv.Event.Content, inv.Event.Sender, u.UserID)
	}
	b.call(t, "join", map[string]any{"user": ghost, "room_id": dm.RoomID}, nil)
	e.peer(t, "waitForMembership", map[string]any{"user": u.UserID, "room_id": dm.RoomID, "target": ghost, "membership": "join"}, nil)

	for i := range 2 {
		hello := fmt.Sprintf("hello ghost, %d %s", i, name(""))
		helloID := jsSendID(t, u, dm.RoomID, hello)
		requireBridgeGot(t, b, dm.RoomID, hello, helloID, u)
		answer := fmt.Sprintf("hello human, %d %s", i, name(""))
		var sent struct {
			EventID string `json:"event_id"`
		}
		b.call(t, "sendText", map[string]any{"user": ghost, "room_id": dm.RoomID, "body": answer}, &sent)
		if m := jsWaitDecrypted(t, u, dm.RoomID, map[string]any{"body": answer}); m.Sender != ghost || m.EventID != sent.EventID {
			t.Fatalf("the ghost's answer arrived as %+v, want event %s from %s", m, sent.EventID, ghost)
		}
	}
	requireBridgeDeviceSigned(t, u, gw, ghost)
}

// requireBridgeGot waits until the bridge received the js-sdk user's encrypted message in
// plaintext, and checks what heirloom says of its encryption.
func requireBridgeGot(t *testing.T, b *jsBridge, roomID, body, eventID string, from jsUser) {
	t.Helper()
	got := b.waitEvent(t, map[string]any{"room_id": roomID, "type": "m.room.message", "body": body})
	if got.Event.EventID != eventID || got.Event.Sender != from.UserID {
		t.Fatalf("the bridge received %s from %s, want %s from %s", got.Event.EventID, got.Event.Sender, eventID, from.UserID)
	}
	if enc := encryptionOf(t, got.Event.Unsigned); enc == nil || enc.SenderDevice != from.DeviceID || enc.Trust != "cross_signed" {
		t.Fatalf("the bridge received %q with io.heirloom.encryption %+v, want device %s, cross_signed", body, enc, from.DeviceID)
	}
}

// TestGatewayHeisenbridgeDM: a js-sdk user starts an encrypted DM with an IRC user's ghost he met in
// a channel, as Element does. heisenbridge (mautrix-python) answers an invite to a ghost its own way: the ghost
// leaves the user's room ("Will invite YOU instead") and the bot opens its private chat with that
// IRC user, encrypted by heirloom (gateway.encrypt_new_rooms). There the user's encrypted messages
// reach IRC as private messages, and the IRC user's answers come back from the ghost, encrypted by
// its own device.
func TestGatewayHeisenbridgeDM(t *testing.T) {
	t.Parallel()
	ircd := startNgircd(t)
	u := newJSUser(t, true)
	gw, gwURL := startGateway(t, "gw-irc", func(g *gatewayConfig) { g.encryptNewRooms = true })
	hb := startHeisenbridge(t, heisenbridgeOpts{Homeserver: gwURL, Registration: &e.heisenbridgeGWReg, Owner: u.UserID})
	suffix := strconv.FormatInt(uniq.Add(1), 10) + strconv.FormatInt(time.Now().UnixNano()%100000, 10)
	network, ircNick, mxNick := "dnet"+suffix, "dircuser"+suffix, "dmxuser"+suffix
	irc := dialIRC(t, ircd.Addr(), ircNick)
	networkRoom := hbConnect(t, u, hb, ircd, network, mxNick)
	ghost := fmt.Sprintf("@hbgw_%s_%s:%s", strings.ToLower(network), strings.ToLower(ircNick), domain)
	// The user meets the IRC user in a channel first: heisenbridge registers a ghost when its IRC
	// user speaks.
	channel := "#dchannel" + suffix
	irc.Join(channel)
	jsSendID(t, u, networkRoom, "JOIN "+channel)
	channelRoom, _ := jsAcceptInvite(t, u, "")
	line := "hello channel " + suffix
	irc.Privmsg(channel, line)
	if m := jsWaitDecrypted(t, u, channelRoom, map[string]any{"body": line}); m.Sender != ghost {
		t.Fatalf("the IRC line reached Matrix from %s, want the ghost %s", m.Sender, ghost)
	}

	var dm struct {
		RoomID string `json:"room_id"`
	}
	e.peer(t, "createRoom", map[string]any{"user": u.UserID, "history_visibility": "shared", "preset": "trusted_private_chat",
		"is_direct": true, "invite": []string{ghost}}, &dm)
	private, inviter := jsAcceptInvite(t, u, "")
	if inviter != hb.BotID || private == dm.RoomID {
		t.Fatalf("after the DM invite, %s invited %s to %s: want heisenbridge's bot %s to open a private chat", inviter, u.UserID, private, hb.BotID)
	}
	var left struct {
		Membership string `json:"membership"`
		Reason     string `json:"reason"`
	}
	eventually(t, 30*time.Second, "the ghost to leave the user's DM", func() (bool, string) {
		e.peer(t, "memberEvent", map[string]any{"user": u.UserID, "room_id": dm.RoomID, "target": ghost}, &left)
		return left.Membership == "leave", fmt.Sprintf("%+v", left)
	})

	hello := "hello over IRC " + suffix
	jsSendID(t, u, private, hello)
	irc.ExpectPrivmsg(30*time.Second, mxNick, ircNick, hello)
	answer := "hello from IRC " + suffix
	irc.Privmsg(mxNick, answer)
	if m := jsWaitDecrypted(t, u, private, map[string]any{"body": answer}); m.Sender != ghost {
		t.Fatalf("the IRC user's answer reached Matrix from %s, want the ghost %s", m.Sender, ghost)
	}
	requireBridgeDeviceSigned(t, u, gw, ghost)
}

// TestGatewayBridgeBotMissingKey: the bridge's bot is the registration's sender, to which Synapse
// refuses /sync. It joins a js-sdk user's encrypted room from an invite without a bundle, and
// heirloom does not try to sweep its inbox (Synapse answered that with a 500: "Failed to sweep
// to-device messages after joining"). Then a room key never reaches the bot's device, as when
// Synapse skips a push: heirloom asks the sending device for it as the bot, takes that device's
// forward of its own session, and the bridge receives the message decrypted all the same.
func TestGatewayBridgeBotMissingKey(t *testing.T) {
	gw, gwURL := startGateway(t, "gw-bs", nil)
	b := startJSBridge(t, jsBridgeOpts{Script: botsdkBridge, Homeserver: gwURL, Registration: &e.botsdkGWReg})
	eventually(t, 30*time.Second, "the bridge bot's device", func() (bool, string) { return gw.deviceOf(t, b.BotID) != "", "" })
	u := newJSUser(t, true)
	var room struct {
		RoomID string `json:"room_id"`
	}
	e.peer(t, "createRoom", map[string]any{"user": u.UserID, "history_visibility": "shared"}, &room)
	e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": room.RoomID, "target": b.BotID}, nil)
	b.waitEvent(t, map[string]any{"room_id": room.RoomID, "type": "m.room.member", "state_key": b.BotID, "membership": "invite"})
	mark := gw.mark(t)
	b.call(t, "join", map[string]any{"user": b.BotID, "room_id": room.RoomID}, nil)
	mark.wait(t, 10*time.Second, "the bot's join", msgIs("Joined room from invite", "room_id", room.RoomID))
	first := "pushed as usual " + name("")
	requireBridgeGot(t, b, room.RoomID, first, jsSendID(t, u, room.RoomID, first), u)
	for _, l := range mark.lines(t) {
		if strings.Contains(l.str("message"), "sweep") && l.str("level") == "warn" {
			t.Fatalf("heirloom tried to sweep the inbox of the bridge's bot, the appservice's sender: %v", l)
		}
	}

	res, err := gw.dbWritable(t).Exec(`DELETE FROM crypto_megolm_inbound_session WHERE account_id=? AND room_id=?`, b.BotID, room.RoomID)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		t.Fatalf("the bridge bot held no room key of %s to lose", room.RoomID)
	}
	mark = gw.mark(t)
	second := "never pushed to the bot " + name("")
	requireBridgeGot(t, b, room.RoomID, second, jsSendID(t, u, room.RoomID, second), u)
	mark.wait(t, time.Second, "the bot's request for the key", msgIs("Asked the sender's device for a room key the homeserver did not deliver"))
	mark.wait(t, time.Second, "the forwarded key", msgIs("Stored the room key its sender's device forwarded", "room_id", room.RoomID))
}
