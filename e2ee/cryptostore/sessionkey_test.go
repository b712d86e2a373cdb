package cryptostore

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"math/big"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	goolmcrypto "maunium.net/go/mautrix/crypto/goolm/crypto"
	"maunium.net/go/mautrix/crypto/goolm/session"
	"maunium.net/go/mautrix/crypto/olm"

	"github.com/heirloom-matrix/heirloom/keybundle"
)

// exportOf builds a session export around a public key (and random ratchet), in base64.
func exportOf(t testing.TB, version byte, key []byte) []byte {
	t.Helper()
	raw := make([]byte, 0, sessionExportLength)
	raw = append(raw, version)
	raw = binary.BigEndian.AppendUint32(raw, 7)
	ratchet := make([]byte, 128)
	_, _ = rand.Read(ratchet)
	raw = append(raw, ratchet...)
	raw = append(raw, key...)
	return []byte(base64.RawStdEncoding.EncodeToString(raw))
}

// hostileKeys returns 32-byte keys of every kind goolm's IsValidKey tells apart: valid keys,
// random bytes (about half are not on the curve), every small-order point in each of its
// encodings, non-canonical encodings (y + p) of valid and small-order points, and y = p itself.
func hostileKeys(t testing.TB) [][]byte {
	t.Helper()
	var keys [][]byte
	for range 200 {
		k := make([]byte, 32)
		_, _ = rand.Read(k)
		keys = append(keys, k)
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		require.NoError(t, err)
		keys = append(keys, pub)
	}
	p := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
	// leToInt and intToLE convert between an encoding's 255-bit y and an integer.
	leToInt := func(k []byte) *big.Int {
		be := make([]byte, 32)
		for i := range k {
			be[31-i] = k[i]
		}
		be[0] &= 0x7f
		return new(big.Int).SetBytes(be)
	}
	intToLE := func(y *big.Int, sign byte) []byte {
		be := y.FillBytes(make([]byte, 32))
		k := make([]byte, 32)
		for i := range be {
			k[31-i] = be[i]
		}
		k[31] |= sign
		return k
	}
	// Every y below 19 has a second, non-canonical encoding y + p, with either sign bit.
	for y := int64(0); y < 19; y++ {
		for _, sign := range []byte{0, 0x80} {
			keys = append(keys, intToLE(big.NewInt(y), sign), intToLE(new(big.Int).Add(big.NewInt(y), p), sign))
		}
	}
	for _, k := range keybundle.SmallOrderKeys {
		flipped := append([]byte(nil), k[:]...)
		flipped[31] ^= 0x80
		keys = append(keys, append([]byte(nil), k[:]...), flipped)
		if y := leToInt(k[:]); y.Cmp(big.NewInt(19)) < 0 {
			keys = append(keys, intToLE(new(big.Int).Add(y, p), k[31]&0x80))
		}
	}
	keys = append(keys, intToLE(p, 0), intToLE(p, 0x80), intToLE(new(big.Int).Sub(p, big.NewInt(1)), 0x80))
	return keys
}

// ImportSessionKey accepts exactly the session keys goolm's import accepts, and makes the same
// session of them (the same pickle, ID and first index).
func TestImportSessionKeyMatchesGoolm(t *testing.T) {
	var inputs [][]byte
	for _, k := range hostileKeys(t) {
		inputs = append(inputs, exportOf(t, sessionExportVersion, k))
	}
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	valid := exportOf(t, sessionExportVersion, pub)
	withBreaks := []byte(string(valid[:50]) + "\n" + string(valid[50:100]) + "\r\n" + string(valid[100:]))
	inputs = append(inputs,
		nil, []byte(""), valid, withBreaks,
		[]byte(strings.Repeat("\n", 300)+string(valid)), // longer than an export before the breaks are skipped
		exportOf(t, 2, pub), exportOf(t, 0, pub),
		valid[:len(valid)-1], valid[:len(valid)-4], append(append([]byte(nil), valid...), 'A', 'A'),
		append(append([]byte(nil), valid...), '='), []byte(strings.ReplaceAll(string(valid), "A", "-")),
		[]byte("not base64 at all!"),
	)
	for _, s := range [][]byte{valid} {
		padded := []byte(base64.StdEncoding.EncodeToString(mustDecode(t, s)))
		inputs = append(inputs, padded)
	}
	// A real export of a real session, at index 0 and at a later index.
	out, err := olm.NewOutboundGroupSession()
	require.NoError(t, err)
	in, err := olm.NewInboundGroupSession([]byte(out.Key()))
	require.NoError(t, err)
	for _, index := range []uint32{0, 5} {
		exported, err := in.Export(index)
		require.NoError(t, err)
		inputs = append(inputs, exported)
	}

	accepted := 0
	for _, input := range inputs {
		want, wantErr := olm.InboundGroupSessionImport(input)
		got, gotErr := ImportSessionKey(string(input))
		require.Equal(t, wantErr == nil, gotErr == nil, "input %q: goolm says %v, heirloom says %v", input, wantErr, gotErr)
		if wantErr != nil {
			continue
		}
		accepted++
		w := want.(*session.MegolmInboundSession)
		require.Equal(t, w.PickleLibOlm(), got.PickleLibOlm(), "input %q", input)
		require.Equal(t, w.ID(), got.ID())
		require.True(t, SessionIDIs(got, w.ID()))
		require.False(t, SessionIDIs(got, w.ID()[1:]+"A"))
		require.Equal(t, w.FirstKnownIndex(), got.FirstKnownIndex())
	}
	require.Greater(t, accepted, 200, "the valid keys are accepted")
	require.Less(t, accepted, len(inputs)-100, "the invalid ones are not")
}

func mustDecode(t *testing.T, s []byte) []byte {
	t.Helper()
	raw, err := base64.RawStdEncoding.DecodeString(string(s))
	require.NoError(t, err)
	return raw
}

// BenchmarkSessionKeyCheck compares goolm's key check with keybundle.ValidSigningKey on valid keys.
func BenchmarkSessionKeyCheck(b *testing.B) {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("goolm", func(b *testing.B) {
		for range b.N {
			if !goolmcrypto.Ed25519PublicKey(pub).IsValidKey() {
				b.Fatal("invalid")
			}
		}
	})
	b.Run("heirloom", func(b *testing.B) {
		for range b.N {
			if !keybundle.ValidSigningKey(pub) {
				b.Fatal("invalid")
			}
		}
	})
}

// FuzzImportSessionKeyMatchesGoolm: on any input, ImportSessionKey accepts what goolm's import
// accepts and makes the same session of it. The seeds are a valid export and hostile keys in one.
func FuzzImportSessionKeyMatchesGoolm(f *testing.F) {
	for _, k := range hostileKeys(f)[:64] {
		f.Add(exportOf(f, sessionExportVersion, k))
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		want, wantErr := olm.InboundGroupSessionImport(input)
		got, gotErr := ImportSessionKey(string(input))
		if (wantErr == nil) != (gotErr == nil) {
			t.Fatalf("input %q: goolm says %v, heirloom says %v", input, wantErr, gotErr)
		}
		if wantErr == nil && string(want.(*session.MegolmInboundSession).PickleLibOlm()) != string(got.PickleLibOlm()) {
			t.Fatalf("input %q: another session", input)
		}
	})
}
