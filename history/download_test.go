package history

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// mediaServer serves one encrypted bundle at any download path, failing the first `failures`
// requests with status.
func mediaServer(t *testing.T, body []byte, status int, failures int32) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) <= failures {
			w.WriteHeader(status)
			_, _ = w.Write([]byte(`{"errcode":"M_UNKNOWN","error":"try again"}`))
			return
		}
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

// receivedFixture seals a real bundle of n sessions and returns the received-bundle row for it.
func receivedFixture(t *testing.T, env *benchEnv, n int) (*database.ReceivedBundle, []byte) {
	t.Helper()
	src := env.puppet(t, "sender")
	fillSessions(t, env, src, n)
	sealed, err := keybundle.Seal(env.dir, 1<<20, func(w io.Writer) (keybundle.Counts, error) {
		return env.svc.writeBundle(context.Background(), src, benchRoom, w)
	})
	require.NoError(t, err)
	defer sealed.Close()
	body, err := io.ReadAll(sealed.File)
	require.NoError(t, err)
	sealed.Info.URL = "mxc://localhost/bundle"
	rb := &database.ReceivedBundle{Puppet: "@heirloom_dst:localhost", RoomID: benchRoom, Sender: "@alice:localhost",
		SenderDevice: "ALICEDEV", SenderKey: aliceKey, State: database.ReceivedRetry}
	rb.FileInfo, err = env.mgr.Sealer.SealJSON(receivedOwner(rb), sealed.Info)
	require.NoError(t, err)
	require.NoError(t, env.db.PutReceivedBundle(context.Background(), rb))
	return rb, body
}

// aliceKey is the sender device's Curve25519 key: 43 characters, as PostgreSQL's crypto_device
// column (CHAR(43)) pads any shorter one, which would then not match the bundle's.
const aliceKey = id.SenderKey("YWxpY2Uncy1jdXJ2ZTI1NTE5LWtleS0wMTIzNDU2Nzg")

func pointPuppetAt(t *testing.T, env *benchEnv, url string) *e2ee.Puppet {
	t.Helper()
	p := env.puppet(t, "dst")
	base, err := mautrix.ParseAndNormalizeBaseURL(url)
	require.NoError(t, err)
	p.Client.HomeserverURL = base
	p.Client.DefaultHTTPRetries = 0
	return p
}

// Download failures other than "not found" are retried with a doubling backoff, bounded; the
// bundle is imported once the media answers; M_NOT_FOUND gives up at once.
func TestDownloadRetriesThenImports(t *testing.T) {
	env := newBenchEnv(t)
	env.svc.retryBase = time.Second
	rb, body := receivedFixture(t, env, 20)
	srv, calls := mediaServer(t, body, http.StatusBadGateway, 2)
	p := pointPuppetAt(t, env, srv.URL)
	ctx := context.Background()

	before := time.Now()
	env.svc.downloadAndImport(ctx, p, rb)
	require.Equal(t, database.ReceivedRetry, rb.State)
	require.Equal(t, 1, rb.Attempts)
	require.InDelta(t, before.Add(time.Second).UnixMilli(), rb.NextAttempt, 500, "first retry after the base delay")

	env.svc.downloadAndImport(ctx, p, rb)
	require.Equal(t, database.ReceivedRetry, rb.State)
	require.InDelta(t, time.Now().Add(2*time.Second).UnixMilli(), rb.NextAttempt, 500, "the delay doubles")

	env.svc.downloadAndImport(ctx, p, rb)
	require.Equal(t, database.ReceivedImported, rb.State, rb.Error)
	require.Equal(t, 18, rb.Imported)
	require.Equal(t, 2, rb.Withheld)
	require.EqualValues(t, 3, calls.Load())
}

func TestDownloadGivesUpAfterMaxAttempts(t *testing.T) {
	env := newBenchEnv(t)
	env.svc.maxAttempts = 3
	rb, body := receivedFixture(t, env, 5)
	srv, calls := mediaServer(t, body, http.StatusServiceUnavailable, 100)
	p := pointPuppetAt(t, env, srv.URL)
	for range 3 {
		env.svc.downloadAndImport(context.Background(), p, rb)
	}
	require.Equal(t, database.ReceivedFailed, rb.State)
	require.Contains(t, rb.Error, "gave up after 3 attempts")
	require.EqualValues(t, 3, calls.Load())
}

