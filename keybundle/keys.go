package keybundle

import (
	"encoding/base64"
	"strings"
	"unicode/utf8"

	"filippo.io/edwards25519"
	"maunium.net/go/mautrix/id"
)

// What a store accepts from outside, checked before it reaches a statement, the same on SQLite
// and PostgreSQL: PostgreSQL refuses a NUL byte or invalid UTF-8 in text and enforces CHAR(43),
// where SQLite stores anything. A bundle entry that fails a check is skipped and counted; it never
// fails the whole import.

// ValidKey reports whether s is a 32-byte key (Curve25519 or Ed25519, also a megolm session ID)
// in unpadded base64, the only form Matrix uses for them: 43 characters. mautrix's crypto store
// keeps them in CHAR(43) columns, which PostgreSQL enforces and SQLite does not, so anything else
// is refused before it reaches a statement, the same on both.
func ValidKey(s string) bool {
	_, ok := decodeKey(s)
	return ok
}

// decodeKey decodes a 32-byte key in unpadded base64 (ValidKey), without allocating.
func decodeKey(s string) (key [32]byte, ok bool) {
	if len(s) != 43 {
		return key, false
	}
	var src [43]byte
	copy(src[:], s)
	n, err := base64.RawStdEncoding.Decode(key[:], src[:])
	return key, err == nil && n == 32
}

// ValidSigningKeyString reports whether s is an Ed25519 public key in unpadded base64 that
// ValidSigningKey accepts: what a session's claimed signing key (keys.ed25519 of an Olm payload,
// sender_claimed_keys.ed25519 of a bundle entry) must be. rust-sdk refuses a whole bundle over one
// entry whose claimed key is not a point ("The signature was invalid").
func ValidSigningKeyString(s id.Ed25519) bool {
	key, ok := decodeKey(string(s))
	return ok && ValidSigningKey(key[:])
}

// MaxText bounds a text field heirloom stores from outside (a withheld entry's code and reason).
const MaxText = 1024

// ValidText reports whether s may be stored as text: valid UTF-8, no NUL byte, at most max bytes.
func ValidText(s string, max int) bool {
	return len(s) <= max && utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// maxRoomID is the spec's bound on a room ID's length.
const maxRoomID = 255

// ValidRoomID reports whether roomID may name a room in a store: the '!' sigil, at most 255 bytes
// (the spec's bound) and ValidText. Longer keys of an index fail on PostgreSQL alone.
func ValidRoomID(roomID id.RoomID) bool {
	return len(roomID) > 1 && roomID[0] == '!' && ValidText(string(roomID), maxRoomID)
}

// SmallOrderKeys are the canonical encodings of the eight points of order dividing 8 on
// edwards25519 (the curve's 8-torsion, of which there are exactly eight): the identity, the point of
// order 2, the two of order 4 and the four of order 8. TestSmallOrderKeysAreTheEightTorsion checks
// that each is such a point and that they are eight distinct ones.
var SmallOrderKeys = [8][32]byte{
	{0x01},
	{0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
	{},
	{31: 0x80},
	{0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f,
		0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a},
	{0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f,
		0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0xfa},
	{0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0,
		0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05},
	{0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0,
		0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x85},
}

// ValidSigningKey reports whether key is what goolm's Ed25519PublicKey.IsValidKey accepts: the
// canonical encoding of a point on the curve that is not of small order.
//   - Canonical: the encoded y is below p = 2²⁵⁵−19 (edwards25519's SetBytes reduces larger ones),
//     and the sign bit is clear where x = 0, which is only for y = ±1: the identity and the point
//     of order 2, whose encodings with the sign bit set SetBytes accepts as the same points.
//   - Small order: the 8-torsion, whose canonical encodings are SmallOrderKeys; with the two
//     non-canonical ones just named, every encoding of it below p.
//   - On the curve: the decompression (a square root) succeeds.
func ValidSigningKey(key []byte) bool {
	if len(key) != 32 || !belowP(key) {
		return false
	}
	k := [32]byte(key)
	for i := range SmallOrderKeys {
		if k == SmallOrderKeys[i] {
			return false
		}
	}
	if k[31]&0x80 != 0 {
		k[31] &^= 0x80
		if k == SmallOrderKeys[0] || k == SmallOrderKeys[1] { // y = 1 or y = −1, with x = −0
			return false
		}
	}
	_, err := new(edwards25519.Point).SetBytes(key)
	return err == nil
}

// belowP reports whether the 255-bit little-endian y of an encoded point (sign bit left out) is
// below p = 2²⁵⁵−19, whose encoding is ed ff … ff 7f.
func belowP(key []byte) bool {
	if key[31]&0x7f != 0x7f {
		return true
	}
	for i := 30; i > 0; i-- {
		if key[i] != 0xff {
			return true
		}
	}
	return key[0] < 0xed
}
