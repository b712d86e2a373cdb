// Package e2e runs heirloom against a real Synapse and real matrix-js-sdk clients (Rust crypto):
// Synapse from scripts/synapse.sh, the clients from interop/peer.mjs, heirloom as a subprocess so
// tests can restart and kill it.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/lib/pq"
	_ "github.com/mattn/go-sqlite3"
)

// e2eMaxBundle is history_sharing.max_bundle_size in the suite: small enough that the hostile
// bundle test can exceed it cheaply.
const e2eMaxBundle = 8 << 20

const (
	sharedSecret = "heirloom-e2e-registration-secret"
	apiSecret    = "heirloom-e2e-api-shared-secret-0123456789"
	domain       = "localhost"
)

// env is the shared test environment: one Synapse, one heirloom, one js-sdk peer process.
type env struct {
	root       string
	dir        string
	binary     string
	configPath string
	dbPath     string
	hsURL      string
	hsPort     int
	asPort     int
	peerURL    string
	peerCmd    *exec.Cmd
	heirloom   *exec.Cmd
	logFile    *os.File
	asToken    string

	// The bridges' own registrations, loaded by Synapse, and the programs that run them.
	heisenbridgeReg  bridgeRegistration
	jsBridgeReg      bridgeRegistration
	jsBridgeSpareReg bridgeRegistration
	heisenbridgeBin  string
	bridgeNode       string
	// cleanups run at teardown, last first, before Synapse stops.
	cleanups []func()
}

var e *env
var uniq atomic.Int64

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Getenv("HEIRLOOM_SKIP_E2E") != "" && os.Getenv("CI") == "" {
		fmt.Println("skipping the end-to-end suite: HEIRLOOM_SKIP_E2E is set")
		return 0
	}
	var err error
	e, err = setup()
	if err != nil {
		fmt.Fprintf(os.Stderr, "end-to-end setup failed: %v\n", err)
		if e != nil {
			e.teardown()
		}
		return 1
	}
	code := m.Run()
	e.teardown()
	return code
}

func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func setup() (*env, error) {
	root, err := filepath.Abs("..")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "heirloom-e2e-")
	if err != nil {
		return nil, err
	}
	x := &env{root: root, dir: dir, hsPort: freePort(), asPort: freePort()}
	x.hsURL = fmt.Sprintf("http://127.0.0.1:%d", x.hsPort)
	x.binary = filepath.Join(dir, "heirloom")
	// The bridges' registrations are generated while heirloom builds.
	bridgeRegs := make(chan error, 1)
	go func() { bridgeRegs <- x.writeBridgeRegistrations() }()
	build := exec.Command("go", "build", "-tags=goolm", "-o", x.binary, ".")
	build.Dir = root
	out, err := build.CombinedOutput()
	if regErr := <-bridgeRegs; err == nil && regErr != nil {
		return x, regErr
	}
	if err != nil {
		return x, fmt.Errorf("go build: %v\n%s", err, out)
	}
	if err = x.writeConfig(); err != nil {
		return x, err
	}
	gen := exec.Command(x.binary, "-g", "-c", x.configPath, "-r", filepath.Join(dir, "registration.yaml"))
	if out, err := gen.CombinedOutput(); err != nil {
		return x, fmt.Errorf("heirloom -g: %v\n%s", err, out)
	}
	if err = x.synapse("start"); err != nil {
		return x, err
	}
	if err = x.startHeirloom(); err != nil {
		return x, err
	}
	if err = x.startPeer(); err != nil {
		return x, err
	}
	return x, nil
}

