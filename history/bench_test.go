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
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
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
	return newBenchEnvAt(tb, dbCfg, "http://127.0.0.1:1")
}

// newBenchEnvAt is newBenchEnvOn with its homeserver at hsURL.
func newBenchEnvAt(tb testing.TB, dbCfg config.Database, hsURL string) *benchEnv {
	tb.Helper()
	env, err := openBenchEnvAt(tb.TempDir(), dbCfg, hsURL)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(env.close)
	return env
}

// openBenchEnv opens (and migrates) a fresh SQLite database in dir; close ends it.
// HEIRLOOM_BENCH_SQLITE_PARAMS (e.g. "&_cache_size=-65536") is appended to the SQLite URI, to
// measure connection settings.
func openBenchEnv(dir string) (*benchEnv, error) {
	return openBenchEnvAt(dir, config.Database{Type: "sqlite3-fk-wal",
		URI:          "file:" + filepath.Join(dir, "bench.db") + "?_txlock=immediate" + os.Getenv("HEIRLOOM_BENCH_SQLITE_PARAMS"),
		MaxOpenConns: 5, MaxIdleConns: 2}, "http://127.0.0.1:1")
}

// openBenchEnvAt opens (and migrates) the database, with the homeserver at hsURL.
func openBenchEnvAt(dir string, dbCfg config.Database, hsURL string) (*benchEnv, error) {
	cfg := &config.Config{
		Homeserver:     config.Homeserver{Address: hsURL, Domain: "localhost"},
		AppService:     config.AppService{ASToken: "bench-as-token-0123456789", PuppetPrefix: "heirloom_", BotUsername: "bot"},
		Database:       dbCfg,
		Encryption:     config.Encryption{PickleKey: "bench-pickle-key-0123456789"},
		HistorySharing: config.HistorySharing{AcceptWindow: 24 * time.Hour, MaxBundleSize: 1 << 30},
	}
	db, err := database.Open(cfg.Database, zerolog.Nop())
	if err != nil {
		return nil, err
	}
	if err = db.Upgrade(context.Background()); err != nil {
		db.Close()
		return nil, err
	}
	e2ee.RegisterContentTypes()
	mgr, err := e2ee.NewManager(cfg, db, http.DefaultClient, zerolog.Nop())
	if err != nil {
		db.Close()
		return nil, err
	}
	svc := NewService(cfg, db, mgr)
	mgr.OnRoomKeyBundle = svc.ReceiveBundle
	svc.TempDir = dir
	return &benchEnv{db: db, mgr: mgr, svc: svc, dir: dir}, nil
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

func (b *benchEnv) close() { _ = b.db.Close() }

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

// procStatusBytes reads a field of /proc/self/status (kB) in bytes; 0 if unreadable.
func procStatusBytes(field string) uint64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// resetPeakRSS returns freed heap to the OS and resets the kernel's peak-RSS mark (VmHWM), so the
// next VmHWM reading covers what runs from here on; it returns the RSS after the reset. Every side
// of `make bench` measures memory this way, around its first (warm-up) operation.
func resetPeakRSS(tb testing.TB) uint64 {
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		tb.Logf("cannot reset the peak RSS mark (%v): the peak covers the setup too", err)
	}
	return procStatusBytes("VmRSS")
}

