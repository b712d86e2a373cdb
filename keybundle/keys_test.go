package keybundle

import (
	"testing"

	"filippo.io/edwards25519"
	"github.com/stretchr/testify/require"
)

// The eight small-order encodings are the whole 8-torsion: each decodes to a point that eight times
// is the identity, and they are eight distinct points (the 8-torsion of edwards25519 has eight).
func TestSmallOrderKeysAreTheEightTorsion(t *testing.T) {
	seen := map[[32]byte]bool{}
	for _, k := range SmallOrderKeys {
		p, err := new(edwards25519.Point).SetBytes(k[:])
		require.NoError(t, err, "%x is not a point", k)
		require.Equal(t, k[:], p.Bytes(), "%x is not canonical", k)
		require.Equal(t, 1, new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()), "%x is not of small order", k)
		require.False(t, seen[k], "%x twice", k)
		seen[k] = true
	}
	require.Len(t, seen, 8)
}
