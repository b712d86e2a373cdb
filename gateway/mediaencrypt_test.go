package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/e2ee"
)

// mediaRepo is a homeserver's media repository: the plaintext files a bridge uploaded, and the
// uploads heirloom makes.
type mediaRepo struct {
	mu      sync.Mutex
	files   map[string][]byte
	uploads map[string][]byte
	// chunked serves downloads without a Content-Length.
	chunked bool
}

func newMediaRepo(t *testing.T, files map[string][]byte) (*mediaRepo, *mautrix.Client) {
	t.Helper()
	repo := &mediaRepo{files: files, uploads: map[string][]byte{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		repo.mu.Lock()
		defer repo.mu.Unlock()
		switch {
		case r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/download/localhost/"):
			data, ok := repo.files[r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]]
			if !ok {
				w.WriteHeader(http.StatusNotFound)
				_, _ = w.Write([]byte(`{"errcode":"M_NOT_FOUND","error":"Not found"}`))
				return
			}
			if repo.chunked {
				w.(http.Flusher).Flush()
			}
			_, _ = w.Write(data)
		case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/upload"):
			body, _ := io.ReadAll(r.Body)
			name := fmt.Sprintf("enc%d", len(repo.uploads))
			repo.uploads[name] = body
			_, _ = fmt.Fprintf(w, `{"content_uri":"mxc://localhost/%s"}`, name)
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`))
		}
	}))
	t.Cleanup(srv.Close)
	cli, err := mautrix.NewClient(srv.URL, "@irc_alice:localhost", "token")
	require.NoError(t, err)
	return repo, cli
}

// uploaded returns the plaintext of the encrypted file the content's info describes.
func (repo *mediaRepo) uploaded(t *testing.T, info any) []byte {
	t.Helper()
	raw, err := json.Marshal(info)
	require.NoError(t, err)
	var file event.EncryptedFileInfo
	require.NoError(t, json.Unmarshal(raw, &file))
	mxc, err := file.URL.Parse()
	require.NoError(t, err)
	repo.mu.Lock()
	ciphertext, ok := repo.uploads[mxc.FileID]
	repo.mu.Unlock()
	require.True(t, ok, "%s was uploaded", file.URL)
	plain := bytes.Clone(ciphertext)
	require.NoError(t, file.DecryptInPlace(plain), "the hash and key of the file info match the upload")
	return plain
}

func mediaGateway(limit int64) *Gateway {
	return &Gateway{cfg: &config.Config{Gateway: config.Gateway{MaxMediaSize: limit}}}
}

func content(t *testing.T, raw string) map[string]any {
	t.Helper()
	var c map[string]any
	require.NoError(t, json.Unmarshal([]byte(raw), &c))
	return c
}

// A bridge's image bound for an encrypted room goes out as an encrypted attachment: the file and
// its thumbnail are fetched, encrypted and uploaded again, and the event names only the encrypted
// uploads (file, info.thumbnail_file), whose keys decrypt them to the bridge's files.
func TestMediaIsEncryptedBeforeTheSend(t *testing.T) {
	picture, thumbnail := bytes.Repeat([]byte("picture "), 1000), []byte("thumbnail")
	repo, cli := newMediaRepo(t, map[string][]byte{"plain": picture, "thumb": thumbnail})
	g := mediaGateway(0)
	c := content(t, `{"msgtype":"m.image","body":"cat.png","url":"mxc://localhost/plain",
		"info":{"mimetype":"image/png","thumbnail_url":"mxc://localhost/thumb","thumbnail_info":{"mimetype":"image/png"}}}`)
	require.NoError(t, g.encryptMedia(context.Background(), &e2ee.Puppet{Client: cli}, event.EventMessage, c))
	require.NotContains(t, c, "url")
	info := c["info"].(map[string]any)
	require.NotContains(t, info, "thumbnail_url")
	require.Equal(t, picture, repo.uploaded(t, c["file"]))
	require.Equal(t, thumbnail, repo.uploaded(t, info["thumbnail_file"]))
	require.Equal(t, "cat.png", c["body"], "the rest of the content stays")
	for name, data := range repo.uploads {
		require.False(t, bytes.Contains(data, []byte("picture")), "%s holds plaintext", name)
	}

	sticker := content(t, `{"body":"wave","url":"mxc://localhost/thumb","info":{}}`)
	require.NoError(t, g.encryptMedia(context.Background(), &e2ee.Puppet{Client: cli}, event.EventSticker, sticker))
	require.Equal(t, thumbnail, repo.uploaded(t, sticker["file"]), "a sticker is media too")
}

// Events without media, or whose url is no media of the homeserver, are left as they are.
func TestOnlyMediaIsReuploaded(t *testing.T) {
	repo, cli := newMediaRepo(t, map[string][]byte{"plain": []byte("x")})
	g := mediaGateway(0)
	for _, raw := range []string{
		`{"msgtype":"m.text","body":"see mxc://localhost/plain","url":"mxc://localhost/plain"}`,
		`{"msgtype":"m.file","body":"link","url":"https://example.org/file"}`,
		`{"msgtype":"m.notice","body":"hello"}`,
	} {
		c := content(t, raw)
		require.NoError(t, g.encryptMedia(context.Background(), &e2ee.Puppet{Client: cli}, event.EventMessage, c))
		require.Equal(t, content(t, raw), c)
	}
	require.Empty(t, repo.uploads)
}

// A file over gateway.max_media_size is refused, whether the homeserver says its size up front or
// not, and so is a file the homeserver does not have or a URL that is no mxc URI: nothing is
// uploaded, and the send does not go out without its media.
func TestMediaThatCannotBeEncryptedIsRefused(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 2048)
	for _, chunked := range []bool{false, true} {
		repo, cli := newMediaRepo(t, map[string][]byte{"big": big, "small": []byte("ok")})
		repo.chunked = chunked
		g := mediaGateway(1024)
		c := content(t, `{"msgtype":"m.video","body":"v","url":"mxc://localhost/big"}`)
		require.ErrorIs(t, g.encryptMedia(context.Background(), &e2ee.Puppet{Client: cli}, event.EventMessage, c), errMediaTooLarge,
			"chunked: %v", chunked)
		thumb := content(t, `{"msgtype":"m.image","body":"i","url":"mxc://localhost/small","info":{"thumbnail_url":"mxc://localhost/big"}}`)
		require.ErrorIs(t, g.encryptMedia(context.Background(), &e2ee.Puppet{Client: cli}, event.EventMessage, thumb), errMediaTooLarge)

		missing := content(t, `{"msgtype":"m.audio","body":"a","url":"mxc://localhost/gone"}`)
		err := g.encryptMedia(context.Background(), &e2ee.Puppet{Client: cli}, event.EventMessage, missing)
		require.ErrorIs(t, err, mautrix.MNotFound)
		require.NotErrorIs(t, err, errMediaTooLarge)
		bad := content(t, `{"msgtype":"m.audio","body":"a","url":"mxc://"}`)
		require.ErrorContains(t, g.encryptMedia(context.Background(), &e2ee.Puppet{Client: cli}, event.EventMessage, bad), "bad media URL")
		require.Len(t, repo.uploads, 1, "only the small file that came first")
	}
}
