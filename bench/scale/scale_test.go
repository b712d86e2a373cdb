// Package scale measures heirloom with many puppets (make bench-scale): provisioning them, the
// database they fill, the start of a process that holds them, and its memory idle and with their
// machines loaded. The homeserver is an in-process fake that answers at once (fakehs_test.go), so
// that these are heirloom's own figures; the homeserver's side (Synapse's time and storage per
// puppet) is measured against the real Synapse in the e2e package (BenchmarkProvisionSynapse).
package scale

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
)

const (
	asToken   = "scale-as-token-0123456789abcdef"
	hsToken   = "scale-hs-token-0123456789abcdef"
	pickleKey = "scale-pickle-key-0123456789abcdef"
	apiSecret = "scale-api-secret-0123456789abcdef"
	domain    = "localhost"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "heirloom-scale-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "heirloom")
	build := exec.Command("go", "build", "-tags=goolm", "-o", binary, ".")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// sizes is HEIRLOOM_SCALE_SIZES: the puppet counts measured (default 1,000 and 10,000).
func sizes() []int {
	var out []int
	for _, s := range strings.Split(cmpOr(os.Getenv("HEIRLOOM_SCALE_SIZES"), "1000,10000"), ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// databaseFor is the database of one size's run: SQLite, or PostgreSQL with
// HEIRLOOM_SCALE_DB=postgres (on HEIRLOOM_TEST_POSTGRES's server).
func databaseFor(b *testing.B) config.Database {
	if os.Getenv("HEIRLOOM_SCALE_DB") == "postgres" {
		cfg := testdb.Postgres(b)
		cfg.MaxOpenConns = 10
		return cfg
	}
	cfg := testdb.SQLite(b)
	cfg.MaxOpenConns = 10
	if n, err := strconv.Atoi(os.Getenv("HEIRLOOM_SCALE_CONNS")); err == nil && n > 0 {
		cfg.MaxOpenConns = n
	}
	return cfg
}

func testConfig(hsURL string, db config.Database, port int) *config.Config {
	return &config.Config{
		Homeserver: config.Homeserver{Address: hsURL, Domain: domain},
		AppService: config.AppService{Address: fmt.Sprintf("http://127.0.0.1:%d", port), Hostname: "127.0.0.1", Port: port,
			ID: "scale", BotUsername: "scalebot", PuppetPrefix: "heirloom_", ASToken: asToken, HSToken: hsToken},
		Database:       db,
		Encryption:     config.Encryption{PickleKey: pickleKey},
		Provisioning:   config.Provisioning{SharedSecret: apiSecret},
		HistorySharing: config.HistorySharing{AcceptWindow: 24 * time.Hour, MaxBundleSize: 1 << 20},
		Logging:        config.Logging{Level: "info", Format: "json"},
	}
}

func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func puppetID(i int) id.UserID { return id.UserID(fmt.Sprintf("@heirloom_scale%07d:%s", i, domain)) }

// BenchmarkScale provisions each size's puppets against the fake homeserver, then starts a
// heirloom process on them and loads their machines. Run it with -benchtime 1x.
func BenchmarkScale(b *testing.B) {
	for _, n := range sizes() {
		b.Run(fmt.Sprintf("puppets=%d", n), func(b *testing.B) {
			for range b.N {
				measureScale(b, n)
			}
		})
	}
}

func measureScale(b *testing.B, n int) {
	port := freePort()
	hs := newFakeHomeserver(b, hsToken)
	hs.appURL = fmt.Sprintf("http://127.0.0.1:%d", port)
	cfg := testConfig(hs.URL, databaseFor(b), port)
	emptySize := provisionPuppets(b, cfg, hs, n)

	p := startProcess(b, cfg)
	p.waitLog(b, "heirloom is running", time.Minute)
	b.ReportMetric(p.readyAfter.Seconds(), "startup-s")
	b.Logf("startup with %d idle puppets: ready after %s; %s", n, p.readyAfter.Round(time.Millisecond), formatCounts(hs.counts(), 0))
	time.Sleep(3 * time.Second)
	idle := p.rss(b)
	b.ReportMetric(float64(idle)/(1<<20), "idle-rss-MB")
	b.Logf("RSS with %d puppets provisioned, none loaded: %.1f MB", n, float64(idle)/(1<<20))

	loaded := 0
	for _, target := range []int{1000, 10000} {
		if target > n {
			break
		}
		start := time.Now()
		p.load(b, loaded, target)
		took, count := time.Since(start), target-loaded
		loaded = target
		time.Sleep(2 * time.Second)
		rss := p.rss(b)
		per := float64(rss-idle) / float64(target)
		b.ReportMetric(float64(rss)/(1<<20), fmt.Sprintf("rss-MB-%d-loaded", target))
		b.ReportMetric(per/1024, fmt.Sprintf("KB-per-loaded-%d", target))
		b.Logf("%d more machines loaded in %s (%.2f ms each): RSS %.1f MB with %d loaded, %.1f KB per loaded puppet; device checks on load: %s",
			count, took.Round(time.Millisecond), float64(took.Microseconds())/1000/float64(count), float64(rss)/(1<<20), target, per/1024,
			formatCounts(hs.counts(), count))
	}
	p.stop(b)
	if w := p.warnings(); len(w) > 0 {
		b.Logf("the process logged warnings: %v", w)
	}
	size := databaseSize(b, cfg.Database)
	b.ReportMetric(float64(size-emptySize)/float64(n), "db-bytes/puppet")
	b.Logf("database: %.1f MB for %d puppets, %.0f bytes per puppet", float64(size)/(1<<20), n, float64(size-emptySize)/float64(n))

	// The same start with every puppet active within a day: the startup device check asks about
	// each of them, in the background.
	markActive(b, cfg.Database)
	p = startProcess(b, cfg)
	checked := p.waitLog(b, "Checked the devices of the puppets active within a day", 30*time.Minute)
	b.ReportMetric(p.readyAfter.Seconds(), "startup-all-active-s")
	b.Logf("startup with %d puppets all active within a day: ready after %s; their device check took %vms in the background; %s",
		n, p.readyAfter.Round(time.Millisecond), checked["took"], formatCounts(hs.counts(), 0))
	p.stop(b)
}

// provisionPuppets provisions n puppets through heirloom's manager, as the API does, on as many
// goroutines as there are cores, then marks them idle (last active two days ago). It returns the
// size of the database before them.
func provisionPuppets(b *testing.B, cfg *config.Config, hs *fakeHomeserver, n int) int64 {
	ctx := context.Background()
	log := zerolog.Nop()
	db, err := database.Open(cfg.Database, log)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if err = db.Upgrade(ctx); err != nil {
		b.Fatal(err)
	}
	empty := databaseSize(b, cfg.Database)
	e2ee.RegisterContentTypes()
	mgr, err := e2ee.NewManager(cfg, db, &http.Client{Timeout: time.Minute}, log)
	if err != nil {
		b.Fatal(err)
	}
	hs.counts()
	var next atomic.Int64
	var wg sync.WaitGroup
	cpu := cpuTime()
	start := time.Now()
	errs := make(chan error, 1)
	// SQLite has one writer, and its lock's busy waits make a second goroutine slower, not faster.
	workers := 1
	if cfg.Database.Type == "postgres" {
		workers = runtime.GOMAXPROCS(0)
	}
	if w, err := strconv.Atoi(os.Getenv("HEIRLOOM_SCALE_WORKERS")); err == nil && w > 0 {
		workers = w
	}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)); i <= n; i = int(next.Add(1)) {
				if _, err := mgr.Provision(ctx, puppetID(i), ""); err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	took, cpuUsed := time.Since(start), cpuTime()-cpu
	select {
	case err = <-errs:
		b.Fatal(err)
	default:
	}
	if err = mgr.Shutdown(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(took.Microseconds())/1000/float64(n), "provision-ms/puppet")
	b.ReportMetric(float64(cpuUsed.Microseconds())/1000/float64(n), "provision-cpu-ms/puppet")
	b.Logf("provisioned %d puppets in %s on %d goroutines: %.2f ms each (%.2f ms of CPU, heirloom and the fake homeserver); %s",
		n, took.Round(time.Millisecond), workers, float64(took.Microseconds())/1000/float64(n), float64(cpuUsed.Microseconds())/1000/float64(n),
		formatCounts(hs.counts(), n))
	if _, err = db.Raw.Exec(ctx, `UPDATE puppet SET last_active_at=$1`, time.Now().Add(-48*time.Hour).UnixMilli()); err != nil {
		b.Fatal(err)
	}
	return empty
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func markActive(b *testing.B, cfg config.Database) {
	db := openSQL(b, cfg)
	defer db.Close()
	if _, err := db.Exec(`UPDATE puppet SET last_active_at=` + strconv.FormatInt(time.Now().UnixMilli(), 10)); err != nil {
		b.Fatal(err)
	}
}

func openSQL(b *testing.B, cfg config.Database) *sql.DB {
	driver, uri := "postgres", cfg.URI
	if cfg.Type != "postgres" {
		driver = "sqlite3"
	}
	db, err := sql.Open(driver, uri)
	if err != nil {
		b.Fatal(err)
	}
	return db
}

// databaseSize is the database's size on disk: SQLite's file after a checkpoint of its WAL, or
// PostgreSQL's database.
func databaseSize(b *testing.B, cfg config.Database) int64 {
	db := openSQL(b, cfg)
	defer db.Close()
	if cfg.Type == "postgres" {
		var size int64
		if err := db.QueryRow(`SELECT pg_database_size(current_database())`).Scan(&size); err != nil {
			b.Fatal(err)
		}
		return size
	}
	if _, err := db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		b.Fatal(err)
	}
	var pages, pageSize int64
	if err := db.QueryRow(`PRAGMA page_count`).Scan(&pages); err != nil {
		b.Fatal(err)
	}
	if err := db.QueryRow(`PRAGMA page_size`).Scan(&pageSize); err != nil {
		b.Fatal(err)
	}
	return pages * pageSize
}

// process is a heirloom process of the benchmark.
type process struct {
	cmd        *exec.Cmd
	exited     chan struct{}
	cfg        *config.Config
	log        string
	readyAfter time.Duration
}

// startProcess starts heirloom on cfg and waits until it is ready (GET /ready answers 200).
func startProcess(b *testing.B, cfg *config.Config) *process {
	dir := b.TempDir()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(configYAML(cfg)), 0o600); err != nil {
		b.Fatal(err)
	}
	p := &process{cfg: cfg, log: filepath.Join(dir, "heirloom.log")}
	logFile, err := os.Create(p.log)
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close()
	p.cmd = exec.Command(binary, "-c", path)
	p.cmd.Stdout, p.cmd.Stderr, p.cmd.Dir = logFile, logFile, dir
	start := time.Now()
	if err = p.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p.exited = make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	b.Cleanup(func() { p.stop(b) })
	ready := fmt.Sprintf("http://127.0.0.1:%d/_heirloom/v1/ready", cfg.AppService.Port)
	for time.Since(start) < 5*time.Minute {
		if resp, err := http.Get(ready); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				p.readyAfter = time.Since(start)
				return p
			}
		}
		select {
		case <-p.exited:
			data, _ := os.ReadFile(p.log)
			b.Fatalf("heirloom exited:\n%s", data)
		case <-time.After(20 * time.Millisecond):
		}
	}
	data, _ := os.ReadFile(p.log)
	b.Fatalf("heirloom did not become ready:\n%s", data)
	return nil
}