func (x *env) writeConfig() error {
	x.configPath = filepath.Join(x.dir, "config.yaml")
	x.dbPath = filepath.Join(x.dir, "heirloom.db")
	dbType, dbURI := "sqlite3-fk-wal", "file:"+x.dbPath+"?_txlock=immediate"
	if pg := os.Getenv("HEIRLOOM_E2E_POSTGRES"); pg != "" {
		dbType, dbURI = "postgres", pg
	}
	x.asToken = "as-token-e2e-" + fmt.Sprint(time.Now().UnixNano())
	cfg := fmt.Sprintf(`homeserver:
    address: %s
    domain: %s
appservice:
    address: http://127.0.0.1:%d
    hostname: 127.0.0.1
    port: %d
    id: heirloom
    bot_username: heirloombot
    puppet_prefix: heirloom_
    as_token: %s
    hs_token: generate
database:
    type: %s
    uri: %s
    max_open_conns: 5
    max_idle_conns: 2
encryption:
    pickle_key: generate
provisioning:
    shared_secret: %s
history_sharing:
    share_on_invite: true
    auto_join: ["@js_*:localhost", "@heirloom_*:localhost"]
    accept_window: 24h
    max_bundle_size: %d
logging:
    level: debug
    format: json
`, x.hsURL, domain, x.asPort, x.asPort, x.asToken, dbType, dbURI, apiSecret, e2eMaxBundle)
	return os.WriteFile(x.configPath, []byte(cfg), 0o600)
}

func (x *env) synapseEnv() []string {
	return append(os.Environ(),
		fmt.Sprintf("SYNAPSE_PORT=%d", x.hsPort),
		"SYNAPSE_DATA="+filepath.Join(x.dir, "synapse"),
		"SYNAPSE_REGISTRATION="+strings.Join([]string{filepath.Join(x.dir, "registration.yaml"),
			x.heisenbridgeReg.Path, x.jsBridgeReg.Path, x.jsBridgeSpareReg.Path}, ":"),
		"SYNAPSE_SHARED_SECRET="+sharedSecret,
		"SYNAPSE_MAX_UPLOAD=200M",
	)
}

func (x *env) synapse(args ...string) error {
	cmd := exec.Command(filepath.Join(x.root, "scripts", "synapse.sh"), args...)
	cmd.Env = x.synapseEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("synapse.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (x *env) startHeirloom() error {
	return x.startHeirloomWith()
}

// startHeirloomWith starts heirloom with extra environment (e.g. HEIRLOOM_FAULT) and waits until
// its API answers.
func (x *env) startHeirloomWith(extraEnv ...string) error {
	if x.logFile == nil {
		f, err := os.Create(filepath.Join(x.dir, "heirloom.log"))
		if err != nil {
			return err
		}
		x.logFile = f
	}
	cmd := exec.Command(x.binary, "-c", x.configPath)
	cmd.Env = append(os.Environ(), extraEnv...)
	cmd.Stdout, cmd.Stderr = x.logFile, x.logFile
	cmd.Dir = x.dir
	if err := cmd.Start(); err != nil {
		return err
	}
	x.heirloom = cmd
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		var status map[string]any
		if code, _ := x.api("GET", "/status", nil, &status); code == 200 {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("heirloom did not answer GET /status within 60 s; see %s", x.logFile.Name())
}

// waitHeirloomExit waits for heirloom to exit by itself (a fault point) and reports whether it did.
func (x *env) waitHeirloomExit(timeout time.Duration) bool {
	done := make(chan struct{})
	go func() { _ = x.heirloom.Wait(); close(done) }()
	select {
	case <-done:
		x.heirloom = nil
		return true
	case <-time.After(timeout):
		return false
	}
}

// stopHeirloom stops heirloom with the given signal and waits for it to exit.
func (x *env) stopHeirloom(sig syscall.Signal) {
	if x.heirloom == nil || x.heirloom.Process == nil {
		return
	}
	_ = x.heirloom.Process.Signal(sig)
	done := make(chan struct{})
	go func() { _ = x.heirloom.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = x.heirloom.Process.Kill()
		<-done
	}
	x.heirloom = nil
}

func (x *env) startPeer() error {
	cmd := exec.Command("node", filepath.Join(x.root, "interop", "peer.mjs"), "--homeserver", x.hsURL, "--shared-secret", sharedSecret)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	peerLog, err := os.Create(filepath.Join(x.dir, "peer.log"))
	if err != nil {
		return err
	}
	cmd.Stderr = peerLog
	if err = cmd.Start(); err != nil {
		return err
	}
	x.peerCmd = cmd
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case line := <-lines:
		var ready struct {
			Listening int `json:"listening"`
		}
		if err = json.Unmarshal([]byte(line), &ready); err != nil || ready.Listening == 0 {
			return fmt.Errorf("peer printed %q instead of its port", line)
		}
		x.peerURL = fmt.Sprintf("http://127.0.0.1:%d", ready.Listening)
		return nil
	case <-time.After(60 * time.Second):
		return fmt.Errorf("the js-sdk peer did not start within 60 s; see %s", peerLog.Name())
	}
}

func (x *env) teardown() {
	for i := len(x.cleanups) - 1; i >= 0; i-- {
		x.cleanups[i]()
	}
	if x.peerCmd != nil && x.peerCmd.Process != nil {
		_ = x.peerCmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = x.peerCmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = x.peerCmd.Process.Kill()
		}
	}
	x.stopHeirloom(syscall.SIGTERM)
	_ = x.synapse("stop")
	if os.Getenv("HEIRLOOM_E2E_KEEP") != "" {
		fmt.Println("kept end-to-end state in", x.dir)
		return
	}
	_ = os.RemoveAll(x.dir)
}

