package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// exportedKey is a session as a key export holds it (and as a bundle's room_keys carry it).
type exportedKey struct {
	Algorithm         string            `json:"algorithm"`
	RoomID            string            `json:"room_id"`
	SenderKey         string            `json:"sender_key"`
	SessionID         string            `json:"session_id"`
	SessionKey        string            `json:"session_key"`
	SenderClaimedKeys map[string]string `json:"sender_claimed_keys"`
}

func jsRawKeys(t *testing.T, u jsUser, roomID string) []exportedKey {
	t.Helper()
	var resp struct {
		Sessions []exportedKey `json:"sessions"`
	}
	e.peer(t, "exportRaw", map[string]any{"user": u.UserID, "room_id": roomID}, &resp)
	if len(resp.Sessions) == 0 {
		t.Fatalf("%s holds no keys for %s", u.UserID, roomID)
	}
	return resp.Sessions
}

// hostileSetup: alice writes in a fresh shared room and invites the puppet without sharing; the
// puppet joins by policy, so alice is the inviter whose bundles heirloom may import.
func hostileSetup(t *testing.T, alice jsUser, p puppetIdentity) (roomID string, keys []exportedKey) {
	t.Helper()
	roomID = jsCreateRoom(t, alice, "shared")
	jsSend(t, alice, roomID, "hostile-test history")
	keys = jsRawKeys(t, alice, roomID)
	e.peer(t, "invite", map[string]any{"user": alice.UserID, "room_id": roomID, "target": p.UserID, "share_history": false}, nil)
	e.peer(t, "waitForMembership", map[string]any{"user": alice.UserID, "room_id": roomID, "target": p.UserID, "membership": "join"}, nil)
	return roomID, keys
}

