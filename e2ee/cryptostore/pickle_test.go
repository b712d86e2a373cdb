package cryptostore

import (
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto/goolm/session"
	"maunium.net/go/mautrix/crypto/olm"
)

// The cached cipher writes byte for byte what goolm writes, and reads what goolm wrote: mautrix's
// store must not be able to tell the difference.
func TestPickleCipherMatchesGoolm(t *testing.T) {
	key := []byte("test-pickle-key-0123456789")
	pc, err := NewPickleCipher(key)
	require.NoError(t, err)
	for range 20 {
		out, err := olm.NewOutboundGroupSession()
		require.NoError(t, err)
		in, err := olm.NewInboundGroupSession([]byte(out.Key()))
		require.NoError(t, err)

		want, err := in.Pickle(key)
		require.NoError(t, err)
		got, err := pc.Pickle(in)
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))

		// goolm's own Unpickle (what mautrix's store calls) reads the cached cipher's pickle.
		viaGoolm := olm.NewBlankInboundGroupSession()
		require.NoError(t, viaGoolm.Unpickle(got, key))
		require.Equal(t, in.ID(), viaGoolm.ID())
		require.Equal(t, in.FirstKnownIndex(), viaGoolm.FirstKnownIndex())
		goolmExport, err := viaGoolm.Export(viaGoolm.FirstKnownIndex())
		require.NoError(t, err)

		back, err := pc.Unpickle(want)
		require.NoError(t, err)
		require.Equal(t, in.ID(), back.ID())
		wantExport, err := in.Export(in.FirstKnownIndex())
		require.NoError(t, err)
		gotExport, err := pc.ExportPickled(got)
		require.NoError(t, err)
		require.Equal(t, string(wantExport), gotExport)
		require.Equal(t, string(wantExport), string(goolmExport))
	}
	// Imported sessions (signing key not verified), at a later index, and one without a signing key:
	// every field of the plaintext is written as goolm writes it.
	out, err := olm.NewOutboundGroupSession()
	require.NoError(t, err)
	in, err := olm.NewInboundGroupSession([]byte(out.Key()))
	require.NoError(t, err)
	exported, err := in.Export(7)
	require.NoError(t, err)
	imported, err := olm.InboundGroupSessionImport(exported)
	require.NoError(t, err)
	for _, s := range []olm.InboundGroupSession{imported, &session.MegolmInboundSession{}} {
		want, err := s.Pickle(key)
		require.NoError(t, err)
		got, err := pc.Pickle(s)
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))
		require.Equal(t, s.(*session.MegolmInboundSession).PickleLibOlm(), appendInboundPickle(nil, s.(*session.MegolmInboundSession)))
	}

	other, err := NewPickleCipher([]byte("another key"))
	require.NoError(t, err)
	pickled, _ := in.Pickle(key)
	_, err = other.Unpickle(pickled)
	require.ErrorIs(t, err, errBadPickle, "a pickle under another key is refused")
	_, err = pc.Unpickle([]byte("!!"))
	require.ErrorIs(t, err, errBadPickle)
}

// BenchmarkPickleCipher pickles and unpickles one megolm inbound session, as an import and a
// bundle build do for every session.
func BenchmarkPickleCipher(b *testing.B) {
	pc, err := NewPickleCipher([]byte("bench-pickle-key-0123456789"))
	require.NoError(b, err)
	out, err := olm.NewOutboundGroupSession()
	require.NoError(b, err)
	in, err := olm.NewInboundGroupSession([]byte(out.Key()))
	require.NoError(b, err)
	pickled, err := pc.Pickle(in)
	require.NoError(b, err)
	b.Run("pickle", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := pc.Pickle(in); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("unpickle", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := pc.Unpickle(pickled); err != nil {
				b.Fatal(err)
			}
		}
	})
}
