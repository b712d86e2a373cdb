package history

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

const benchRoom = id.RoomID("!bench:localhost")

// benchEnv is a real SQLite database with a service and puppets, no homeserver.
type benchEnv struct {
	db  *database.Database
	mgr *e2ee.Manager
	svc *Service
	dir string
}

func newBenchEnv(tb testing.TB) *benchEnv {
	tb.Helper()
	dbCfg := testdb.SQLite(tb)
	dbCfg.MaxIdleConns = 2
	return newBenchEnvOn(tb, dbCfg)
}

// newBenchEnvOn is newBenchEnv on the given database (see internal/testdb).
func newBenchEnvOn(tb testing.TB, dbCfg config.Database) *benchEnv {
	tb.Helper()
	dir := tb.TempDir()
	cfg := &config.Config{
		Homeserver:     config.Homeserver{Address: "http://127.0.0.1:1", Domain: "localhost"},
		AppService:     config.AppService{ASToken: "bench-as-token-0123456789", PuppetPrefix: "heirloom_", BotUsername: "bot"},
		Database:       dbCfg,
		Encryption:     config.Encryption{PickleKey: "bench-pickle-key-0123456789"},
		HistorySharing: config.HistorySharing{AcceptWindow: 24 * time.Hour, MaxBundleSize: 1 << 30},
	}
	db, err := database.Open(cfg.Database, zerolog.Nop())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	if err = db.Upgrade(context.Background()); err != nil {
		tb.Fatal(err)
	}
	mgr, err := e2ee.NewManager(cfg, db, http.DefaultClient, zerolog.Nop())
	if err != nil {
		tb.Fatal(err)
	}
	svc := NewService(cfg, db, mgr)
	mgr.OnRoomKeyBundle = svc.ReceiveBundle
	svc.TempDir = dir
	return &benchEnv{db: db, mgr: mgr, svc: svc, dir: dir}
}

// storedBundle records a received bundle from sender for the puppet in benchRoom, as arriving over
// Olm would: an import saves its final state on that row.
func storedBundle(tb testing.TB, env *benchEnv, puppet, sender id.UserID) *database.ReceivedBundle {
	tb.Helper()
	rb := &database.ReceivedBundle{Puppet: puppet, RoomID: benchRoom, Sender: sender, SenderDevice: "SENDERDEV",
		SenderKey: "alicekey", State: database.ReceivedPending}
	if err := env.db.PutReceivedBundle(context.Background(), rb); err != nil {
		tb.Fatal(err)
	}
	return rb
}