func configYAML(cfg *config.Config) string {
	return fmt.Sprintf(`homeserver:
    address: %s
    domain: %s
appservice:
    address: %s
    hostname: 127.0.0.1
    port: %d
    id: %s
    bot_username: %s
    puppet_prefix: %s
    as_token: %s
    hs_token: %s
database:
    type: %s
    uri: %s
    max_open_conns: 10
    max_idle_conns: 2
encryption:
    pickle_key: %s
provisioning:
    shared_secret: %s
history_sharing:
    accept_window: 24h
    max_bundle_size: 67108864
logging:
    level: info
    format: json
`, cfg.Homeserver.Address, domain, cfg.AppService.Address, cfg.AppService.Port, cfg.AppService.ID, cfg.AppService.BotUsername,
		cfg.AppService.PuppetPrefix, asToken, hsToken, cfg.Database.Type, cfg.Database.URI, pickleKey, apiSecret)
}

// rss is the process's resident set now.
func (p *process) rss(b *testing.B) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// load loads the machines of puppets from+1 … to: transactions of 1,000 plaintext to-device
// events each (room key request cancellations, which decrypt nothing), one to each puppet, which
// heirloom routes to their machines.
func (p *process) load(b *testing.B, from, to int) {
	url := fmt.Sprintf("http://127.0.0.1:%d/_matrix/app/v1/transactions/", p.cfg.AppService.Port)
	for start := from + 1; start <= to; start += 1000 {
		var events []map[string]any
		for i := start; i < start+1000 && i <= to; i++ {
			events = append(events, map[string]any{"type": "m.room_key_request", "sender": "@someone:" + domain,
				"to_user_id": puppetID(i), "to_device_id": deviceOf(b, p.cfg.Database, puppetID(i)),
				"content": map[string]any{"action": "request_cancellation", "request_id": fmt.Sprint("r", i), "requesting_device_id": "OTHER"}})
		}
		body, _ := json.Marshal(map[string]any{"events": []any{}, "de.sorunome.msc2409.to_device": events})
		req, _ := http.NewRequest(http.MethodPut, url+fmt.Sprint("load-", start), strings.NewReader(string(body)))
		req.Header.Set("Authorization", "Bearer "+hsToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("transaction answered %d", resp.StatusCode)
		}
	}
}

