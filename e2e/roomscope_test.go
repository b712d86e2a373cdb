package e2e

import (
	"testing"
	"time"

	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
)

// The rule of a puppet's keys, end to end: no key, bundle entry or forward that claims room X
// changes, moves, shadows or blocks what the puppet holds for room Y; a claimed signing key that
// Element cannot parse never reaches an invitee's bundle; a member who re-sends a session does not
// become its sender. Against the real Synapse, js-sdk users (Element's crypto), and a hostile
// member's device written in Go (attacker_test.go).

// waitHeirloomHandled waits until heirloom has logged its handling of a room key of the session from
// the sender (stored, held already, or dropped, with the reason).
func waitHeirloomHandled(t *testing.T, sender string, sessionID id.SessionID) {
	t.Helper()
	eventually(t, 60*time.Second, "heirloom to handle the room key of "+string(sessionID), func() (bool, string) {
		return heirloomLogged(t, `"sender":"`+sender+`"`, string(sessionID), "oom key"), "not handled yet"
	})
}

// puppetEvent returns the puppet's timeline event with the body (fails the test if none decrypted it).
func puppetEvent(t *testing.T, p puppetIdentity, roomID, body string) timelineEvent {
	t.Helper()
	for _, ev := range waitPuppetDecrypts(t, p, roomID, []string{body}) {
		if ev.Decrypted && ev.body() == body {
			return ev
		}
	}
	t.Fatalf("the puppet has no decrypted %q", body)
	return timelineEvent{}
}

// relayedHistory is a room of alice's whose history the puppet imported from alice's bundle, and
// whose session a hostile member (mallory's Go device) holds as alice's device signed it.
type relayedHistory struct {
	roomID  string
	key     *e2ee.RoomKeyContent
	history string
	// before is the puppet's decrypted history message, as it was imported.
	before timelineEvent
}

func newRelayedHistory(t *testing.T, alice jsUser, p puppetIdentity, mallory *attacker) relayedHistory {
	t.Helper()
	h := relayedHistory{roomID: jsCreateRoom(t, alice, "shared"), history: "alice's history " + name("")}
	e.peer(t, "invite", map[string]any{"user": alice.UserID, "room_id": h.roomID, "target": string(mallory.UserID), "share_history": false}, nil)
	mallory.join(t, h.roomID)
	e.peer(t, "waitForMembership", map[string]any{"user": alice.UserID, "room_id": h.roomID, "target": string(mallory.UserID),
		"membership": "join", "timeout_ms": 30000}, nil)
	jsSend(t, alice, h.roomID, h.history)
	h.key = mallory.waitRoomKey(t, h.roomID)
	e.peer(t, "invite", map[string]any{"user": alice.UserID, "room_id": h.roomID, "target": p.UserID}, nil)
	if b := waitReceived(t, p, h.roomID, alice.UserID, "imported", "failed", "rejected"); b.State != "imported" {
		t.Fatalf("alice's bundle: %+v", b)
	}
	h.before = puppetEvent(t, p, h.roomID, h.history)
	if h.before.KeysSharedBy != alice.UserID || h.before.SessionID != string(h.key.SessionID) {
		t.Fatalf("the imported history: keys_shared_by %q, session %s (want %s, %s)", h.before.KeysSharedBy, h.before.SessionID,
			alice.UserID, h.key.SessionID)
	}
	return h
}

// relay is mallory's m.room_key re-sending the session, naming roomID.
func (h relayedHistory) relay(roomID string) map[string]any {
	return map[string]any{"algorithm": "m.megolm.v1.aes-sha2", "room_id": roomID, "session_id": h.key.SessionID,
		"session_key": h.key.SessionKey, "shared_history": true, "org.matrix.msc3061.shared_history": true}
}

// A hostile member (mallory's Go device) holds the key of alice's session as alice's device signed
// it, and the puppet imported that history from alice's bundle. Mallory re-sends the key as his own
// m.room_key: naming its room, which must not make the session his nor erase whose bundle supplied
// it (keys_shared_by); or, gone from the room and a member of the puppet's room B, naming B, which
// must leave the history readable in its room (his copy is B's own row).
func TestHostileMemberRelayingARoomKeyEndToEnd(t *testing.T) {
	alice := newJSUser(t, true)
	p := newPuppet(t)
	mallory := newAttacker(t)

	t.Run("re-sent in its own room", func(t *testing.T) {
		h := newRelayedHistory(t, alice, p, mallory)
		mallory.sendRoomKey(t, p, h.relay(h.roomID))
		waitHeirloomHandled(t, string(mallory.UserID), h.key.SessionID)
		after := puppetEvent(t, p, h.roomID, h.history)
		if after.KeysSharedBy != alice.UserID || after.Trust != h.before.Trust {
			t.Fatalf("the relay re-attributed alice's history: keys_shared_by %q trust %q (was %q, %q)",
				after.KeysSharedBy, after.Trust, h.before.KeysSharedBy, h.before.Trust)
		}
	})

	t.Run("replayed by a past member naming another room", func(t *testing.T) {
		h := newRelayedHistory(t, alice, p, mallory)
		roomB := puppetCreateRoom(t, p, "shared")
		puppetInvite(t, p, roomB, string(mallory.UserID))
		mallory.join(t, roomB)
		mallory.leave(t, h.roomID)
		mallory.sendRoomKey(t, p, h.relay(roomB))
		waitHeirloomHandled(t, string(mallory.UserID), h.key.SessionID)
		after := puppetEvent(t, p, h.roomID, h.history)
		if after.KeysSharedBy != alice.UserID {
			t.Fatalf("the history changed hands: keys_shared_by %q", after.KeysSharedBy)
		}
		if !heldSessions(t, p, roomB)[string(h.key.SessionID)] {
			t.Fatal("mallory's copy, from a member of room B, is not held for B")
		}
		stillWorks(t, p, h.roomID)
	})
}

