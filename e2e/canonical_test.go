package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// nonCanonicalKey re-encodes a canonical 43-character unpadded base64 key with its two unused
// trailing bits set: the same 32 bytes for Go's default decoder, an error for rust-sdk's.
func nonCanonicalKey(t *testing.T, key string) string {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	if _, err := base64.RawStdEncoding.Strict().DecodeString(key); err != nil || len(key) != 43 {
		t.Fatalf("not a canonical key: %q", key)
	}
	return key[:42] + string(alphabet[strings.IndexByte(alphabet, key[42])|1])
}

// sendRoomKeyFromDeviceKeys sends the puppet an m.room_key over Olm from a fresh Olm account of
// mallory's whose MSC4147 sender_device_keys (properly self-signed) name its Ed25519 key in the
// given string form; keys.ed25519 in the payload is the same string. mautrix verifies the
// signature after decoding the key, so any string Go's base64 decoder maps to the key passes.
func (a *attacker) sendRoomKeyFromDeviceKeys(t *testing.T, target puppetIdentity, ed25519Form func(string) string, content map[string]any) {
	t.Helper()
	otk := a.claimOneTimeKey(t, id.UserID(target.UserID), id.DeviceID(target.DeviceID))
	a.sendRoomKeyWithKey(t, target, otk, ed25519Form, content)
}

// sendRoomKeyWithKey is sendRoomKeyFromDeviceKeys with an Olm session opened with the given key of
// the puppet's device (a one-time key or its fallback key) that the attacker claimed already.
func (a *attacker) sendRoomKeyWithKey(t *testing.T, target puppetIdentity, otk id.Curve25519, ed25519Form func(string) string, content map[string]any) {
	t.Helper()
	ctx := context.Background()
	user, device := id.UserID(target.UserID), id.DeviceID(target.DeviceID)
	account := crypto.NewOlmAccount()
	const evilDevice = id.DeviceID("EVILDEVICE")
	signing := ed25519Form(string(account.SigningKey()))
	deviceKeys := &mautrix.DeviceKeys{UserID: a.UserID, DeviceID: evilDevice,
		Algorithms: []id.Algorithm{id.AlgorithmMegolmV1, id.AlgorithmOlmV1},
		Keys: map[id.DeviceKeyID]string{
			id.NewDeviceKeyID(id.KeyAlgorithmCurve25519, evilDevice): string(account.IdentityKey()),
			id.NewDeviceKeyID(id.KeyAlgorithmEd25519, evilDevice):    signing,
		}}
	sig, err := account.SignJSON(deviceKeys)
	if err != nil {
		t.Fatal(err)
	}
	deviceKeys.Signatures = signatures.NewSingleSignature(a.UserID, id.KeyAlgorithmEd25519, evilDevice.String(), sig)
	session, err := account.Internal.NewOutboundSession(id.Curve25519(target.Curve25519), otk)
	if err != nil {
		t.Fatal(err)
	}
	plaintext, err := json.Marshal(map[string]any{
		"sender": a.UserID, "recipient": target.UserID, "recipient_keys": map[string]string{"ed25519": target.Ed25519},
		"keys": map[string]string{"ed25519": signing}, "sender_device_keys": deviceKeys,
		"type": event.ToDeviceRoomKey.Type, "content": content,
	})
	if err != nil {
		t.Fatal(err)
	}
	msgType, ciphertext, err := session.Encrypt(plaintext)
	if err != nil {
		t.Fatal(err)
	}
	encrypted := &event.EncryptedEventContent{Algorithm: id.AlgorithmOlmV1, SenderKey: account.IdentityKey(),
		OlmCiphertext: event.OlmCiphertexts{id.Curve25519(target.Curve25519): {Type: msgType, Body: string(ciphertext)}}}
	if _, err = a.cli.SendToDevice(ctx, event.ToDeviceEncrypted, &mautrix.ReqSendToDevice{Messages: map[id.UserID]map[id.DeviceID]*event.Content{
		user: {device: {Parsed: encrypted}}}}); err != nil {
		t.Fatalf("sending the room key: %v", err)
	}
}

// A member of the puppet's room sends one m.room_key whose claimed Ed25519 key is its (self-signed,
// MSC4147) device's key written in a non-canonical base64 form (the two unused trailing bits set);
// an accepted inviter's bundle carries an entry whose sender_key is written the same way. Go's
// decoder reads both as valid keys; rust-sdk (Element) refuses a whole bundle that carries one
// ("Invalid last symbol"). Neither is stored, and an invitee on Element reads both rooms' history.
func TestNonCanonicalKeysDoNotCostInviteesTheHistory(t *testing.T) {
	p := newPuppet(t)
	mallory := newAttacker(t)
	carol, bob := newJSUser(t, true), newJSUser(t, true)

	room := puppetCreateRoom(t, p, "shared")
	const history = "the puppet's history"
	puppetSend(t, p, room, history)
	puppetInvite(t, p, room, string(mallory.UserID))
	mallory.join(t, room)
	out, err := olm.NewOutboundGroupSession()
	if err != nil {
		t.Fatal(err)
	}
	mallory.sendRoomKeyFromDeviceKeys(t, p, func(k string) string { return nonCanonicalKey(t, k) },
		map[string]any{"algorithm": "m.megolm.v1.aes-sha2", "room_id": room, "session_id": out.ID(), "session_key": out.Key(),
			"shared_history": true, "org.matrix.msc3061.shared_history": true})
	waitHeirloomHandled(t, string(mallory.UserID), out.ID())
	t.Logf("mallory's session held in the puppet's room: %v", heldSessions(t, p, room)[string(out.ID())])

	roomC, keys := hostileSetup(t, carol, p)
	junkID, exported := exportedJunkSession(t)
	bad := exportedKey{Algorithm: "m.megolm.v1.aes-sha2", RoomID: roomC, SenderKey: nonCanonicalKey(t, keys[0].SenderKey),
		SessionID: string(junkID), SessionKey: string(exported), SenderClaimedKeys: keys[0].SenderClaimedKeys}
	e.peer(t, "sendBundle", map[string]any{"user": carol.UserID, "room_id": roomC, "target": p.UserID,
		"plaintext": bundleJSON(t, append([]exportedKey{bad}, keys...), nil), "timeout_ms": 60000}, nil)
	if b := waitReceived(t, p, roomC, carol.UserID, "imported", "failed", "rejected"); b.State != "imported" {
		t.Fatalf("carol's bundle: %+v", b)
	}

	for _, tc := range []struct{ room, history string }{{room, history}, {roomC, "hostile-test history"}} {
		t.Run(tc.room, func(t *testing.T) {
			resp := puppetInvite(t, p, tc.room, bob.UserID)
			if resp.Bundle.State != "delivered" {
				t.Fatalf("the puppet's bundle for %s: %+v", tc.room, resp.Bundle)
			}
			e.peer(t, "join", map[string]any{"user": bob.UserID, "room_id": tc.room}, nil)
			requireJSDecrypts(t, bob, tc.room, []string{tc.history})
		})
	}
}
