package e2ee

import (
	"encoding/base64"
	"errors"
	"fmt"

	"maunium.net/go/mautrix/crypto/goolm/aessha2"
	"maunium.net/go/mautrix/crypto/goolm/session"
	"maunium.net/go/mautrix/crypto/olm"
)

// pickleMACLength and pickleKDFInfo are libolm's pickle format, which goolm and mautrix's SQL
// store use for every stored session.
const pickleMACLength = 8

var pickleKDFInfo = []byte("Pickle")

// ErrBadPickle means a stored session could not be decrypted or parsed.
var ErrBadPickle = errors.New("bad session pickle")

// PickleCipher pickles and unpickles megolm inbound sessions in the exact format of goolm's
// Pickle/Unpickle, with the keys derived from the pickle key once. goolm derives them (HKDF) for
// every session, which is most of the cost of reading or writing 10,000 sessions at once.
// Stateless after creation: safe for concurrent use.
type PickleCipher struct {
	cipher aessha2.AESSHA2
}

// NewPickleCipher derives the pickle keys from the pickle key.
func NewPickleCipher(pickleKey []byte) (*PickleCipher, error) {
	c, err := aessha2.NewAESSHA2(pickleKey, pickleKDFInfo)
	if err != nil {
		return nil, err
	}
	return &PickleCipher{cipher: c}, nil
}

// Pickle encrypts a session as goolm's MegolmInboundSession.Pickle would.
func (pc *PickleCipher) Pickle(s olm.InboundGroupSession) ([]byte, error) {
	inner, ok := s.(*session.MegolmInboundSession)
	if !ok {
		return s.Pickle(nil) // not goolm: let the session say why
	}
	ciphertext, err := pc.cipher.Encrypt(inner.PickleLibOlm())
	if err != nil {
		return nil, err
	}
	mac, err := pc.cipher.MAC(ciphertext)
	if err != nil {
		return nil, err
	}
	raw := append(ciphertext, mac[:pickleMACLength]...)
	out := make([]byte, base64.RawStdEncoding.EncodedLen(len(raw)))
	base64.RawStdEncoding.Encode(out, raw)
	return out, nil
}

// Unpickle decrypts and parses a session pickled by Pickle or by goolm.
func (pc *PickleCipher) Unpickle(pickled []byte) (*session.MegolmInboundSession, error) {
	raw := make([]byte, base64.RawStdEncoding.DecodedLen(len(pickled)))
	n, err := base64.RawStdEncoding.Decode(raw, pickled)
	if err != nil || n < pickleMACLength {
		return nil, fmt.Errorf("%w: not base64 or too short", ErrBadPickle)
	}
	ciphertext, mac := raw[:n-pickleMACLength], raw[n-pickleMACLength:n]
	if ok, err := pc.cipher.VerifyMAC(ciphertext, mac, pickleMACLength); err != nil || !ok {
		return nil, fmt.Errorf("%w: MAC mismatch (wrong pickle key?)", ErrBadPickle)
	}
	plaintext, err := pc.cipher.Decrypt(ciphertext)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadPickle, err)
	}
	var s session.MegolmInboundSession
	if err = s.UnpickleLibOlm(plaintext); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadPickle, err)
	}
	return &s, nil
}

// ExportPickled unpickles a stored session and exports it at its first known index.
func (pc *PickleCipher) ExportPickled(pickled []byte) (string, error) {
	s, err := pc.Unpickle(pickled)
	if err != nil {
		return "", err
	}
	exported, err := s.Export(s.FirstKnownIndex())
	return string(exported), err
}
