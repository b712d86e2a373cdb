package e2ee

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"maunium.net/go/mautrix/crypto"
)

// errUnsealable means a sealed secret could not be decrypted, usually because the pickle key
// changed. heirloom refuses to go on rather than silently create a new identity.
var errUnsealable = errors.New("stored secret cannot be decrypted (was encryption.pickle_key changed?)")

// Sealer encrypts secrets heirloom stores in its own tables (cross-signing seeds, bundle file keys)
// with AES-256-GCM under a key derived from the pickle key. The additional data binds each secret
// to its owner, so a row copied elsewhere does not open.
type Sealer struct {
	aead cipher.AEAD
}

// NewSealer derives the sealing key from the pickle key.
func NewSealer(pickleKey []byte) (*Sealer, error) {
	key, err := hkdf.Key(sha256.New, pickleKey, nil, "heirloom sealed secrets v1", 32)
	if err != nil {
		return nil, fmt.Errorf("failed to derive sealing key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

// Seal encrypts plaintext bound to owner.
func (s *Sealer) Seal(owner string, plaintext []byte) (string, error) {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	return base64.RawStdEncoding.EncodeToString(s.aead.Seal(nonce, nonce, plaintext, []byte(owner))), nil
}

// Open decrypts what Seal produced for the same owner.
func (s *Sealer) Open(owner, sealed string) ([]byte, error) {
	data, err := base64.RawStdEncoding.DecodeString(sealed)
	if err != nil || len(data) < s.aead.NonceSize() {
		return nil, errUnsealable
	}
	plaintext, err := s.aead.Open(nil, data[:s.aead.NonceSize()], data[s.aead.NonceSize():], []byte(owner))
	if err != nil {
		return nil, errUnsealable
	}
	return plaintext, nil
}

// SealJSON seals v as JSON.
func (s *Sealer) SealJSON(owner string, v any) (string, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	return s.Seal(owner, data)
}

// OpenJSON opens a SealJSON value into v.
func (s *Sealer) OpenJSON(owner, sealed string, v any) error {
	data, err := s.Open(owner, sealed)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

func (s *Sealer) sealSeeds(userID string, seeds crypto.CrossSigningSeeds) (string, error) {
	return s.SealJSON("cross-signing:"+userID, seeds)
}

func (s *Sealer) openSeeds(userID, sealed string) (seeds crypto.CrossSigningSeeds, err error) {
	err = s.OpenJSON("cross-signing:"+userID, sealed, &seeds)
	return seeds, err
}
