package keybundle_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/keybundle"
)

// Place is what goes into a bundle, row by row: the counterpart of rust-sdk's
// build_room_key_bundle loop, with nothing written that rust-sdk would refuse.
func TestPlace(t *testing.T) {
	m := newMegolm(t)
	key := keybundle.Held{RoomID: testRoom, SessionID: m.id(), SenderKey: m.senderKey, SigningKey: m.signingKey, HasKey: true}
	shared := key
	shared.SharedHistory = true
	withheld := keybundle.Held{RoomID: testRoom, SessionID: m.id(), SenderKey: m.senderKey, Code: keybundle.CodeHistoryNotShared,
		Reason: "not for you", FromBundle: true}
	with := func(h keybundle.Held, change func(*keybundle.Held)) keybundle.Held {
		change(&h)
		return h
	}
	for _, tc := range []struct {
		name   string
		held   keybundle.Held
		want   keybundle.Placement
		reason string
	}{
		{"a session with shared history: its key", shared, keybundle.AsKey, ""},
		{"a session without shared history: withheld", key, keybundle.AsWithheld, ""},
		{"a session of another room", with(shared, func(h *keybundle.Held) { h.RoomID = otherRoom }), keybundle.Left, keybundle.LeftOtherRoom},
		{"a shared session whose claimed key is junk", with(shared, func(h *keybundle.Held) {
			h.SigningKey = "!!!! not an ed25519 key, 43 characters !!!!"
		}), keybundle.Left, keybundle.LeftBadSigningKey},
		{"a shared session whose claimed key is no point", with(shared, func(h *keybundle.Held) {
			h.SigningKey = "AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
		}), keybundle.Left, keybundle.LeftBadSigningKey},
		{"a shared session whose claimed key is of small order", with(shared, func(h *keybundle.Held) {
			h.SigningKey = "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
		}), keybundle.Left, keybundle.LeftBadSigningKey},
		{"an unshared session with a junk claimed key: withheld (no key goes out)", with(key, func(h *keybundle.Held) {
			h.SigningKey = "junk"
		}), keybundle.AsWithheld, ""},
		{"a session whose sender key is not 32 bytes", with(shared, func(h *keybundle.Held) { h.SenderKey = "c2VuZGVy" }),
			keybundle.Left, keybundle.LeftMalformedIDs},
		{"an unshared session whose sender key is not 32 bytes", with(key, func(h *keybundle.Held) { h.SenderKey = "c2VuZGVy" }),
			keybundle.Left, keybundle.LeftMalformedIDs},
		{"a session whose ID is not 32 bytes", with(shared, func(h *keybundle.Held) { h.SessionID = "c2Vzc2lvbg" }),
			keybundle.Left, keybundle.LeftMalformedIDs},
		{"a history-not-shared entry from an accepted bundle: passed on", withheld, keybundle.AsWithheld, ""},
		{"the unstable code: passed on", with(withheld, func(h *keybundle.Held) { h.Code = keybundle.CodeHistoryNotSharedUnstable }),
			keybundle.AsWithheld, ""},
		{"a withheld message that came over to-device", with(withheld, func(h *keybundle.Held) { h.FromBundle = false }),
			keybundle.Left, keybundle.LeftToDevice},
		{"another code", with(withheld, func(h *keybundle.Held) { h.Code = "m.unverified" }), keybundle.Left, keybundle.LeftOtherCode},
		{"a reason with a NUL", with(withheld, func(h *keybundle.Held) { h.Reason = "a\x00b" }), keybundle.Left, keybundle.LeftMalformedText},
		{"a reason of invalid UTF-8", with(withheld, func(h *keybundle.Held) { h.Reason = "\xff" }), keybundle.Left, keybundle.LeftMalformedText},
		{"a withheld entry of another room", with(withheld, func(h *keybundle.Held) { h.RoomID = otherRoom }),
			keybundle.Left, keybundle.LeftOtherRoom},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, reason := keybundle.Place(testRoom, tc.held)
			require.Equal(t, tc.want, got)
			require.Equal(t, tc.reason, reason)
		})
	}
}

// Text from outside: what ValidText and ValidRoomID let through is what both databases store.
func TestValidText(t *testing.T) {
	require.True(t, keybundle.ValidText("plain é text", 20))
	require.False(t, keybundle.ValidText("nul\x00", 20))
	require.False(t, keybundle.ValidText("bad \xff", 20))
	require.False(t, keybundle.ValidText("too long", 7))
	require.True(t, keybundle.ValidRoomID("!room:example.org"))
	require.False(t, keybundle.ValidRoomID("room:example.org"), "no sigil")
	require.False(t, keybundle.ValidRoomID("!"))
	require.False(t, keybundle.ValidRoomID(id.RoomID("!"+string(make([]byte, 255)))), "over 255 bytes")
	require.False(t, keybundle.ValidRoomID("!room\x00:example.org"))
}