func TestDownloadNotFoundExpires(t *testing.T) {
	env := newBenchEnv(t)
	rb, body := receivedFixture(t, env, 5)
	srv, calls := mediaServer(t, body, http.StatusNotFound, 100)
	p := pointPuppetAt(t, env, srv.URL)
	env.svc.downloadAndImport(context.Background(), p, rb)
	require.Equal(t, database.ReceivedExpired, rb.State)
	require.EqualValues(t, 1, calls.Load())
	require.Zero(t, rb.NextAttempt, "no retry is scheduled")
}

// A bundle larger than the cap is refused from its Content-Length, before it is read.
func TestDownloadOverCapRefused(t *testing.T) {
	env := newBenchEnv(t)
	rb, body := receivedFixture(t, env, 50)
	env.svc.cfg.HistorySharing.MaxBundleSize = int64(len(body) / 2)
	srv, _ := mediaServer(t, body, http.StatusOK, 0)
	p := pointPuppetAt(t, env, srv.URL)
	env.svc.downloadAndImport(context.Background(), p, rb)
	require.Equal(t, database.ReceivedFailed, rb.State)
	require.Contains(t, rb.Error, "too large")
	require.Zero(t, rb.Imported)
}

// claimAnotherHash makes the bundle's file info (as its Olm message gave it) name another SHA-256
// than the ciphertext's: the file is whole and decrypts to a valid bundle, so only the hash checks
// can tell that it is not the file the sender meant.
func claimAnotherHash(t *testing.T, env *benchEnv, rb *database.ReceivedBundle) *event.EncryptedFileInfo {
	t.Helper()
	var info event.EncryptedFileInfo
	require.NoError(t, env.mgr.Sealer.OpenJSON(receivedOwner(rb), rb.FileInfo, &info))
	other := sha256.Sum256([]byte("another file"))
	info.Hashes.SHA256 = base64.RawStdEncoding.EncodeToString(other[:])
	var err error
	rb.FileInfo, err = env.mgr.Sealer.SealJSON(receivedOwner(rb), &info)
	require.NoError(t, err)
	return &info
}

// heldSessionCount counts the sessions the puppet holds, in any room.
func heldSessionCount(t *testing.T, env *benchEnv, p *e2ee.Puppet) int {
	t.Helper()
	var n int
	require.NoError(t, env.db.Raw.QueryRow(context.Background(),
		`SELECT COUNT(*) FROM crypto_megolm_inbound_session WHERE account_id=$1`, p.UserID.String()).Scan(&n))
	return n
}

// A bundle whose ciphertext does not hash to what its message says is refused, and nothing of it
// is imported.
func TestBundleWithAnotherHashIsNotImported(t *testing.T) {
	env := newBenchEnv(t)
	rb, body := receivedFixture(t, env, 20)
	claimAnotherHash(t, env, rb)
	srv, _ := mediaServer(t, body, http.StatusOK, 0)
	p := pointPuppetAt(t, env, srv.URL)
	env.svc.downloadAndImport(context.Background(), p, rb)
	require.Equal(t, database.ReceivedFailed, rb.State, rb.Error)
	require.Zero(t, rb.Imported)
	require.Zero(t, heldSessionCount(t, env, p), "not one key of the bundle is stored")
}

// The download checks the hash before anything is decrypted, and leaves no file behind.
func TestDownloadChecksTheHash(t *testing.T) {
	env := newBenchEnv(t)
	rb, body := receivedFixture(t, env, 5)
	info := claimAnotherHash(t, env, rb)
	srv, _ := mediaServer(t, body, http.StatusOK, 0)
	p := pointPuppetAt(t, env, srv.URL)
	env.svc.TempDir = t.TempDir()
	_, err := env.svc.download(context.Background(), p, info)
	require.ErrorIs(t, err, errHashMismatch)
	left, err := os.ReadDir(env.svc.TempDir)
	require.NoError(t, err)
	require.Empty(t, left, "the refused download is removed")
}

