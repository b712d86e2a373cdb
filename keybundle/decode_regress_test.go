package keybundle_test

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/keybundle"
)

// a syntax error or over-deep nesting inside an unknown top-level key is not ErrMalformedBundle.
func TestDecodeJunkInUnknownKeyIsMalformed(t *testing.T) {
	for _, input := range []string{
		`{"junk":[1,,2],"room_keys":[],"withheld":[]}`,
		`{"junk":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `,"room_keys":[],"withheld":[]}`,
	} {
		_, err := decodeAll(t, []byte(input))
		require.ErrorIs(t, err, keybundle.ErrMalformedBundle)
	}
}

// null and {} entries reach the callbacks as zero-valued entries instead of being skipped.
func TestDecodeSkipsEmptyEntries(t *testing.T) {
	got, err := decodeAll(t, []byte(`{"room_keys":[null,{}],"withheld":[null,{}]}`))
	require.NoError(t, err)
	require.Empty(t, got.keys)
	require.Empty(t, got.withheld)
	require.Equal(t, 4, got.skipped)
}

// Open with the Info that Seal returned fails the hash check of an intact file.
func TestOpenWithSealedInfo(t *testing.T) {
	sessions, _ := sharedSessions(t, 2)
	sealed, err := keybundle.Seal(t.TempDir(), 1<<20, buildFrom(sessions))
	require.NoError(t, err)
	t.Cleanup(func() { _ = sealed.Close() })
	opened, err := keybundle.Open(sealed.File, sealed.Info, 1<<20)
	require.NoError(t, err)
	_, err = io.ReadAll(opened)
	require.NoError(t, err)
	require.NoError(t, opened.Close())
}

// Decode stops at the closing brace, so Close (as history/import.go calls it right after
// Decode) hashes only part of a valid file that has trailing whitespace.
func TestDecodeThenCloseWithTrailingWhitespace(t *testing.T) {
	sessions, _ := sharedSessions(t, 2)
	sealed, err := keybundle.Seal(t.TempDir(), 1<<20, func(w io.Writer) (keybundle.Counts, error) {
		counts, err := buildFrom(sessions)(w)
		if err == nil {
			_, err = w.Write(bytes.Repeat([]byte{'\n'}, 64<<10))
		}
		return counts, err
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sealed.Close() })
	opened, err := keybundle.Open(sealed.File, wireInfo(t, sealed.Info), 1<<20)
	require.NoError(t, err)
	_, err = keybundle.Decode(opened, func(keybundle.RoomKey) error { return nil }, func(keybundle.Withheld) error { return nil })
	require.NoError(t, err)
	require.NoError(t, opened.Close(), "an intact bundle must verify")
}
