package keybundle_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto/attachment"
	"maunium.net/go/mautrix/event"

	"github.com/heirloom-matrix/heirloom/keybundle"
)

// buildFrom returns a Seal build func writing a bundle of the given sessions (shared ones as keys).
func buildFrom(sessions []keybundle.Session) func(w io.Writer) (keybundle.Counts, error) {
	return func(w io.Writer) (keybundle.Counts, error) {
		b := keybundle.NewBuilder(w, testRoom, testDevice)
		for _, s := range sessions {
			if err := b.AddSession(s); err != nil {
				break // Close reports the error with the counts so far
			}
		}
		return b.Close()
	}
}

func sharedSessions(t *testing.T, n int) ([]keybundle.Session, []*megolm) {
	t.Helper()
	var out []keybundle.Session
	var ms []*megolm
	for range n {
		m := newMegolm(t)
		ms = append(ms, m)
		out = append(out, m.session(testRoom, true))
	}
	return out, ms
}

// wireInfo is the file info as the receiver gets it: through JSON, in the to-device message.
func wireInfo(t *testing.T, info *event.EncryptedFileInfo) *event.EncryptedFileInfo {
	t.Helper()
	data, err := json.Marshal(info)
	require.NoError(t, err)
	var out event.EncryptedFileInfo
	require.NoError(t, json.Unmarshal(data, &out))
	return &out
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func sealedBytes(t *testing.T, s *keybundle.Sealed) []byte {
	t.Helper()
	data, err := io.ReadAll(s.File)
	require.NoError(t, err)
	_, err = s.File.Seek(0, io.SeekStart)
	require.NoError(t, err)
	return data
}

func TestSealOpenRoundTrip(t *testing.T) {
	dir := t.TempDir()
	sessions, ms := sharedSessions(t, 3)
	var plain bytes.Buffer
	_, err := buildFrom(sessions)(&plain)
	require.NoError(t, err)

	sealed, err := keybundle.Seal(dir, 1<<20, buildFrom(sessions))
	require.NoError(t, err)
	t.Cleanup(func() { _ = sealed.Close() })
	require.Equal(t, keybundle.Counts{Sessions: 3}, sealed.Counts)

	ciphertext := sealedBytes(t, sealed)
	require.EqualValues(t, len(ciphertext), sealed.Size)
	require.Len(t, ciphertext, plain.Len(), "AES-CTR keeps the length")
	require.NotContains(t, string(ciphertext), "room_keys", "only ciphertext reaches the disk")
	require.NotContains(t, string(ciphertext), ms[0].exported(t))
	sum := sha256.Sum256(ciphertext)
	require.Equal(t, base64.RawStdEncoding.EncodeToString(sum[:]), sealed.Info.Hashes.SHA256)

	opened, err := keybundle.Open(bytes.NewReader(ciphertext), wireInfo(t, sealed.Info), 1<<20)
	require.NoError(t, err)
	got, err := io.ReadAll(opened)
	require.NoError(t, err)
	require.NoError(t, opened.Close(), "the hash of an intact file verifies")
	require.Equal(t, plain.Len(), len(got))
	decoded, err := decodeAll(t, got)
	require.NoError(t, err)
	require.Len(t, decoded.keys, 3)
	for i, k := range decoded.keys {
		require.Equal(t, ms[i].id(), k.SessionID)
		require.Equal(t, ms[i].exported(t), k.SessionKey)
	}

	require.NoError(t, sealed.Close())
	require.Empty(t, dirEntries(t, dir), "Close removes the temporary file")
}

func TestSealedFileInfo(t *testing.T) {
	sessions, _ := sharedSessions(t, 1)
	sealed, err := keybundle.Seal(t.TempDir(), 1<<20, buildFrom(sessions))
	require.NoError(t, err)
	t.Cleanup(func() { _ = sealed.Close() })

	// Check what goes on the wire, as JSON.
	data, err := json.Marshal(sealed.Info)
	require.NoError(t, err)
	var info struct {
		V   string `json:"v"`
		IV  string `json:"iv"`
		Key struct {
			Alg    string   `json:"alg"`
			Kty    string   `json:"kty"`
			K      string   `json:"k"`
			Ext    *bool    `json:"ext"`
			KeyOps []string `json:"key_ops"`
		} `json:"key"`
		Hashes map[string]string `json:"hashes"`
	}
	require.NoError(t, json.Unmarshal(data, &info))
	require.Equal(t, "v2", info.V)
	require.Equal(t, "A256CTR", info.Key.Alg)
	require.Equal(t, "oct", info.Key.Kty)
	require.NotNil(t, info.Key.Ext)
	require.True(t, *info.Key.Ext)
	require.Contains(t, info.Key.KeyOps, "encrypt")
	require.Contains(t, info.Key.KeyOps, "decrypt")

	key, err := base64.RawURLEncoding.DecodeString(info.Key.K)
	require.NoError(t, err)
	require.Len(t, key, 32)
	iv, err := base64.RawStdEncoding.DecodeString(info.IV)
	require.NoError(t, err)
	require.Len(t, iv, 16)
	require.Equal(t, make([]byte, 8), iv[8:], "the IV's counter half starts at zero")
	require.NotEqual(t, make([]byte, 8), iv[:8], "the IV's first half is random")
	hash, err := base64.RawStdEncoding.DecodeString(info.Hashes["sha256"])
	require.NoError(t, err)
	require.Len(t, hash, 32)
}

func TestSealUsesFreshKeys(t *testing.T) {
	sessions, _ := sharedSessions(t, 1)
	a, err := keybundle.Seal(t.TempDir(), 1<<20, buildFrom(sessions))
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })
	b, err := keybundle.Seal(t.TempDir(), 1<<20, buildFrom(sessions))
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	require.NotEqual(t, a.Info.Key.Key, b.Info.Key.Key)
	require.NotEqual(t, a.Info.InitVector, b.Info.InitVector)
	require.NotEqual(t, sealedBytes(t, a), sealedBytes(t, b))
}