// The import checks the hash too, once it has read the whole file, and rolls everything back if
// it does not match: whatever reached the importer, a file that is not the sender's is not kept.
func TestImportChecksTheHashAtTheEnd(t *testing.T) {
	env := newBenchEnv(t)
	rb, body := receivedFixture(t, env, 20)
	info := claimAnotherHash(t, env, rb)
	p := pointPuppetAt(t, env, "http://127.0.0.1:1")
	plaintext, err := keybundle.Open(bytes.NewReader(body), info, 1<<20)
	require.NoError(t, err)
	_, err = env.svc.importBundle(context.Background(), p, rb, plaintext, int64(len(body)))
	require.Error(t, err, "the hash does not match")
	require.Zero(t, heldSessionCount(t, env, p), "not one key of the bundle is stored")
	stored, err := env.db.GetReceivedBundle(context.Background(), rb.Puppet, rb.RoomID, rb.Sender)
	require.NoError(t, err)
	require.NotEqual(t, database.ReceivedImported, stored.State)
}

// A download that fails is retried by the running service once its backoff has passed, and the
// bundle is imported when the homeserver answers again.
func TestServiceRetriesAFailedDownload(t *testing.T) {
	ctx := context.Background()
	r := newReceiveRoom(t, testdb.SQLite(t))
	r.env.svc.retryBase = time.Millisecond
	r.invited(t, alice)
	r.arrive(r.sender, r.offer(t, 20))
	r.hs.do(func(hs *deliveryHomeserver) { hs.fail["download"] = http.StatusBadGateway })
	res, err := r.env.svc.Join(ctx, r.dst, benchRoom)
	require.NoError(t, err)
	require.Equal(t, database.ReceivedRetry, res.Bundle.State)
	// At least the join's own attempt (the join's sweep may have tried it once before it).
	require.GreaterOrEqual(t, res.Bundle.Attempts, 1)
	require.Contains(t, res.History, "retrying")

	r.hs.do(func(hs *deliveryHomeserver) { delete(hs.fail, "download") })
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		r.env.svc.Run(runCtx)
	}()
	t.Cleanup(func() {
		stop()
		<-ran
	})
	r.env.svc.wake <- struct{}{}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		b := r.stored(t, alice)
		assert.Equal(c, database.ReceivedImported, b.State, b.Error)
	}, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, 18, r.stored(t, alice).Imported)
}

// An accepted bundle a restart interrupted (its download failed, or never began) is imported at
// the next start, within the accept window; past it, the invite's acceptance is dropped and the
// bundle expires.
func TestRestartImportsAnAcceptedBundle(t *testing.T) {
	for _, tc := range []struct {
		name   string
		window time.Duration
		state  string
	}{
		{"within the accept window", 24 * time.Hour, database.ReceivedImported},
		{"past the accept window", time.Nanosecond, database.ReceivedExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dbCfg := testdb.SQLite(t)
			r := newReceiveRoom(t, dbCfg)
			r.invited(t, alice)
			r.arrive(r.sender, r.offer(t, 20))
			r.hs.do(func(hs *deliveryHomeserver) { hs.fail["download"] = http.StatusBadGateway })
			_, err := r.env.svc.Join(ctx, r.dst, benchRoom)
			require.NoError(t, err)
			r.hs.do(func(hs *deliveryHomeserver) { delete(hs.fail, "download") })

			restarted := newBenchEnvAt(t, dbCfg, r.hs.URL)
			restarted.svc.cfg.HistorySharing.AcceptWindow = tc.window
			done, cancel := context.WithCancel(ctx)
			cancel()
			restarted.svc.Run(done)
			b, err := restarted.db.GetReceivedBundle(ctx, r.dst.UserID, benchRoom, alice)
			require.NoError(t, err)
			require.Equal(t, tc.state, b.State, b.Error)
		})
	}
}
