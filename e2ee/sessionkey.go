package e2ee

import (
	"encoding/base64"
	"encoding/binary"
	"errors"

	"filippo.io/edwards25519"
	"maunium.net/go/mautrix/crypto/goolm/megolm"
	"maunium.net/go/mautrix/crypto/goolm/session"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/id"
)

// The megolm session export format (libolm's, which goolm and rust-sdk read and write): version 1,
// the ratchet's counter (big-endian), the 128-byte ratchet, the session's Ed25519 public key.
const (
	sessionExportVersion = 0x01
	sessionExportLength  = 1 + 4 + megolm.RatchetParts*megolm.RatchetPartLength + 32
)

// Errors of ImportSessionKey, as goolm's import would fail.
var (
	ErrBadSessionExport     = errors.New("session key is not a megolm session export")
	ErrBadSessionSigningKey = errors.New("session key holds an invalid Ed25519 public key")
)

// ImportSessionKey reads a megolm session key in export format (as a key bundle or a key export
// carries it) into a goolm session: the same session, and the same inputs refused, as
// olm.InboundGroupSessionImport (goolm's NewMegolmInboundSessionFromExport). goolm checks the
// session's Ed25519 key by decompressing it, encoding it again to refuse non-canonical encodings
// (a field inversion) and multiplying it by the cofactor to refuse small-order keys; here the same
// keys are refused with one decompression and byte comparisons (validSigningKey), half the cost
// of an import's key check.
func ImportSessionKey(sessionKey string) (*session.MegolmInboundSession, error) {
	if len(sessionKey) == 0 {
		return nil, olm.ErrEmptyInput
	}
	var in [256]byte
	var out [sessionExportLength + 3]byte
	src, dst := in[:0], out[:]
	if len(sessionKey) <= len(in) {
		src = append(src, sessionKey...)
	} else {
		src = []byte(sessionKey) // longer than an export, or with line breaks (skipped, as goolm's decoder does)
	}
	if need := base64.RawStdEncoding.DecodedLen(len(src)); need > len(dst) {
		dst = make([]byte, need)
	}
	n, err := base64.RawStdEncoding.Decode(dst, src)
	if err != nil {
		return nil, err
	}
	raw := dst[:n]
	if len(raw) != sessionExportLength || raw[0] != sessionExportVersion {
		return nil, ErrBadSessionExport
	}
	key := raw[5+megolm.RatchetParts*megolm.RatchetPartLength:]
	if !validSigningKey(key) {
		return nil, ErrBadSessionSigningKey
	}
	s := &session.MegolmInboundSession{SigningKey: append(make([]byte, 0, 32), key...)}
	s.Ratchet.Counter = binary.BigEndian.Uint32(raw[1:5])
	copy(s.Ratchet.Data[:], raw[5:])
	s.InitialRatchet = s.Ratchet
	return s, nil
}

// SessionIDIs reports whether the session's ID (its public key in unpadded base64) is want.
func SessionIDIs(s *session.MegolmInboundSession, want id.SessionID) bool {
	var buf [43]byte
	if len(s.SigningKey) != 32 || len(want) != len(buf) {
		return false
	}
	base64.RawStdEncoding.Encode(buf[:], s.SigningKey)
	return string(buf[:]) == string(want)
}

// smallOrderKeys are the canonical encodings of the eight points of order dividing 8 on
// edwards25519 (the curve's 8-torsion, of which there are exactly eight): the identity, the point of
// order 2, the two of order 4 and the four of order 8. TestSmallOrderKeysAreTheEightTorsion checks
// that each is such a point and that they are eight distinct ones.
var smallOrderKeys = [8][32]byte{
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

// validSigningKey reports whether key is what goolm's Ed25519PublicKey.IsValidKey accepts: the
// canonical encoding of a point on the curve that is not of small order.
//   - Canonical: the encoded y is below p = 2²⁵⁵−19 (edwards25519's SetBytes reduces larger ones),
//     and the sign bit is clear where x = 0, which is only for y = ±1: the identity and the point
//     of order 2, whose encodings with the sign bit set SetBytes accepts as the same points.
//   - Small order: the 8-torsion, whose canonical encodings are smallOrderKeys; with the two
//     non-canonical ones just named, every encoding of it below p.
//   - On the curve: the decompression (a square root) succeeds.
func validSigningKey(key []byte) bool {
	if len(key) != 32 || !belowP(key) {
		return false
	}
	k := [32]byte(key)
	for i := range smallOrderKeys {
		if k == smallOrderKeys[i] {
			return false
		}
	}
	if k[31]&0x80 != 0 {
		k[31] &^= 0x80
		if k == smallOrderKeys[0] || k == smallOrderKeys[1] { // y = 1 or y = −1, with x = −0
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
