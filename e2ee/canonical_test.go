package e2ee

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/id"
)

// nonCanonicalKey is the unpadded base64 string with the lowest of its unused trailing bits set:
// the same bytes for Go's default base64 decoder, "Invalid last symbol" for rust-sdk's. A 32-byte
// key has two unused bits, an m.room_key's 229-byte session key four.
func nonCanonicalKey(key string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	last := len(key) - 1
	for i := range alphabet {
		if alphabet[i] == key[last] {
			return key[:last] + string(alphabet[i|1])
		}
	}
	panic("not base64")
}

// A member's device whose Ed25519 key is written non-canonically (in its MSC4147
// sender_device_keys, or as published: mautrix verifies the self-signature after decoding, so it
// names the device with that string) must not get that string stored as the session's signing key:
// every bundle of the room would carry it, and rust-sdk refuses the whole bundle over it (checked
// end to end in e2e.TestNonCanonicalKeysDoNotCostInviteesTheHistory).
func TestRoomKeyClaimingANonCanonicalKeyIsNotStoredVerbatim(t *testing.T) {
	mgr, db := testManager(t)
	p := testPuppet(t, mgr, "victim")
	ctx := context.Background()
	member := newOlmSender("@member:localhost")
	joined(t, db, roomA, p.UserID, member.user)
	sender := member.withClaim(id.Ed25519(nonCanonicalKey(string(member.signing))), true)
	out, err := olm.NewOutboundGroupSession()
	require.NoError(t, err)
	sender.sendRoomKey(ctx, p, roomA, out.ID(), out.Key(), true)
	igs, err := p.Store.GetGroupSession(ctx, roomA, out.ID())
	require.NoError(t, err)
	if igs != nil {
		require.Equal(t, member.signing, igs.SigningKey,
			"a stored claimed key must be in the canonical form rust-sdk parses, or the key must not be stored")
	}
}

// A room key whose sender key (the Olm envelope's) or session key is written in non-canonical base64
// is refused, as rust-sdk refuses it: the sender key would go out verbatim in every bundle of the room.
func TestRoomKeyInNonCanonicalBase64IsNotStored(t *testing.T) {
	for name, mutate := range map[string]func(s *olmSender, sessionKey *string){
		"sender key":  func(s *olmSender, _ *string) { s.curve = id.SenderKey(nonCanonicalKey(string(s.curve))) },
		"session key": func(_ *olmSender, sessionKey *string) { *sessionKey = nonCanonicalKey(*sessionKey) },
	} {
		t.Run(name, func(t *testing.T) {
			mgr, db := testManager(t)
			p := testPuppet(t, mgr, "victim")
			ctx := context.Background()
			member := newOlmSender("@member:localhost")
			joined(t, db, roomA, p.UserID, member.user)
			out, err := olm.NewOutboundGroupSession()
			require.NoError(t, err)
			sessionKey := out.Key()
			mutate(&member, &sessionKey)
			member.sendRoomKey(ctx, p, roomA, out.ID(), sessionKey, true)
			require.Nil(t, heldRow(t, p, roomA, out.ID()), "a key in a form rust-sdk refuses must not be stored")

			// The same key in canonical form is stored.
			canonical := newOlmSender("@member:localhost")
			canonical.sendRoomKey(ctx, p, roomA, out.ID(), out.Key(), true)
			require.NotNil(t, heldRow(t, p, roomA, out.ID()))
		})
	}
}
