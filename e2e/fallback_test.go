package e2e

import (
	"testing"

	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/id"
)

// drainUntilFallback claims the puppet device's one-time keys, one request each as anyone may,
// until the homeserver hands out the device's fallback key, and checks that key as a claiming
// client does: marked fallback and signed by the device's Ed25519 key.
func (a *attacker) drainUntilFallback(t *testing.T, p puppetIdentity) id.Curve25519 {
	t.Helper()
	user, device := id.UserID(p.UserID), id.DeviceID(p.DeviceID)
	for claims := 1; claims <= 500; claims++ {
		key := a.claimKey(t, user, device)
		if !key.Fallback {
			continue
		}
		ok, err := signatures.VerifySignatureJSON(key.RawData, user, device.String(), id.Ed25519(p.Ed25519))
		if err != nil || !ok {
			t.Fatalf("the fallback key %s is not signed by %s's device: %v", key.RawData, user, err)
		}
		t.Logf("the homeserver handed out %s's fallback key after %d claims", user, claims)
		return key.Key
	}
	t.Fatalf("500 claims and still no fallback key of %s's device", user)
	return ""
}

// Anyone can claim a puppet's one-time keys, one request each, faster than heirloom replenishes
// them. Once they are gone the homeserver hands out the device's fallback key, signed by the
// device; a member's device that opens its Olm session with that very key reaches the puppet, and
// so does Element's crypto (a js-sdk user who never wrote to the puppet) after another drain.
func TestPuppetReachableAfterItsOneTimeKeysAreDrained(t *testing.T) {
	p := newPuppet(t)
	mallory := newAttacker(t)
	fallback := mallory.drainUntilFallback(t, p)

	room := puppetCreateRoom(t, p, "shared")
	puppetInvite(t, p, room, string(mallory.UserID))
	mallory.join(t, room)
	out, err := olm.NewOutboundGroupSession()
	if err != nil {
		t.Fatal(err)
	}
	mallory.sendRoomKeyWithKey(t, p, fallback, func(k string) string { return k }, map[string]any{"algorithm": "m.megolm.v1.aes-sha2",
		"room_id": room, "session_id": out.ID(), "session_key": out.Key(), "shared_history": true})
	waitHeirloomHandled(t, string(mallory.UserID), out.ID())
	if !heldSessions(t, p, room)[string(out.ID())] {
		t.Fatal("the room key sent over an Olm session opened with the fallback key is not stored")
	}

	carol := newJSUser(t, true)
	room2 := jsCreateRoom(t, carol, "shared")
	e.peer(t, "invite", map[string]any{"user": carol.UserID, "room_id": room2, "target": p.UserID, "share_history": false}, nil)
	e.peer(t, "waitForMembership", map[string]any{"user": carol.UserID, "room_id": room2, "target": p.UserID, "membership": "join"}, nil)
	mallory.drainUntilFallback(t, p)
	jsSend(t, carol, room2, "after the drain")
	waitPuppetDecrypts(t, p, room2, []string{"after the drain"})
}
