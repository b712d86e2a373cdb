package mediafetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/attachment"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

var errCapped = errors.New("capped for the test")

// media serves body at every download, with a Content-Length unless chunked.
func media(t *testing.T, body []byte, chunked bool) *mautrix.Client {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !chunked {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)
		if chunked {
			w.(http.Flusher).Flush()
		}
	}))
	t.Cleanup(srv.Close)
	cli, err := mautrix.NewClient(srv.URL, "@u:hs", "token")
	require.NoError(t, err)
	return cli
}

func encryptedInfo(t *testing.T, plaintext []byte) (*event.EncryptedFileInfo, []byte) {
	file := attachment.NewEncryptedFile()
	ciphertext := bytes.Clone(plaintext)
	file.EncryptInPlace(ciphertext)
	return &event.EncryptedFileInfo{EncryptedFile: *file, URL: "mxc://hs/media"}, ciphertext
}

func opts(t *testing.T, maxSize int64) Options {
	return Options{What: "test file", MaxSize: maxSize, Setting: "test.max_size", TooLarge: errCapped, Dir: t.TempDir(), Pattern: "t-*"}
}

func requireNothingLeft(t *testing.T, o Options) {
	left, err := os.ReadDir(o.Dir)
	require.NoError(t, err)
	require.Empty(t, left, "a refused download leaves no file behind")
}

// A file of exactly the cap is taken, whole, positioned at its start; Close removes it.
func TestExactlyTheCapIsTaken(t *testing.T) {
	info, ciphertext := encryptedInfo(t, bytes.Repeat([]byte("a"), 1000))
	for _, chunked := range []bool{false, true} {
		o := opts(t, int64(len(ciphertext)))
		f, err := Encrypted(context.Background(), media(t, ciphertext, chunked), info, o)
		require.NoError(t, err)
		require.Equal(t, int64(len(ciphertext)), f.Size)
		got, err := io.ReadAll(f)
		require.NoError(t, err)
		require.Equal(t, ciphertext, got)
		require.NoError(t, f.Close())
		requireNothingLeft(t, o)
	}
}

// One byte over the cap is refused: from the Content-Length before reading, or while reading
// when the homeserver announces none; the error wraps the caller's and names the setting.
func TestOneByteOverTheCapIsRefused(t *testing.T) {
	info, ciphertext := encryptedInfo(t, bytes.Repeat([]byte("a"), 1000))
	for chunked, says := range map[bool]string{
		false: "capped for the test: 1000 bytes, over test.max_size 999",
		true:  "capped for the test: over test.max_size 999",
	} {
		o := opts(t, int64(len(ciphertext)-1))
		_, err := Encrypted(context.Background(), media(t, ciphertext, chunked), info, o)
		require.ErrorIs(t, err, errCapped)
		require.EqualError(t, err, says)
		requireNothingLeft(t, o)
	}
}

// A file whose ciphertext is not the one the event's hash names is refused, and so is one whose
// event names no usable hash; padded and unpadded base64 hashes are both read.
func TestHashIsChecked(t *testing.T) {
	info, ciphertext := encryptedInfo(t, []byte("the sender's file"))
	tampered := bytes.Clone(ciphertext)
	tampered[0] ^= 1
	o := opts(t, 1<<20)
	_, err := Encrypted(context.Background(), media(t, tampered, false), info, o)
	require.ErrorIs(t, err, errHashMismatch)
	requireNothingLeft(t, o)

	o.HashMismatch = errCapped
	_, err = Encrypted(context.Background(), media(t, tampered, false), info, o)
	require.ErrorIs(t, err, errCapped, "the caller's error is used")

	sum := sha256.Sum256(ciphertext)
	for name, hash := range map[string]string{
		"no hash":        "",
		"not base64":     "!!!!",
		"a short hash":   base64.RawStdEncoding.EncodeToString(sum[:16]),
		"another's hash": base64.RawStdEncoding.EncodeToString(make([]byte, 32)),
		"trailing junk":  base64.RawStdEncoding.EncodeToString(sum[:]) + "!",
	} {
		bad := *info
		bad.Hashes.SHA256 = hash
		_, err = Encrypted(context.Background(), media(t, ciphertext, false), &bad, opts(t, 1<<20))
		require.ErrorIs(t, err, errHashMismatch, name)
	}
	for _, hash := range []string{base64.StdEncoding.EncodeToString(sum[:]), base64.RawStdEncoding.EncodeToString(sum[:])} {
		good := *info
		good.Hashes.SHA256 = hash
		f, err := Encrypted(context.Background(), media(t, ciphertext, false), &good, opts(t, 1<<20))
		require.NoError(t, err, hash)
		require.NoError(t, f.Close())
	}
}

// Plain takes any content within the cap, and refuses one byte more.
func TestPlainIsCapped(t *testing.T) {
	body := []byte("what heirloom will encrypt")
	mxc := id.ContentURI{Homeserver: "hs", FileID: "plain"}
	f, err := Plain(context.Background(), media(t, body, true), mxc, opts(t, int64(len(body))))
	require.NoError(t, err)
	got, err := io.ReadAll(f)
	require.NoError(t, err)
	require.Equal(t, body, got)
	require.NoError(t, f.Close())

	o := opts(t, int64(len(body)-1))
	_, err = Plain(context.Background(), media(t, body, true), mxc, o)
	require.ErrorIs(t, err, errCapped)
	requireNothingLeft(t, o)
}

// A homeserver that refuses the download is named in the error, which keeps its Matrix error.
func TestDownloadErrorIsWrapped(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"errcode":"M_NOT_FOUND","error":"gone"}`))
	}))
	t.Cleanup(srv.Close)
	cli, err := mautrix.NewClient(srv.URL, "@u:hs", "token")
	require.NoError(t, err)
	info, _ := encryptedInfo(t, []byte("x"))
	_, err = Encrypted(context.Background(), cli, info, opts(t, 1<<20))
	require.ErrorIs(t, err, mautrix.MNotFound)
	require.ErrorContains(t, err, "failed to download test file")
}