func (b *benchEnv) puppet(tb testing.TB, name string) *e2ee.Puppet {
	tb.Helper()
	p, err := b.mgr.LocalPuppet(context.Background(), id.UserID("@heirloom_"+name+":localhost"), id.DeviceID("DEV"+name))
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// fillSessions stores n valid megolm sessions in the room for the puppet: 90 % shared, 10 % not.
func fillSessions(tb testing.TB, b *benchEnv, p *e2ee.Puppet, n int) {
	tb.Helper()
	ctx := context.Background()
	// 50 senders with real keys: the reference implementation validates them on import.
	senderKeys := make([]id.SenderKey, 50)
	signingKeys := make([]id.Ed25519, 50)
	for i := range senderKeys {
		curve := make([]byte, 32)
		_, _ = rand.Read(curve)
		senderKeys[i] = id.SenderKey(base64.RawStdEncoding.EncodeToString(curve))
		pub, _, _ := ed25519.GenerateKey(rand.Reader)
		signingKeys[i] = id.Ed25519(base64.RawStdEncoding.EncodeToString(pub))
	}
	err := b.db.Raw.DoTxn(ctx, nil, func(ctx context.Context) error {
		for i := 0; i < n; i++ {
			ogs, err := olm.NewOutboundGroupSession()
			if err != nil {
				return err
			}
			shared := i%10 != 0
			igs, err := crypto.NewInboundGroupSession(senderKeys[i%50], signingKeys[i%50],
				benchRoom, ogs.Key(), 7*24*time.Hour, 100, &shared, false)
			if err != nil {
				return err
			}
			if err = p.Store.PutGroupSession(ctx, igs); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// benchSizes are the session counts, from HEIRLOOM_BENCH_SIZES (comma-separated; default 1000,10000).
func benchSizes() []int {
	raw := os.Getenv("HEIRLOOM_BENCH_SIZES")
	if raw == "" {
		return []int{1_000, 10_000}
	}
	var out []int
	for _, f := range strings.Split(raw, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

// writeFixture exports the room's sessions as a key export (what `make bench` hands the reference
// implementation, so both sides work on the same sessions). The flag goes under the stable name
// and the unstable one rust-sdk reads in exports.
func writeFixture(tb testing.TB, p *e2ee.Puppet, n int) {
	dir := os.Getenv("HEIRLOOM_BENCH_FIXTURES")
	if dir == "" {
		return
	}
	f, err := os.Create(filepath.Join(dir, fmt.Sprintf("fixture-%d.json", n)))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	_, _ = w.WriteString("[")
	first := true
	err = p.Store.GetGroupSessionsForRoom(context.Background(), benchRoom).Iter(func(igs *crypto.InboundGroupSession) (bool, error) {
		key, err := igs.Internal.Export(igs.Internal.FirstKnownIndex())
		if err != nil {
			return false, err
		}
		shared := igs.SharedHistory != nil && *igs.SharedHistory
		entry := map[string]any{
			"algorithm": id.AlgorithmMegolmV1, "room_id": igs.RoomID, "sender_key": igs.SenderKey, "session_id": igs.ID(),
			"session_key": string(key), "sender_claimed_keys": map[string]any{"ed25519": igs.SigningKey},
			"forwarding_curve25519_key_chain": []string{},
		}
		for k, v := range keybundle.SendFlagFields(shared) {
			entry[k] = v
		}
		data, err := json.Marshal(entry)
		if err != nil {
			return false, err
		}
		if !first {
			_, _ = w.WriteString(",")
		}
		first = false
		_, err = w.Write(data)
		return err == nil, err
	})
	if err != nil {
		tb.Fatal(err)
	}
	_, _ = w.WriteString("]")
	if err = w.Flush(); err != nil {
		tb.Fatal(err)
	}
}

// durations collects per-iteration times to report their median.
type durations []time.Duration

func (d durations) median() time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// peakHeap samples the heap while fn runs and returns the largest growth over the heap before it.
func peakHeap(fn func()) uint64 {
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	stop := make(chan struct{})
	peak := make(chan uint64)
	go func() {
		var max uint64
		var ms runtime.MemStats
		ticker := time.NewTicker(2 * time.Millisecond)
		defer ticker.Stop()
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > max {
				max = ms.HeapInuse
			}
			select {
			case <-stop:
				peak <- max
				return
			case <-ticker.C:
			}
		}
	}()
	fn()
	close(stop)
	max := <-peak
	if max < before.HeapInuse {
		return 0
	}
	return max - before.HeapInuse
}

// BenchmarkBuildBundle builds and encrypts the bundle of a room with N sessions from SQLite, as an
// invite does before uploading.
func BenchmarkBuildBundle(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) {
			env := newBenchEnv(b)
			p := env.puppet(b, "builder")
			fillSessions(b, env, p, n)
			writeFixture(b, p, n)
			ctx := context.Background()
			b.ResetTimer()
			var size int64
			var peak uint64
			var times durations
			build := func() {
				sealed, err := keybundle.Seal(env.dir, 1<<30, func(w io.Writer) (keybundle.Counts, error) {
					return env.svc.writeBundle(ctx, p, benchRoom, w)
				})
				if err != nil {
					b.Fatal(err)
				}
				if sealed.Counts.Sessions != n*9/10 || sealed.Counts.Withheld != n/10 {
					b.Fatalf("bundle holds %+v", sealed.Counts)
				}
				size = sealed.Size
				_ = sealed.Close()
			}
			for i := 0; i < b.N; i++ {
				start := time.Now()
				build()
				times = append(times, time.Since(start))
			}
			// Memory is sampled in one extra, untimed build: sampling stops the world.
			b.StopTimer()
			peak = peakHeap(build)
			b.ReportMetric(float64(size), "bundle-bytes")
			b.ReportMetric(float64(peak), "peak-heap-bytes")
			b.ReportMetric(float64(times.median().Microseconds())/1000, "median-ms")
		})
	}
}

// BenchmarkImportBundle imports a decrypted bundle of N sessions into a fresh puppet's SQLite store.
func BenchmarkImportBundle(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) {
			env := newBenchEnv(b)
			src := env.puppet(b, "source")
			fillSessions(b, env, src, n)
			var plain bytes.Buffer
			counts, err := env.svc.writeBundle(context.Background(), src, benchRoom, &plain)
			if err != nil {
				b.Fatal(err)
			}
			importOnce := func(dst *e2ee.Puppet, rb *database.ReceivedBundle) {
				res, err := env.svc.importBundle(context.Background(), dst, rb, io.NopCloser(bytes.NewReader(plain.Bytes())))
				if err != nil {
					b.Fatal(err)
				}
				if res.imported != counts.Sessions || res.withheld != counts.Withheld {
					b.Fatalf("imported %+v of %+v", res, counts)
				}
			}
			b.ResetTimer()
			var times durations
			var peak uint64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				dst := env.puppet(b, fmt.Sprintf("dst%d", i))
				rb := storedBundle(b, env, dst.UserID, "@alice:localhost")
				b.StartTimer()
				start := time.Now()
				importOnce(dst, rb)
				times = append(times, time.Since(start))
			}
			// Memory is sampled in one extra, untimed import: sampling stops the world.
			b.StopTimer()
			dst := env.puppet(b, "dst-memory")
			peak = peakHeap(func() {
				importOnce(dst, storedBundle(b, env, dst.UserID, "@alice:localhost"))
			})
			b.ReportMetric(float64(peak), "peak-heap-bytes")
			b.ReportMetric(float64(times.median().Microseconds())/1000, "median-ms")
		})
	}
}