func bundleJSON(t *testing.T, keys []exportedKey, withheld []map[string]any) string {
	t.Helper()
	if keys == nil {
		keys = []exportedKey{}
	}
	if withheld == nil {
		withheld = []map[string]any{}
	}
	data, err := json.Marshal(map[string]any{"room_keys": keys, "withheld": withheld})
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// heldSessions returns the session IDs heirloom holds (with keys) for the puppet in a room.
func heldSessions(t *testing.T, p puppetIdentity, roomID string) map[string]bool {
	t.Helper()
	return heldSessionsIn(t, e.instance, p, roomID)
}

// heldSessionsIn returns the session IDs the instance holds (with keys) for the puppet in a room.
func heldSessionsIn(t testing.TB, h *instance, p puppetIdentity, roomID string) map[string]bool {
	t.Helper()
	rows, err := h.db(t).Query(`SELECT session_id FROM crypto_megolm_inbound_session WHERE account_id=? AND room_id=? AND session IS NOT NULL`, p.UserID, roomID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var sid string
		if err = rows.Scan(&sid); err != nil {
			t.Fatal(err)
		}
		out[sid] = true
	}
	return out
}

// heldInRooms returns the rooms heirloom holds a session (with its key) for the puppet in.
func heldInRooms(t *testing.T, p puppetIdentity, sessionID string) []string {
	t.Helper()
	rows, err := e.db(t).Query(`SELECT room_id FROM crypto_megolm_inbound_session WHERE account_id=? AND session_id=? AND session IS NOT NULL`, p.UserID, sessionID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var rooms []string
	for rows.Next() {
		var room string
		if err = rows.Scan(&room); err != nil {
			t.Fatal(err)
		}
		rooms = append(rooms, room)
	}
	if err = rows.Err(); err != nil {
		t.Fatal(err)
	}
	return rooms
}

// stillWorks: after whatever the bundle did, the puppet can still send and read in the room.
func stillWorks(t *testing.T, p puppetIdentity, roomID string) {
	t.Helper()
	text := fmt.Sprintf("still working %d", time.Now().UnixNano())
	puppetSend(t, p, roomID, text)
	waitPuppetDecrypts(t, p, roomID, []string{text})
}

// Hostile bundles from the inviter, built with the Rust crypto's attachment encryption and sent
// over real Olm: nothing wrong is imported, the reason is recorded, and the puppet still works.
func TestHostileBundles(t *testing.T) {
	alice := newJSUser(t, true)
	p := newPuppet(t)
	// Keys of another room alice is in, to smuggle into bundles.
	otherRoom := jsCreateRoom(t, alice, "shared")
	jsSend(t, alice, otherRoom, "other room")
	otherKeys := jsRawKeys(t, alice, otherRoom)

	cases := []struct {
		name    string
		build   func(roomID string, keys []exportedKey) (plaintext string, tamper bool)
		state   string
		errHas  string
		imports bool // the genuine key of the room ends up held
		check   func(t *testing.T, roomID string, keys []exportedKey, b receivedBundle)
	}{{
		name: "keys of another room",
		build: func(roomID string, keys []exportedKey) (string, bool) {
			return bundleJSON(t, append(keys, otherKeys...), nil), false
		},
		state: "imported", imports: true,
		check: func(t *testing.T, roomID string, keys []exportedKey, b receivedBundle) {
			// A smuggled key would be stored under the bundle's room, not under its own: look in
			// every room.
			if b.Skipped != len(otherKeys) {
				t.Fatalf("skipped %d entries, want the %d keys of the other room: %+v", b.Skipped, len(otherKeys), b)
			}
			for _, k := range otherKeys {
				if rooms := heldInRooms(t, p, k.SessionID); len(rooms) != 0 {
					t.Fatalf("a key of another room was imported, held in %v", rooms)
				}
			}
		},
	}, {
		name: "wrong session ID",
		build: func(roomID string, keys []exportedKey) (string, bool) {
			bad := keys[0]
			bad.SessionID = otherKeys[0].SessionID // claims another session's ID
			return bundleJSON(t, []exportedKey{bad}, nil), false
		},
		state: "imported", imports: false,
		check: func(t *testing.T, roomID string, keys []exportedKey, b receivedBundle) {
			if len(heldSessions(t, p, roomID)) != 0 || b.Imported != 0 {
				t.Fatalf("a key whose session ID does not match was imported: %+v", b)
			}
		},
	}, {
		name: "same session in both lists",
		build: func(roomID string, keys []exportedKey) (string, bool) {
			w := map[string]any{"algorithm": "m.megolm.v1.aes-sha2", "code": "m.history_not_shared", "room_id": roomID,
				"sender_key": keys[0].SenderKey, "session_id": keys[0].SessionID}
			return bundleJSON(t, keys, []map[string]any{w}), false
		},
		state: "imported", imports: true,
	}, {
		name: "duplicate sessions",
		build: func(roomID string, keys []exportedKey) (string, bool) {
			return bundleJSON(t, append(append([]exportedKey{}, keys...), keys...), nil), false
		},
		state: "imported", imports: true,
		check: func(t *testing.T, roomID string, keys []exportedKey, b receivedBundle) {
			if b.Imported != len(keys) {
				t.Fatalf("imported %d of %d distinct sessions", b.Imported, len(keys))
			}
		},
	}, {
		name: "over the size cap",
		build: func(roomID string, keys []exportedKey) (string, bool) {
			plain := bundleJSON(t, keys, nil)
			return `{"padding":"` + strings.Repeat("x", e2eMaxBundle+1024) + `",` + plain[1:], false
		},
		state: "failed", errHas: "too large", imports: false,
	}, {
		name: "hash does not match",
		build: func(roomID string, keys []exportedKey) (string, bool) {
			return bundleJSON(t, keys, nil), true
		},
		state: "failed", errHas: "hash", imports: false,
	}, {
		name: "deeply nested JSON",
		build: func(roomID string, keys []exportedKey) (string, bool) {
			return `{"room_keys":` + strings.Repeat("[", 100_000) + strings.Repeat("]", 100_000) + `,"withheld":[]}`, false
		},
		state: "failed", errHas: "malformed", imports: false,
	}, {
		name: "not a bundle",
		build: func(roomID string, keys []exportedKey) (string, bool) {
			return `{"room_keys":"everything","withheld":null}`, false
		},
		state: "failed", errHas: "malformed", imports: false,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			roomID, keys := hostileSetup(t, alice, p)
			plaintext, tamper := tc.build(roomID, keys)
			e.peer(t, "sendBundle", map[string]any{"user": alice.UserID, "room_id": roomID, "target": p.UserID,
				"plaintext": plaintext, "tamper_hash": tamper, "timeout_ms": 60000}, nil)
			b := waitReceived(t, p, roomID, alice.UserID, "imported", "failed", "rejected", "expired")
			if b.State != tc.state || !strings.Contains(b.Error, tc.errHas) {
				t.Fatalf("bundle ended %q (%q), want %q mentioning %q", b.State, b.Error, tc.state, tc.errHas)
			}
			if held := heldSessions(t, p, roomID)[keys[0].SessionID]; held != tc.imports {
				t.Fatalf("genuine key held: %v, want %v (%+v)", held, tc.imports, b)
			}
			if tc.check != nil {
				tc.check(t, roomID, keys, b)
			}
			stillWorks(t, p, roomID)
		})
	}
}

// A bundle from an inviter whose device is not cross-signed is refused.
func TestBundleFromUnsignedDeviceRefused(t *testing.T) {
	mallory := newJSUser(t, false)
	p := newPuppet(t)
	roomID := jsCreateRoom(t, mallory, "shared")
	jsSend(t, mallory, roomID, "unsigned history")
	keys := jsRawKeys(t, mallory, roomID)
	e.peer(t, "invite", map[string]any{"user": mallory.UserID, "room_id": roomID, "target": p.UserID, "share_history": false}, nil)
	e.peer(t, "waitForMembership", map[string]any{"user": mallory.UserID, "room_id": roomID, "target": p.UserID, "membership": "join"}, nil)
	e.peer(t, "sendBundle", map[string]any{"user": mallory.UserID, "room_id": roomID, "target": p.UserID, "plaintext": bundleJSON(t, keys, nil)}, nil)
	b := waitReceived(t, p, roomID, mallory.UserID, "rejected")
	if !strings.Contains(b.Error, "not cross-signed") || heldSessions(t, p, roomID)[keys[0].SessionID] {
		t.Fatalf("an unsigned device's bundle: %+v", b)
	}
	stillWorks(t, p, roomID)
}

// A bundle from an inviter whose cross-signing identity changed since heirloom first saw it is
// refused: MSC4268's red flag.
func TestBundleFromChangedIdentityRefused(t *testing.T) {
	alice := newJSUser(t, true)
	p := newPuppet(t)
	first := jsCreateRoom(t, alice, "shared")
	jsSend(t, alice, first, "before the reset")
	e.peer(t, "invite", map[string]any{"user": alice.UserID, "room_id": first, "target": p.UserID}, nil)
	waitReceived(t, p, first, alice.UserID, "imported") // heirloom has seen alice's identity

	e.peer(t, "resetCrossSigning", map[string]any{"user": alice.UserID}, nil)
	second := jsCreateRoom(t, alice, "shared")
	jsSend(t, alice, second, "after the reset")
	e.peer(t, "invite", map[string]any{"user": alice.UserID, "room_id": second, "target": p.UserID}, nil)
	b := waitReceived(t, p, second, alice.UserID, "rejected")
	if !strings.Contains(b.Error, "identity changed") {
		t.Fatalf("want a refusal for the changed identity, got %+v", b)
	}
	stillWorks(t, p, second)
}

// An unsolicited m.forwarded_room_key (puppets never request keys) is refused: nobody can plant
// sessions in a puppet's store, attributed to whatever sender they name.
func TestUnsolicitedForwardedKeyRefused(t *testing.T) {
	mallory := newJSUser(t, true)
	p := newPuppet(t)
	shared := jsRoomWithPuppet(t, mallory, p, "shared")
	secret := jsCreateRoom(t, mallory, "shared")
	jsSend(t, mallory, secret, "planted")
	key := jsRawKeys(t, mallory, secret)[0]
	mark := e.mark(t)
	e.peer(t, "sendEncrypted", map[string]any{"user": mallory.UserID, "target": p.UserID, "type": "m.forwarded_room_key",
		"content": map[string]any{"algorithm": key.Algorithm, "room_id": secret, "session_id": key.SessionID,
			"session_key": key.SessionKey, "sender_key": key.SenderKey, "sender_claimed_ed25519_key": key.SenderClaimedKeys["ed25519"],
			"forwarding_curve25519_key_chain": []string{}, "org.matrix.msc3061.shared_history": true}}, nil)
	// This very message, decrypted from mallory and handled: the refusal names its session.
	mark.wait(t, 30*time.Second, "heirloom to refuse mallory's forwarded key "+key.SessionID,
		msgIs("Ignoring forwarded room key: puppets never request keys, so it was not asked for",
			"sender", mallory.UserID, "session_id", key.SessionID, "room_id", secret))
	stillWorks(t, p, shared)
	if held := heldSessions(t, p, secret); len(held) != 0 {
		t.Fatalf("an unsolicited forwarded key was stored: %v", held)
	}
}