func TestOpenDetectsTampering(t *testing.T) {
	sessions, _ := sharedSessions(t, 2)
	sealed, err := keybundle.Seal(t.TempDir(), 1<<20, buildFrom(sessions))
	require.NoError(t, err)
	t.Cleanup(func() { _ = sealed.Close() })
	ciphertext := sealedBytes(t, sealed)

	for _, tc := range []struct {
		name   string
		mutate func([]byte) []byte
	}{
		{"first byte flipped", func(b []byte) []byte { b[0] ^= 0x01; return b }},
		{"middle byte flipped", func(b []byte) []byte { b[len(b)/2] ^= 0x80; return b }},
		{"last byte flipped", func(b []byte) []byte { b[len(b)-1] ^= 0xff; return b }},
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }},
		{"extended", func(b []byte) []byte { return append(b, ' ') }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			modified := tc.mutate(bytes.Clone(ciphertext))
			opened, err := keybundle.Open(bytes.NewReader(modified), wireInfo(t, sealed.Info), 1<<20)
			require.NoError(t, err)
			_, err = io.ReadAll(opened)
			require.NoError(t, err, "AES-CTR decrypts anything: only the hash catches it")
			require.ErrorIs(t, opened.Close(), attachment.ErrHashMismatch)
		})
	}
}

func TestOpenRefusesBadFileInfo(t *testing.T) {
	sessions, _ := sharedSessions(t, 1)
	sealed, err := keybundle.Seal(t.TempDir(), 1<<20, buildFrom(sessions))
	require.NoError(t, err)
	t.Cleanup(func() { _ = sealed.Close() })
	for _, tc := range []struct {
		name   string
		mutate func(*event.EncryptedFileInfo)
	}{
		{"version v1", func(i *event.EncryptedFileInfo) { i.Version = "v1" }},
		{"algorithm", func(i *event.EncryptedFileInfo) { i.Key.Algorithm = "A128CTR" }},
		{"short key", func(i *event.EncryptedFileInfo) { i.Key.Key = i.Key.Key[:10] }},
		{"bad IV", func(i *event.EncryptedFileInfo) { i.InitVector = "!!" }},
		{"missing hash", func(i *event.EncryptedFileInfo) { i.Hashes.SHA256 = "" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info := wireInfo(t, sealed.Info)
			tc.mutate(info)
			_, err := keybundle.Open(bytes.NewReader(sealedBytes(t, sealed)), info, 1<<20)
			require.Error(t, err)
		})
	}
}

