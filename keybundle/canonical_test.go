package keybundle

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"
)

// Rows stored before (or past) the receipt checks may hold keys in a non-canonical base64 form:
// the two unused trailing bits of the 43rd character set. Go's default decoder reads the same 32
// bytes; rust-sdk's decoder refuses them ("Invalid last symbol"), and with them the whole bundle
// (checked against matrix-sdk-crypto-wasm 18.9.0). Place never puts such a row into a bundle.
func TestPlaceLeavesOutNonCanonicalKeys(t *testing.T) {
	const room id.RoomID = "!r:localhost"
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	curve := make([]byte, 32)
	_, _ = rand.Read(curve)
	session := make([]byte, 32)
	_, _ = rand.Read(session)
	enc := base64.RawStdEncoding
	signing, sender, sessionID := enc.EncodeToString(pub), enc.EncodeToString(curve), enc.EncodeToString(session)
	bump := func(key string) string {
		const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
		for i := range alphabet {
			if alphabet[i] == key[42] {
				return key[:42] + string(alphabet[i|1])
			}
		}
		panic("not base64")
	}
	for name, h := range map[string]Held{
		"shared key, claimed ed25519": {RoomID: room, SessionID: id.SessionID(sessionID), SenderKey: id.SenderKey(sender),
			SigningKey: id.Ed25519(bump(signing)), HasKey: true, SharedHistory: true},
		"shared key, sender_key": {RoomID: room, SessionID: id.SessionID(sessionID), SenderKey: id.SenderKey(bump(sender)),
			SigningKey: id.Ed25519(signing), HasKey: true, SharedHistory: true},
		"unshared key, sender_key (goes out as withheld)": {RoomID: room, SessionID: id.SessionID(sessionID),
			SenderKey: id.SenderKey(bump(sender)), SigningKey: id.Ed25519(signing), HasKey: true},
		"bundle withheld entry, sender_key": {RoomID: room, SessionID: id.SessionID(sessionID), SenderKey: id.SenderKey(bump(sender)),
			Code: CodeHistoryNotShared, FromBundle: true},
	} {
		t.Run(name, func(t *testing.T) {
			placement, _ := Place(room, h)
			require.Equal(t, Left, placement, "rust-sdk refuses the whole bundle over this entry")
		})
	}
}