// F1c end to end: an inviter needs only a session's ID (it is in every event of its room) to list
// it, with a forged ratchet, in a bundle for his own room. The genuine bundle of the session's room
// must still give the puppet that room's history.
func TestInviterParkingASessionIDBlocksNothingEndToEnd(t *testing.T) {
	alice, mallory := newJSUser(t, true), newJSUser(t, true)
	p := newPuppet(t)
	roomA := jsCreateRoom(t, alice, "shared")
	const history = "alice's history, parked in vain"
	jsSend(t, alice, roomA, history)
	keys := jsRawKeys(t, alice, roomA)

	roomB, _ := hostileSetup(t, mallory, p)
	parked := make([]exportedKey, 0, len(keys))
	for _, k := range keys {
		k.RoomID, k.SessionKey = roomB, forgeRatchet(t, k.SessionKey)
		parked = append(parked, k)
	}
	e.peer(t, "sendBundle", map[string]any{"user": mallory.UserID, "room_id": roomB, "target": p.UserID,
		"plaintext": bundleJSON(t, parked, nil), "timeout_ms": 60000}, nil)
	if b := waitReceived(t, p, roomB, mallory.UserID, "imported", "failed", "rejected"); b.State != "imported" {
		t.Fatalf("mallory's bundle: %+v", b)
	}

	e.peer(t, "invite", map[string]any{"user": alice.UserID, "room_id": roomA, "target": p.UserID}, nil)
	b := waitReceived(t, p, roomA, alice.UserID, "imported", "failed", "rejected")
	if b.State != "imported" || b.Imported != len(keys) || b.Skipped != 0 {
		t.Fatalf("alice's genuine bundle must be imported whole: %+v", b)
	}
	if ev := puppetEvent(t, p, roomA, history); ev.KeysSharedBy != alice.UserID {
		t.Fatalf("keys_shared_by %q, want alice", ev.KeysSharedBy)
	}
}

// Keys whose claimed Ed25519 key Element cannot parse, sent in a hostile member's m.room_key (F3a:
// junk, or 32 bytes that are no point, from an Olm account no device publishes) and in an inviter's
// bundle (F3b): a js-sdk user the puppet then invites still decrypts each room's history. rust-sdk
// refuses a whole bundle over one such entry.
func TestUnparsableClaimedKeysDoNotCostInviteesTheHistoryEndToEnd(t *testing.T) {
	p := newPuppet(t)
	mallory := newAttacker(t)
	carol, bob := newJSUser(t, true), newJSUser(t, true)

	// F3a: the puppet's own room, where mallory is a member.
	room := puppetCreateRoom(t, p, "shared")
	const history = "the puppet's history"
	puppetSend(t, p, room, history)
	puppetInvite(t, p, room, string(mallory.UserID))
	mallory.join(t, room)
	for _, claim := range []string{"!!!! not an ed25519 key, 43 characters !!!!", "AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"} {
		out, err := olm.NewOutboundGroupSession()
		if err != nil {
			t.Fatal(err)
		}
		mallory.sendForgedRoomKey(t, p, claim, map[string]any{"algorithm": "m.megolm.v1.aes-sha2", "room_id": room,
			"session_id": out.ID(), "session_key": out.Key(), "shared_history": true, "org.matrix.msc3061.shared_history": true})
		waitHeirloomHandled(t, string(mallory.UserID), out.ID())
	}

	// F3b: carol's room, whose bundle carries an entry with a claimed key that is no point.
	roomC, keys := hostileSetup(t, carol, p)
	junkID, exported := exportedJunkSession(t)
	bad := exportedKey{Algorithm: "m.megolm.v1.aes-sha2", RoomID: roomC, SenderKey: keys[0].SenderKey, SessionID: string(junkID),
		SessionKey: string(exported), SenderClaimedKeys: map[string]string{"ed25519": "AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}
	e.peer(t, "sendBundle", map[string]any{"user": carol.UserID, "room_id": roomC, "target": p.UserID,
		"plaintext": bundleJSON(t, append([]exportedKey{bad}, keys...), nil), "timeout_ms": 60000}, nil)
	if b := waitReceived(t, p, roomC, carol.UserID, "imported", "failed", "rejected"); b.State != "imported" {
		t.Fatalf("carol's bundle: %+v", b)
	}

	for _, tc := range []struct{ room, history string }{{room, history}, {roomC, "hostile-test history"}} {
		resp := puppetInvite(t, p, tc.room, bob.UserID)
		if resp.Bundle.State != "delivered" {
			t.Fatalf("the puppet's bundle for %s: %+v", tc.room, resp.Bundle)
		}
		e.peer(t, "join", map[string]any{"user": bob.UserID, "room_id": tc.room}, nil)
		requireJSDecrypts(t, bob, tc.room, []string{tc.history})
	}
}
