package cryptostore

import (
	"encoding/base64"
	"encoding/binary"
	"errors"

	"maunium.net/go/mautrix/crypto/goolm/megolm"
	"maunium.net/go/mautrix/crypto/goolm/session"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/keybundle"
)

// The megolm session export format (libolm's, which goolm and rust-sdk read and write): version 1,
// the ratchet's counter (big-endian), the 128-byte ratchet, the session's Ed25519 public key.
const (
	sessionExportVersion = 0x01
	sessionExportLength  = 1 + 4 + megolm.RatchetParts*megolm.RatchetPartLength + 32
)

// Errors of ImportSessionKey, as goolm's import would fail.
var (
	errBadSessionExport     = errors.New("session key is not a megolm session export")
	errBadSessionSigningKey = errors.New("session key holds an invalid Ed25519 public key")
)

// ImportSessionKey reads a megolm session key in export format (as a key bundle or a key export
// carries it) into a goolm session: the same session, and the same inputs refused, as
// olm.InboundGroupSessionImport (goolm's NewMegolmInboundSessionFromExport). goolm checks the
// session's Ed25519 key by decompressing it, encoding it again to refuse non-canonical encodings
// (a field inversion) and multiplying it by the cofactor to refuse small-order keys; here the same
// keys are refused with one decompression and byte comparisons (keybundle.ValidSigningKey), half the cost
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
	n, err := keybundle.Strict.Decode(dst, src)
	if err != nil {
		return nil, err
	}
	raw := dst[:n]
	if len(raw) != sessionExportLength || raw[0] != sessionExportVersion {
		return nil, errBadSessionExport
	}
	key := raw[5+megolm.RatchetParts*megolm.RatchetPartLength:]
	if !keybundle.ValidSigningKey(key) {
		return nil, errBadSessionSigningKey
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