var devices sync.Map // id.UserID → device ID

func deviceOf(b *testing.B, cfg config.Database, userID id.UserID) string {
	if d, ok := devices.Load(userID); ok {
		return d.(string)
	}
	db := openSQL(b, cfg)
	defer db.Close()
	rows, err := db.Query(`SELECT user_id, device_id FROM puppet`)
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var u, d string
		if err = rows.Scan(&u, &d); err != nil {
			b.Fatal(err)
		}
		devices.Store(id.UserID(u), d)
	}
	d, _ := devices.Load(userID)
	s, _ := d.(string)
	return s
}

// waitLog waits for a line of the process's log with this message and returns it.
func (p *process) waitLog(b *testing.B, message string, timeout time.Duration) map[string]any {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		f, err := os.Open(p.log)
		if err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) == nil && line["message"] == message {
				f.Close()
				return line
			}
		}
		f.Close()
		time.Sleep(200 * time.Millisecond)
	}
	b.Fatalf("%q not logged within %s", message, timeout)
	return nil
}

// warnings returns the warnings and errors the process logged, by message.
func (p *process) warnings() map[string]int {
	data, _ := os.ReadFile(p.log)
	out := map[string]int{}
	for _, raw := range strings.Split(string(data), "\n") {
		var line map[string]any
		if json.Unmarshal([]byte(raw), &line) == nil && (line["level"] == "warn" || line["level"] == "error") {
			msg, _ := line["message"].(string)
			out[msg]++
		}
	}
	return out
}

func (p *process) stop(*testing.B) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(time.Minute):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}