func TestSealTooLarge(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sessions int
		maxSize  int64
	}{
		// Fails when the builder flushes at Close: the counts are complete.
		{"over the limit at the end", 5, 1024},
		// Fails while the builder streams sessions past its 64 KiB buffer.
		{"over the limit mid-stream", 400, 16 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sessions, _ := sharedSessions(t, tc.sessions)
			var counts keybundle.Counts
			sealed, err := keybundle.Seal(dir, tc.maxSize, func(w io.Writer) (keybundle.Counts, error) {
				var err error
				counts, err = buildFrom(sessions)(w)
				return counts, err
			})
			require.ErrorIs(t, err, keybundle.ErrBundleTooLarge)
			require.Nil(t, sealed)
			require.NotZero(t, counts.Sessions)
			require.Contains(t, err.Error(), fmt.Sprintf("%d sessions", counts.Sessions))
			require.Contains(t, err.Error(), fmt.Sprint(tc.maxSize))
			require.Empty(t, dirEntries(t, dir), "no temporary file is left behind")
		})
	}
}

func TestSealExactLimit(t *testing.T) {
	sessions, _ := sharedSessions(t, 2)
	var plain bytes.Buffer
	_, err := buildFrom(sessions)(&plain)
	require.NoError(t, err)
	size := int64(plain.Len())

	sealed, err := keybundle.Seal(t.TempDir(), size, buildFrom(sessions))
	require.NoError(t, err, "a bundle of exactly max size is allowed")
	require.Equal(t, size, sealed.Size)
	require.NoError(t, sealed.Close())

	_, err = keybundle.Seal(t.TempDir(), size-1, buildFrom(sessions))
	require.ErrorIs(t, err, keybundle.ErrBundleTooLarge)
}

func TestSealBuildErrorRemovesFile(t *testing.T) {
	dir := t.TempDir()
	boom := fmt.Errorf("failed to read sessions: %w", io.ErrUnexpectedEOF)
	_, err := keybundle.Seal(dir, 1<<20, func(w io.Writer) (keybundle.Counts, error) {
		_, _ = w.Write([]byte(`{"room_keys":[`))
		return keybundle.Counts{}, boom
	})
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.NotErrorIs(t, err, keybundle.ErrBundleTooLarge)
	require.Empty(t, dirEntries(t, dir))
}

func TestSealMissingDir(t *testing.T) {
	_, err := keybundle.Seal(filepath.Join(t.TempDir(), "gone"), 1<<20, buildFrom(nil))
	require.Error(t, err)
}

func TestOpenTooLarge(t *testing.T) {
	sessions, _ := sharedSessions(t, 3)
	sealed, err := keybundle.Seal(t.TempDir(), 1<<20, buildFrom(sessions))
	require.NoError(t, err)
	t.Cleanup(func() { _ = sealed.Close() })
	ciphertext := sealedBytes(t, sealed)

	for _, tc := range []struct {
		name    string
		maxSize int64
		wantErr error
	}{
		{"one byte short", sealed.Size - 1, keybundle.ErrBundleTooLarge},
		{"far too small", 16, keybundle.ErrBundleTooLarge},
		{"exactly the size", sealed.Size, nil},
		{"larger", sealed.Size + 1, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opened, err := keybundle.Open(bytes.NewReader(ciphertext), wireInfo(t, sealed.Info), tc.maxSize)
			require.NoError(t, err)
			_, err = io.ReadAll(opened)
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.NoError(t, opened.Close())
		})
	}
}

// A bundle file encrypted with MSC4571's FLOE, which mautrix-go v0.33.0 decrypts, is refused
// before anything is read: MSC4268 bundles are attachments of version v2, and rust-sdk sends and
// reads no other.
func TestOpenRefusesAFLOEBundle(t *testing.T) {
	floe := attachment.NewFLOEFile()
	ciphertext, err := floe.Encrypt([]byte(`{"room_keys":[],"withheld":[]}`))
	require.NoError(t, err)
	info := &event.EncryptedFileInfo{EncryptedFile: *floe.ToStandard()}
	_, err = keybundle.Open(bytes.NewReader(ciphertext), info, 1<<20)
	require.ErrorIs(t, err, keybundle.ErrFileVersion)
}
