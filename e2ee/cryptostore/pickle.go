package cryptostore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"go.mau.fi/util/pkcs7"
	"golang.org/x/crypto/hkdf"
	"maunium.net/go/mautrix/crypto/aescbc"
	"maunium.net/go/mautrix/crypto/goolm/megolm"
	"maunium.net/go/mautrix/crypto/goolm/session"
	"maunium.net/go/mautrix/crypto/olm"
)

// pickleMACLength and pickleKDFInfo are libolm's pickle format, which goolm and mautrix's SQL
// store use for every stored session.
const pickleMACLength = 8

var pickleKDFInfo = []byte("Pickle")

// errBadPickle means a stored session could not be decrypted or parsed.
var errBadPickle = errors.New("bad session pickle")

// PickleCipher pickles and unpickles megolm inbound sessions in the exact format of goolm's
// Pickle/Unpickle (libolm's: AES-256-CBC with PKCS#7 padding under a key and IV derived by HKDF,
// then the first 8 bytes of an HMAC-SHA-256 of the ciphertext, in unpadded base64). goolm derives
// the keys and builds the AES and HMAC states for every session, which is most of the cost of
// reading or writing 10,000 sessions at once; here the keys are derived and the AES key schedule
// expanded once, and HMAC states are reused. Safe for concurrent use.
type PickleCipher struct {
	block cipher.Block
	iv    []byte
	macs  sync.Pool // of hash.Hash: HMAC-SHA-256 under the pickle MAC key
}

// NewPickleCipher derives the pickle keys from the pickle key.
func NewPickleCipher(pickleKey []byte) (*PickleCipher, error) {
	// The same derivation as goolm's aessha2.NewAESSHA2(pickleKey, "Pickle").
	keys := make([]byte, 80)
	if _, err := io.ReadFull(hkdf.New(sha256.New, pickleKey, nil, pickleKDFInfo), keys); err != nil {
		return nil, err
	}
	aesKey, macKey, iv := keys[:32], keys[32:64], keys[64:]
	block, err := aes.NewCipher(aesKey)
	if err != nil {
		return nil, err
	}
	pc := &PickleCipher{block: block, iv: iv}
	pc.macs.New = func() any { return hmac.New(sha256.New, macKey) }
	return pc, nil
}

// mac writes the truncated HMAC of data into dst (pickleMACLength bytes).
func (pc *PickleCipher) mac(dst, data []byte) {
	h := pc.macs.Get().(hash.Hash)
	h.Reset()
	h.Write(data)
	var sum [sha256.Size]byte
	copy(dst, h.Sum(sum[:0])[:pickleMACLength])
	pc.macs.Put(h)
}

// Pickle encrypts a session as goolm's MegolmInboundSession.Pickle would.
func (pc *PickleCipher) Pickle(s olm.InboundGroupSession) ([]byte, error) {
	inner, ok := s.(*session.MegolmInboundSession)
	if !ok {
		return s.Pickle(nil) // not goolm: let the session say why
	}
	// The plaintext as goolm's PickleLibOlm writes it, then PKCS#7 padding (1 to 16 bytes, each the
	// padding's length), in one buffer with room for the MAC (pooled: the cipher's interface calls
	// would move a local one to the heap for every session).
	buf := pickleBuffers.Get().(*[inboundPickleLength + aes.BlockSize + pickleMACLength]byte)
	defer pickleBuffers.Put(buf)
	plain := appendInboundPickle(buf[:0], inner)
	padding := aes.BlockSize - len(plain)%aes.BlockSize
	padded := len(plain) + padding
	raw := buf[:padded+pickleMACLength]
	for i := len(plain); i < padded; i++ {
		raw[i] = byte(padding)
	}
	// AES-256-CBC, block by block (as crypto/cipher's CBC encrypter does, without building one).
	prev := pc.iv
	for i := 0; i < padded; i += aes.BlockSize {
		block := raw[i : i+aes.BlockSize]
		subtle.XORBytes(block, block, prev)
		pc.block.Encrypt(block, block)
		prev = block
	}
	pc.mac(raw[padded:], raw[:padded])
	out := make([]byte, base64.RawStdEncoding.EncodedLen(len(raw)))
	base64.RawStdEncoding.Encode(out, raw)
	return out, nil
}

var pickleBuffers = sync.Pool{New: func() any { return new([inboundPickleLength + aes.BlockSize + pickleMACLength]byte) }}

// inboundPickleLength is the length of goolm's libolm-format pickle of an inbound megolm session:
// the version, two ratchets (data and counter), the signing key and its verified flag.
const inboundPickleLength = 4 + 2*(megolm.RatchetParts*megolm.RatchetPartLength+4) + 32 + 1

// appendInboundPickle appends what goolm's MegolmInboundSession.PickleLibOlm returns.
func appendInboundPickle(dst []byte, s *session.MegolmInboundSession) []byte {
	dst = binary.BigEndian.AppendUint32(dst, inboundPickleVersion)
	for _, r := range []*megolm.Ratchet{&s.InitialRatchet, &s.Ratchet} {
		dst = append(dst, r.Data[:]...)
		dst = binary.BigEndian.AppendUint32(dst, r.Counter)
	}
	if len(s.SigningKey) == 32 {
		dst = append(dst, s.SigningKey...)
	} else {
		dst = append(dst, make([]byte, 32)...) // as goolm writes a key of another length
	}
	if s.SigningKeyVerified {
		return append(dst, 1)
	}
	return append(dst, 0)
}

// inboundPickleVersion is goolm's megolmInboundSessionPickleVersionLibOlm.
const inboundPickleVersion = 2

// Unpickle decrypts and parses a session pickled by Pickle or by goolm.
func (pc *PickleCipher) Unpickle(pickled []byte) (*session.MegolmInboundSession, error) {
	raw := make([]byte, base64.RawStdEncoding.DecodedLen(len(pickled)))
	n, err := base64.RawStdEncoding.Decode(raw, pickled)
	if err != nil || n < pickleMACLength {
		return nil, fmt.Errorf("%w: not base64 or too short", errBadPickle)
	}
	ciphertext, theirMAC := raw[:n-pickleMACLength], raw[n-pickleMACLength:n]
	var ourMAC [pickleMACLength]byte
	pc.mac(ourMAC[:], ciphertext)
	if !hmac.Equal(ourMAC[:], theirMAC) {
		return nil, fmt.Errorf("%w: MAC mismatch (wrong pickle key?)", errBadPickle)
	}
	if len(ciphertext) == 0 || len(ciphertext)%aes.BlockSize != 0 {
		return nil, fmt.Errorf("%w: %w", errBadPickle, aescbc.ErrNotMultipleBlockSize)
	}
	cipher.NewCBCDecrypter(pc.block, pc.iv).CryptBlocks(ciphertext, ciphertext)
	plaintext, err := pkcs7.Unpad(ciphertext) // goolm's unpadding, with its checks
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errBadPickle, err)
	}
	var s session.MegolmInboundSession
	if err = s.UnpickleLibOlm(plaintext); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadPickle, err)
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