// api calls heirloom's bridge API and decodes the answer into out. It returns the status code.
func (x *env) api(method, path string, body any, out any) (int, error) {
	return x.request(method, fmt.Sprintf("http://127.0.0.1:%d/_heirloom/v1%s", x.asPort, path), "Bearer "+apiSecret, body, out)
}

func (x *env) request(method, url, auth string, body any, out any) (int, error) {
	var rdr io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rdr = bytes.NewReader(data)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, rdr)
	if err != nil {
		return 0, err
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if out != nil && len(data) > 0 {
		if err = json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decoding %s: %w", data, err)
		}
	}
	return resp.StatusCode, nil
}

// peer calls the js-sdk peer.
func (x *env) peer(t testing.TB, method string, params map[string]any, out any) {
	t.Helper()
	var raw json.RawMessage
	code, err := x.request("POST", x.peerURL+"/rpc/"+method, "", params, &raw)
	if err != nil {
		t.Fatalf("peer %s: %v", method, err)
	}
	if code != 200 {
		t.Fatalf("peer %s(%v) answered %d: %s", method, params, code, raw)
	}
	if out != nil {
		if err = json.Unmarshal(raw, out); err != nil {
			t.Fatalf("peer %s: decoding %s: %v", method, raw, err)
		}
	}
}

// testDB is heirloom's database opened by the test for assertions on what heirloom stored.
type testDB struct {
	*sql.DB
	postgres bool
}

// rebind turns the ? placeholders of a query into PostgreSQL's $N when needed.
func (d testDB) rebind(query string) string {
	if !d.postgres {
		return query
	}
	var sb strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			fmt.Fprintf(&sb, "$%d", n)
			continue
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

func (d testDB) QueryRow(query string, args ...any) *sql.Row {
	return d.DB.QueryRow(d.rebind(query), args...)
}

func (d testDB) Query(query string, args ...any) (*sql.Rows, error) {
	return d.DB.Query(d.rebind(query), args...)
}

// db opens heirloom's database (SQLite read-only, or the PostgreSQL run's database).
func (x *env) db(t *testing.T) testDB {
	t.Helper()
	if pg := os.Getenv("HEIRLOOM_E2E_POSTGRES"); pg != "" {
		db, err := sql.Open("postgres", pg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return testDB{DB: db, postgres: true}
	}
	db, err := sql.Open("sqlite3", "file:"+x.dbPath+"?mode=ro&_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return testDB{DB: db}
}

// name returns a unique localpart suffix for this run.
func name(prefix string) string {
	return fmt.Sprintf("%s%d_%d", prefix, time.Now().UnixNano()%1_000_000, uniq.Add(1))
}