// benchResult is one side's figures for one operation and size, in the JSON every side of
// `make bench` writes (scripts/benchtable reads them).
type benchResult struct {
	Impl           string    `json:"impl"`
	Side           string    `json:"side"`
	Op             string    `json:"op"`
	Sessions       int       `json:"sessions"`
	WarmupMS       float64   `json:"warmup_ms"`
	RunsMS         []float64 `json:"runs_ms"`
	MedianMS       float64   `json:"median_ms"`
	RoomKeys       int       `json:"room_keys"`
	Withheld       int       `json:"withheld"`
	BundleBytes    int64     `json:"bundle_bytes"`
	RSSBeforeBytes uint64    `json:"rss_before_bytes"`
	RSSPeakBytes   uint64    `json:"rss_peak_bytes"`
	// The CPU time of each timed run (every thread), and (import only) how long its WAL
	// checkpoint took after it returned (outside the timed window).
	CPUMS        []float64 `json:"cpu_ms,omitempty"`
	CheckpointMS []float64 `json:"checkpoint_after_ms,omitempty"`
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func medianMS(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// benchState is one size's setup, kept across the calls the testing package makes with growing
// b.N (N=1 first, then -benchtime's count): the N=1 call is the warm-up (and the memory
// measurement), the next call's operations are the timed runs.
type benchState struct {
	dir    string
	env    *benchEnv
	p      *e2ee.Puppet
	plain  string           // import: the file holding the decrypted bundle
	size   int64            // import: its size
	counts keybundle.Counts // import: what the bundle holds
	warm   *benchResult
	next   int
}

var benchStates = map[string]*benchState{}

func benchStateFor(b *testing.B, key string, setup func(st *benchState)) *benchState {
	if st := benchStates[key]; st != nil {
		return st
	}
	dir, err := os.MkdirTemp("", "heirloom-bench-")
	if err != nil {
		b.Fatal(err)
	}
	st := &benchState{dir: dir}
	setup(st)
	benchStates[key] = st
	return st
}

// TestMain removes what the benchmarks kept across calls.
func TestMain(m *testing.M) {
	code := m.Run()
	for _, st := range benchStates {
		if st.env != nil {
			st.env.close()
		}
		_ = os.RemoveAll(st.dir)
	}
	os.Exit(code)
}

// report records a call's operations: the first call's single one as the warm-up, a later call's as
// the runs, and writes the result for scripts/benchtable when HEIRLOOM_BENCH_RESULTS is set.
func (st *benchState) report(b *testing.B, res benchResult, times []float64, rssBefore, rssPeak uint64) {
	if st.warm == nil {
		res.WarmupMS = times[0]
		res.RSSBeforeBytes, res.RSSPeakBytes = rssBefore, rssPeak
		st.warm = &res
		return
	}
	res.WarmupMS, res.RSSBeforeBytes, res.RSSPeakBytes = st.warm.WarmupMS, st.warm.RSSBeforeBytes, st.warm.RSSPeakBytes
	res.RunsMS = times
	res.MedianMS = medianMS(times)
	b.ReportMetric(res.MedianMS, "median-ms")
	b.ReportMetric(float64(res.RSSPeakBytes-min(res.RSSPeakBytes, res.RSSBeforeBytes)), "peak-rss-growth-bytes")
	if res.BundleBytes > 0 {
		b.ReportMetric(float64(res.BundleBytes), "bundle-bytes")
	}
	dir := os.Getenv("HEIRLOOM_BENCH_RESULTS")
	if dir == "" {
		return
	}
	data, err := json.Marshal(res)
	if err != nil {
		b.Fatal(err)
	}
	name := filepath.Join(dir, fmt.Sprintf("heirloom-%s-%d.json", res.Op, res.Sessions))
	if err = os.WriteFile(name, append(data, '\n'), 0o600); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkBuildBundle builds and encrypts the bundle of a room with N sessions from SQLite, as an
// invite does before uploading: export, JSON, AES-CTR and SHA-256 into a temporary file.
func BenchmarkBuildBundle(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) {
			st := benchStateFor(b, fmt.Sprint("build", n), func(st *benchState) {
				env, err := openBenchEnv(st.dir)
				if err != nil {
					b.Fatal(err)
				}
				st.env, st.p = env, env.puppet(b, "builder")
				fillSessions(b, env, st.p, n)
				writeFixture(b, st.p, n)
			})
			ctx := context.Background()
			var sealed *keybundle.Sealed
			build := func() {
				var err error
				sealed, err = keybundle.Seal(st.env.dir, 1<<30, func(w io.Writer) (keybundle.Counts, error) {
					return st.env.svc.writeBundle(ctx, st.p, benchRoom, w)
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			var rssBefore, rssPeak uint64
			first := st.warm == nil
			if first {
				rssBefore = resetPeakRSS(b)
			}
			times := make([]float64, 0, b.N)
			var res benchResult
			var cpu []float64
			for i := 0; i < b.N; i++ {
				st.next++
				stopProfile := profileRun(b, !first, "build", st.next)
				cpuStart := cpuTime()
				b.StartTimer()
				start := time.Now()
				build()
				elapsed := time.Since(start)
				b.StopTimer()
				cpu = append(cpu, millis(cpuTime()-cpuStart))
				stopProfile()
				if first && i == 0 {
					rssPeak = procStatusBytes("VmHWM")
				}
				times = append(times, millis(elapsed))
				if sealed.Counts.Sessions != n*9/10 || sealed.Counts.Withheld != n/10 {
					b.Fatalf("bundle holds %+v", sealed.Counts)
				}
				res = benchResult{Impl: "heirloom (goolm, SQLite)", Side: "heirloom", Op: "build", Sessions: n,
					RoomKeys: sealed.Counts.Sessions, Withheld: sealed.Counts.Withheld, BundleBytes: sealed.Size, CPUMS: cpu}
				_ = sealed.Close()
			}
			if !first {
				b.ReportMetric(medianMS(cpu), "median-cpu-ms")
			}
			st.report(b, res, times, rssBefore, rssPeak)
		})
	}
}

// cpuTime is the CPU time (user and system, every thread) the process has used so far: beside the
// wall time it tells the work done from the time lost to other processes on the machine.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// profileRun writes a CPU profile of one timed operation (garbage collection included, setup left
// out) to $HEIRLOOM_BENCH_CPUPROFILE-<op>-<sessions>-<run>.prof when that is set; go tool pprof
// merges several.
func profileRun(b *testing.B, timed bool, op string, run int) (stop func()) {
	prefix := os.Getenv("HEIRLOOM_BENCH_CPUPROFILE")
	if prefix == "" || !timed {
		return func() {}
	}
	f, err := os.Create(fmt.Sprintf("%s-%s-%s-%d.prof", prefix, op, strings.TrimPrefix(b.Name()[strings.LastIndexByte(b.Name(), '/')+1:], "sessions="), run))
	if err != nil {
		b.Fatal(err)
	}
	if err = pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}
}

// BenchmarkImportBundle imports a decrypted bundle of N sessions into a fresh puppet in a fresh
// SQLite database (the reference sides too start each import on a fresh store). It writes the
// bundle it imports to HEIRLOOM_BENCH_FIXTURES, for the reference sides to import the same bytes.
func BenchmarkImportBundle(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) {
			st := benchStateFor(b, fmt.Sprint("import", n), func(st *benchState) {
				env, err := openBenchEnv(st.dir)
				if err != nil {
					b.Fatal(err)
				}
				defer env.close()
				src := env.puppet(b, "source")
				fillSessions(b, env, src, n)
				var plain bytes.Buffer
				if st.counts, err = env.svc.writeBundle(context.Background(), src, benchRoom, &plain); err != nil {
					b.Fatal(err)
				}
				// The import reads the plaintext from a file, as heirloom does after downloading and
				// decrypting a bundle: the bundle is not held in memory (nor counted in the RSS).
				st.plain, st.size = filepath.Join(st.dir, "bundle.json"), int64(plain.Len())
				if err = os.WriteFile(st.plain, plain.Bytes(), 0o600); err != nil {
					b.Fatal(err)
				}
				if dir := os.Getenv("HEIRLOOM_BENCH_FIXTURES"); dir != "" {
					if err = os.WriteFile(filepath.Join(dir, fmt.Sprintf("bundle-%d.json", n)), plain.Bytes(), 0o600); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.StopTimer()
			var rssBefore, rssPeak uint64
			first := st.warm == nil
			times := make([]float64, 0, b.N)
			var cpu, checkpoints []float64
			var res importResult
			for i := 0; i < b.N; i++ {
				dir := filepath.Join(st.dir, fmt.Sprint("dst", st.next))
				st.next++
				if err := os.Mkdir(dir, 0o700); err != nil {
					b.Fatal(err)
				}
				env, err := openBenchEnv(dir)
				if err != nil {
					b.Fatal(err)
				}
				dst := env.puppet(b, "dst")
				rb := storedBundle(b, env, dst.UserID, "@alice:localhost")
				if first && i == 0 {
					rssBefore = resetPeakRSS(b)
				}
				stopProfile := profileRun(b, !first, "import", st.next)
				cpuStart := cpuTime()
				b.StartTimer()
				start := time.Now()
				f, err := os.Open(st.plain)
				if err != nil {
					b.Fatal(err)
				}
				info, err := f.Stat()
				if err != nil {
					b.Fatal(err)
				}
				res, err = env.svc.importBundle(context.Background(), dst, rb, f, info.Size())
				elapsed := time.Since(start)
				b.StopTimer()
				cpu = append(cpu, millis(cpuTime()-cpuStart))
				stopProfile()
				if first && i == 0 {
					rssPeak = procStatusBytes("VmHWM")
				}
				if err != nil {
					b.Fatal(err)
				}
				if res.imported != st.counts.Sessions || res.withheld != st.counts.Withheld {
					b.Fatalf("imported %+v of %+v", res, st.counts)
				}
				times = append(times, millis(elapsed))
				// The import is durable when it returns; its WAL checkpoint runs after it, in the
				// background (database.DoBulkTxn). Timed apart, and reported.
				ckStart := time.Now()
				env.db.WaitCheckpoints()
				checkpoints = append(checkpoints, millis(time.Since(ckStart)))
				env.close()
				_ = os.RemoveAll(dir)
			}
			if !first {
				b.ReportMetric(medianMS(cpu), "median-cpu-ms")
				b.ReportMetric(medianMS(checkpoints), "median-checkpoint-after-ms")
			}
			st.report(b, benchResult{Impl: "heirloom (goolm, SQLite)", Side: "heirloom", Op: "import", Sessions: n,
				RoomKeys: res.imported, Withheld: res.withheld, BundleBytes: st.size, CPUMS: cpu, CheckpointMS: checkpoints},
				times, rssBefore, rssPeak)
		})
	}
}
