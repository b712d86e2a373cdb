// Package e2e runs heirloom against a real Synapse and real matrix-js-sdk clients (Rust crypto):
// Synapse from scripts/synapse.sh, the clients from interop/peer.mjs, heirloom as a subprocess so
// tests can restart and kill it.
//
// One heirloom (the shared one, registered as "heirloom") serves most tests. Synapse also loads two
// more registrations, each with its own namespace and port: "alt" (pushes like the shared one) and
// "nopush" (no to-device or ephemeral pushes, so to-device messages wait in the device inboxes).
// A test that needs another configuration starts a short-lived heirloom of its own under one of
// them (startInstance), on SQLite, while the shared one keeps running.
package e2e

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lib/pq"
	_ "github.com/mattn/go-sqlite3"

	"github.com/heirloom-matrix/heirloom/e2ee"
)

// e2eMaxBundle is history_sharing.max_bundle_size in the suite: small enough that the hostile
// bundle test can exceed it cheaply.
const e2eMaxBundle = 8 << 20

// synapseMaxUpload is the shared Synapse's max_upload_size, above e2eMaxBundle so the configured
// cap is the one that applies (the bundle-cap test lowers it for a while).
const synapseMaxUpload = "200M"

// adminPrefix starts the localparts of the js-sdk users every heirloom of the suite has as admins.
const adminPrefix = "botadmin_"

const (
	sharedSecret = "heirloom-e2e-registration-secret"
	apiSecret    = "heirloom-e2e-api-shared-secret-0123456789"
	domain       = "localhost"
)

// env is the shared test environment: one Synapse, one shared heirloom, one js-sdk peer process.
type env struct {
	*instance // the shared heirloom
	root      string
	dir       string
	binary    string
	hsURL     string
	hsPort    int
	peerURL   string
	peerCmd   *exec.Cmd
	// profiles are the extra registrations Synapse loads, by name ("alt", "nopush").
	profiles map[string]*profile
	// maxUpload is Synapse's current max_upload_size.
	maxUpload string
	// registrations are the registration files Synapse loads.
	registrations []string
	// pgURL is the PostgreSQL run's own database, made afresh from pgBase (HEIRLOOM_E2E_POSTGRES).
	pgURL, pgBase string

	mu        sync.Mutex
	instances []*instance // every heirloom started in the run, for the teardown secrets check

	// The bridges' own registrations, loaded by Synapse, and the programs that run them.
	heisenbridgeReg  bridgeRegistration
	jsBridgeReg      bridgeRegistration
	jsBridgeSpareReg bridgeRegistration
	// The registrations of the bridges behind heirloom's gateway: Synapse never loads these, but
	// the registrations heirloom generates from them (the gateway profiles).
	heisenbridgeGWReg bridgeRegistration
	jsBridgeGWReg     bridgeRegistration
	botsdkGWReg       bridgeRegistration
	heisenbridgeBin   string
	bridgeNode        string
	// cleanups run at teardown, last first, before Synapse stops.
	cleanups []func()
}

// profile is one appservice registration Synapse has loaded.
type profile struct {
	name, id, bot, prefix string
	port                  int
	asToken, hsToken      string
	push                  bool
	registration          string
	// bridge, for a gateway profile, is the registration of the bridge heirloom stands in front of.
	bridge *bridgeRegistration

	// A profile's port (and its bridge's) serves one test at a time: parallel tests that start
	// instances of the same profile wait for each other (claim).
	mu    sync.Mutex
	free  *sync.Cond
	owner string
}

// claim makes the profile the test's until the test ends; a parallel test holding it already makes
// this one wait. A test may claim a profile it holds again (a restart starts a second instance).
func (p *profile) claim(t testing.TB) {
	t.Helper()
	test, _, _ := strings.Cut(t.Name(), "/")
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.free == nil {
		p.free = sync.NewCond(&p.mu)
	}
	if p.owner == test {
		return
	}
	for p.owner != "" {
		p.free.Wait()
	}
	p.owner = test
	t.Cleanup(func() {
		p.mu.Lock()
		p.owner = ""
		p.mu.Unlock()
		p.free.Broadcast()
	})
}

var e *env
var uniq atomic.Int64

// errPortClash marks a setup failure caused by another process taking a port picked for the run.
var errPortClash = errors.New("a picked port was taken by another process")

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	// The attacker's machine parses room keys into heirloom's types, as heirloom's own does.
	e2ee.RegisterContentTypes()
	if listing() {
		// go test -list only names the tests: nothing to install or start.
		return m.Run()
	}
	if os.Getenv("HEIRLOOM_SKIP_E2E") != "" && os.Getenv("CI") == "" {
		// The go-test form, so scripts/test-summary.sh counts the suite as skipped, not passed.
		fmt.Println("=== RUN   TestEndToEndSuite")
		fmt.Println("    harness_test.go:1: HEIRLOOM_SKIP_E2E is set: the end-to-end suite did not run")
		fmt.Println("--- SKIP: TestEndToEndSuite (0.00s)")
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
	// Checked after every test, whatever ran: no secret of any heirloom in the run was logged.
	if err = e.checkSecretsNotLogged(); err != nil {
		fmt.Printf("--- FAIL: TestSuiteTeardownSecrets (0.00s)\n    harness_test.go: %v\nFAIL\n", err)
		code = 1
	}
	e.teardown()
	return code
}

// listing reports whether the run only lists tests (go test -list).
func listing() bool {
	f := flag.Lookup("test.list")
	return f != nil && f.Value.String() != ""
}

func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func randomToken(prefix string) string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
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
	x := &env{root: root, dir: dir, maxUpload: synapseMaxUpload}
	x.binary = filepath.Join(dir, "heirloom")
	// The bridges' registrations are generated while heirloom builds.
	bridgeRegs := make(chan error, 1)
	go func() { bridgeRegs <- x.writeBridgeRegistrations() }()
	// heirloom_fault builds in the crash points of the restart tests and gateway_hold_delivery (internal/fault).
	build := exec.Command("go", "build", "-tags=goolm,heirloom_fault", "-o", x.binary, ".")
	build.Dir = root
	out, err := build.CombinedOutput()
	if regErr := <-bridgeRegs; err == nil && regErr != nil {
		return x, regErr
	}
	if err != nil {
		return x, fmt.Errorf("go build: %v\n%s", err, out)
	}
	// Ports are picked free, then bound by Synapse and heirloom: another process can take one in
	// between. Such a clash is retried with new ports.
	for attempt := 1; ; attempt++ {
		err = x.bringUp()
		if err == nil {
			break
		}
		if !errors.Is(err, errPortClash) || attempt == 3 {
			return x, err
		}
		fmt.Fprintf(os.Stderr, "end-to-end setup: %v; retrying with other ports\n", err)
		x.stopHeirloom(syscall.SIGTERM)
		_ = x.synapse("stop")
	}
	if err = x.startPeer(); err != nil {
		return x, err
	}
	return x, nil
}

// bringUp picks the ports, writes the configs and registrations, and starts Synapse and the
// shared heirloom.
func (x *env) bringUp() error {
	x.hsPort = freePort()
	x.hsURL = fmt.Sprintf("http://127.0.0.1:%d", x.hsPort)
	main := &instance{name: "shared", home: x.dir, asPort: freePort(), prefix: "heirloom_", appserviceID: "heirloom"}
	main.configPath = filepath.Join(x.dir, "config.yaml")
	main.dbPath = filepath.Join(x.dir, "heirloom.db")
	main.logPath = filepath.Join(x.dir, "heirloom.log")
	dbType, dbURI := "sqlite3-fk-wal", "file:"+main.dbPath+"?_txlock=immediate"
	if pg := os.Getenv("HEIRLOOM_E2E_POSTGRES"); pg != "" {
		fresh, err := freshPostgresDatabase(pg)
		if err != nil {
			return err
		}
		x.pgURL, x.pgBase = fresh, pg
		dbType, dbURI = "postgres", fresh
		main.postgres = true
	}
	cfg := heirloomConfig{
		hsURL: x.hsURL, id: "heirloom", bot: "heirloombot", prefix: "heirloom_", port: main.asPort,
		asToken: "generate", hsToken: "generate", dbType: dbType, dbURI: dbURI, shareOnInvite: true,
		autoJoin: []string{"@js_*:localhost", "@heirloom_*:localhost"}, acceptWindow: "24h", maxBundle: e2eMaxBundle,
		admins: []string{"@" + adminPrefix + "*:localhost"},
	}
	if err := os.WriteFile(main.configPath, []byte(cfg.yaml()), 0o600); err != nil {
		return err
	}
	registrations := []string{filepath.Join(x.dir, "registration.yaml")}
	if err := x.generate(main.configPath, registrations[0]); err != nil {
		return err
	}
	var filled secretsConfig
	if err := readYAMLFile(main.configPath, &filled); err != nil {
		return err
	}
	main.asToken = filled.AppService.ASToken
	x.instance = main

	x.profiles = map[string]*profile{}
	for _, p := range []*profile{
		{name: "alt", id: "heirloom-alt", bot: "altbot", prefix: "alt_", push: true},
		{name: "nopush", id: "heirloom-nopush", bot: "npbot", prefix: "np_", push: false},
		// Gateway profiles: heirloom in front of heisenbridge and of the test bridges. Synapse
		// loads the registration heirloom -g writes from each bridge's own (the first of the
		// admin's two changes).
		{name: "gw-irc", id: "heirloom-gw-irc", bot: "hgibot", prefix: "hgi_", push: true, bridge: &x.heisenbridgeGWReg},
		{name: "gw-js", id: "heirloom-gw-js", bot: "hgjbot", prefix: "hgj_", push: true, bridge: &x.jsBridgeGWReg},
		{name: "gw-bs", id: "heirloom-gw-bs", bot: "hgbbot", prefix: "hgb_", push: true, bridge: &x.botsdkGWReg},
	} {
		p.port = freePort()
		p.asToken, p.hsToken = randomToken("as-"+p.name+"-"), randomToken("hs-"+p.name+"-")
		p.registration = filepath.Join(x.dir, "registration-"+p.name+".yaml")
		tmpl := filepath.Join(x.dir, "config-"+p.name+"-template.yaml")
		pc := x.profileConfig(p)
		if err := os.WriteFile(tmpl, []byte(pc.yaml()), 0o600); err != nil {
			return err
		}
		if err := x.generate(tmpl, p.registration); err != nil {
			return err
		}
		if !p.push {
			data, err := os.ReadFile(p.registration)
			if err != nil {
				return err
			}
			reg := strings.NewReplacer("receive_ephemeral: true", "receive_ephemeral: false",
				"de.sorunome.msc2409.push_ephemeral: true", "de.sorunome.msc2409.push_ephemeral: false").Replace(string(data))
			if reg == string(data) {
				return fmt.Errorf("the generated registration has no ephemeral switches to turn off:\n%s", data)
			}
			if err = os.WriteFile(p.registration, []byte(reg), 0o600); err != nil {
				return err
			}
		}
		registrations = append(registrations, p.registration)
		x.profiles[p.name] = p
	}
	// The bridges' own registrations, for the tests of the bridges talking straight to Synapse.
	registrations = append(registrations, x.heisenbridgeReg.Path, x.jsBridgeReg.Path, x.jsBridgeSpareReg.Path)
	x.registrations = registrations
	if err := x.synapse("start"); err != nil {
		if strings.Contains(err.Error(), "already in use") {
			return fmt.Errorf("%w: starting Synapse on %d: %v", errPortClash, x.hsPort, err)
		}
		return err
	}
	if err := x.startHeirloom(); err != nil {
		if x.instance.portClash() {
			return fmt.Errorf("%w: heirloom on %d: %v", errPortClash, x.asPort, err)
		}
		return err
	}
	return nil
}

// profileConfig is the configuration a short-lived heirloom of the profile starts from.
func (x *env) profileConfig(p *profile) heirloomConfig {
	c := heirloomConfig{
		hsURL: x.hsURL, id: p.id, bot: p.bot, prefix: p.prefix, port: p.port,
		asToken: p.asToken, hsToken: p.hsToken, dbType: "sqlite3-fk-wal", dbURI: "file:unused.db?_txlock=immediate",
		shareOnInvite: true, autoJoin: []string{"@js_*:localhost", "@" + p.prefix + "*:localhost"},
		acceptWindow: "24h", maxBundle: e2eMaxBundle, admins: []string{"@" + adminPrefix + "*:localhost"},
	}
	if p.bridge != nil {
		c.gateway = &gatewayConfig{registration: p.bridge.Path}
	}
	return c
}

func (x *env) generate(configPath, registrationPath string) error {
	gen := exec.Command(x.binary, "-g", "-c", configPath, "-r", registrationPath)
	if out, err := gen.CombinedOutput(); err != nil {
		return fmt.Errorf("heirloom -g -c %s: %v\n%s", configPath, err, out)
	}
	return nil
}

// heirloomConfig is what the suite varies in heirloom's config.
type heirloomConfig struct {
	hsURL, id, bot, prefix string
	// port is the registered one (appservice.address); listenPort, if set, the one heirloom
	// listens on (behind a load balancer on port).
	port, listenPort int
	asToken, hsToken string
	dbType, dbURI    string
	shareOnInvite    bool
	autoJoin         []string
	acceptWindow     string
	maxBundle        int64
	maintenance      string // encryption.maintenance_interval; empty leaves it out (the default)
	gateway          *gatewayConfig
	admins           []string
}

// gatewayConfig is the gateway section of a gateway profile's config.
type gatewayConfig struct {
	registration    string
	bridgeURL       string // empty: the registration's url
	encryptNewRooms bool
	decryptWait     string // empty: the default
}

func (g *gatewayConfig) yaml() string {
	if g == nil {
		return ""
	}
	out := fmt.Sprintf("gateway:\n    registration: %s\n    encrypt_new_rooms: %t\n", g.registration, g.encryptNewRooms)
	if g.bridgeURL != "" {
		out += "    bridge_url: " + g.bridgeURL + "\n"
	}
	if g.decryptWait != "" {
		out += "    decrypt_wait: " + g.decryptWait + "\n"
	}
	return out
}

func (c heirloomConfig) yaml() string {
	autoJoin, _ := json.Marshal(c.autoJoin)
	if c.autoJoin == nil {
		autoJoin = []byte("[]")
	}
	maintenance := ""
	if c.maintenance != "" {
		maintenance = "\n    maintenance_interval: " + c.maintenance
	}
	admins, _ := json.Marshal(c.admins)
	if c.admins == nil {
		admins = []byte("[]")
	}
	return fmt.Sprintf(`homeserver:
    address: %s
    domain: %s
appservice:
    address: http://127.0.0.1:%d
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
    max_open_conns: 5
    max_idle_conns: 2
encryption:
    pickle_key: generate%s
provisioning:
    shared_secret: %s
history_sharing:
    share_on_invite: %t
    auto_join: %s
    accept_window: %s
    max_bundle_size: %d
admins: %s
logging:
    level: debug
    format: json
%s`, c.hsURL, domain, c.port, cmp.Or(c.listenPort, c.port), c.id, c.bot, c.prefix, c.asToken, c.hsToken, c.dbType, c.dbURI,
		maintenance, apiSecret, c.shareOnInvite, autoJoin, c.acceptWindow, c.maxBundle, admins, c.gateway.yaml())
}

func (x *env) synapseEnv() []string {
	return append(os.Environ(),
		fmt.Sprintf("SYNAPSE_PORT=%d", x.hsPort),
		"SYNAPSE_DATA="+filepath.Join(x.dir, "synapse"),
		"SYNAPSE_REGISTRATION="+strings.Join(x.registrations, ":"),
		"SYNAPSE_SHARED_SECRET="+sharedSecret,
		"SYNAPSE_MAX_UPLOAD="+x.maxUpload,
	)
}

func (x *env) synapse(args ...string) error {
	cmd := exec.Command(filepath.Join(x.root, "scripts", "synapse.sh"), args...)
	cmd.Env = x.synapseEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("synapse.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if len(args) > 0 && (args[0] == "start" || args[0] == "restart") {
		return x.waitAppserviceUp(60 * time.Second)
	}
	return nil
}

// waitAppserviceUp waits until Synapse holds heirloom's appservice up. A Synapse that stopped
// while a transaction to heirloom was in flight marks heirloom down, and after its start it sends
// heirloom nothing until a room event concerns an appservice: only then does it start its
// appservice scheduler, which retries the stored transactions and marks heirloom up again. What it
// queues meanwhile keeps its events only: Synapse drops the to-device messages, key counts and
// device lists (heirloom recovers a to-device message by sweeping the device's inbox: on an
// undecryptable event, a join without its bundle, or its timer). So a test right after a restart
// that sends a puppet a to-device message and waits for it would wait for that sweep. A room
// created by heirloom's bot is the room event that starts the scheduler.
func (x *env) waitAppserviceUp(timeout time.Duration) error {
	var err error
	poked := false
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		var down bool
		if down, err = x.appserviceDown(); err == nil && !down {
			return nil
		} else if err == nil && !poked {
			poked = true
			code, perr := x.request("POST", x.hsURL+"/_matrix/client/v3/createRoom?user_id=@heirloombot:"+domain, "Bearer "+x.asToken,
				map[string]any{"preset": "private_chat"}, nil)
			if perr != nil || code != http.StatusOK {
				return fmt.Errorf("creating a room as heirloom's bot to start Synapse's appservice scheduler: %d %v", code, perr)
			}
		}
	}
	return fmt.Errorf("Synapse still holds heirloom's appservice down after %s (%v)", timeout, err)
}

// appserviceDown reads Synapse's state of heirloom's appservice. Not read-only: a read-only
// connection cannot use the write-ahead log's index and reads the database file as last
// checkpointed, without what Synapse wrote since.
func (x *env) appserviceDown() (bool, error) {
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(x.dir, "synapse", "homeserver.db")+"?_busy_timeout=5000")
	if err != nil {
		return false, err
	}
	defer db.Close()
	var state sql.NullString
	err = db.QueryRow(`SELECT state FROM application_services_state WHERE as_id='heirloom'`).Scan(&state)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return state.String == "down", err
}

// instance is one heirloom process: the shared one, or a short-lived one of a profile.
type instance struct {
	name         string
	home         string
	appserviceID string
	prefix       string
	asPort       int
	asToken      string
	configPath   string
	dbPath       string
	logPath      string
	postgres     bool
	// pgURL is the instance's PostgreSQL database, if not the run's (e.pgURL).
	pgURL    string
	heirloom *exec.Cmd
	exited   chan struct{} // closed when heirloom exits
	exitErr  error
	fault    string // HEIRLOOM_FAULT of the running process
	// bridge is the registration of the bridge a gateway instance stands in front of.
	bridge *bridgeRegistration
}

func (x *env) startHeirloom() error {
	return x.startHeirloomWith()
}

// startHeirloomWith (re)starts the shared heirloom with extra environment and waits until its API
// answers.
func (x *env) startHeirloomWith(extraEnv ...string) error {
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		if err = x.instance.start(x.binary, extraEnv...); err == nil || !x.instance.portClash() {
			return err
		}
		// Another process holds the registered port for a moment: wait and try again.
		time.Sleep(2 * time.Second)
	}
	return err
}

// start starts the heirloom process and waits until it is the active one: GET /ready answers 200
// (or it exits). On PostgreSQL that may be after the lease of a process killed before it expired.
func (h *instance) start(binary string, extraEnv ...string) error {
	return h.launch(binary, "GET /ready", func() bool {
		code, _ := e.request("GET", fmt.Sprintf("http://127.0.0.1:%d/_heirloom/v1/ready", h.asPort), "", nil, nil)
		return code == 200
	}, extraEnv...)
}

// startStandby starts the heirloom process and waits until it answers GET /status as the standby.
func (h *instance) startStandby(binary string, extraEnv ...string) error {
	return h.launch(binary, "GET /status as the standby", func() bool {
		var status struct {
			Role string `json:"role"`
		}
		code, _ := h.api("GET", "/status", nil, &status)
		return code == 200 && status.Role == "standby"
	}, extraEnv...)
}

// launch starts the heirloom process and waits until up reports true (or it exits).
func (h *instance) launch(binary, what string, up func() bool, extraEnv ...string) error {
	logFile, err := os.OpenFile(h.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(binary, "-c", h.configPath)
	cmd.Env = append(os.Environ(), extraEnv...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = h.home
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return err
	}
	logFile.Close() // the child holds its own copy
	h.heirloom, h.exited, h.exitErr, h.fault = cmd, make(chan struct{}), nil, ""
	for _, kv := range extraEnv {
		if v, ok := strings.CutPrefix(kv, "HEIRLOOM_FAULT="); ok {
			h.fault = v
		}
	}
	exited := h.exited
	go func() { h.exitErr = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			h.heirloom = nil
			return fmt.Errorf("heirloom (%s) exited during startup (%v): %s", h.name, h.exitErr, h.logTail(20))
		default:
		}
		if up() {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("heirloom (%s) did not answer %s within 60 s; see %s", h.name, what, h.logPath)
}

// portClash reports whether the last start failed because its port was taken.
func (h *instance) portClash() bool {
	return h.heirloom == nil && strings.Contains(h.logTail(20), "address already in use")
}

// logTail returns the last n lines of the instance's log.
func (h *instance) logTail(n int) string {
	data, _ := os.ReadFile(h.logPath)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitHeirloomExit waits for heirloom to exit by itself (a fault point) and reports whether it did.
func (h *instance) waitHeirloomExit(timeout time.Duration) bool {
	if h.heirloom == nil {
		return true
	}
	select {
	case <-h.exited:
		h.heirloom = nil
		return true
	case <-time.After(timeout):
		return false
	}
}

// stopHeirloom stops heirloom with the given signal and waits for it to exit.
func (h *instance) stopHeirloom(sig syscall.Signal) {
	if h == nil || h.heirloom == nil || h.heirloom.Process == nil {
		return
	}
	_ = h.heirloom.Process.Signal(sig)
	select {
	case <-h.exited:
	case <-time.After(20 * time.Second):
		_ = h.heirloom.Process.Kill()
		<-h.exited
	}
	h.heirloom = nil
}

// armFault restarts the shared heirloom with HEIRLOOM_FAULT set. Whatever the test does next, its
// cleanup leaves the shared heirloom running without the fault, so a test that fails midway does
// not leave the crash point armed for the tests after it.
func armFault(t *testing.T, fault string) {
	t.Helper()
	t.Cleanup(func() {
		if e.heirloom != nil && e.fault == "" {
			return
		}
		e.stopHeirloom(syscall.SIGTERM)
		if err := e.startHeirloom(); err != nil {
			t.Errorf("restarting heirloom without %s: %v", fault, err)
		}
	})
	e.stopHeirloom(syscall.SIGTERM)
	if err := e.startHeirloomWith("HEIRLOOM_FAULT=" + fault); err != nil {
		t.Fatal(err)
	}
}

// restartHeirloom restarts the shared heirloom; if the restart fails, the test's cleanup tries
// again so the tests after it find heirloom running.
func restartHeirloom(t testing.TB) {
	t.Helper()
	restartHeirloomWith(t, nil)
}

// restartHeirloomWith restarts the shared heirloom, calling whileDown (if set) while it is stopped.
func restartHeirloomWith(t testing.TB, whileDown func()) {
	t.Helper()
	t.Cleanup(func() {
		if e.heirloom == nil {
			if err := e.startHeirloom(); err != nil {
				t.Errorf("restarting heirloom after the test: %v", err)
			}
		}
	})
	e.stopHeirloom(syscall.SIGTERM)
	if whileDown != nil {
		whileDown()
	}
	if err := e.startHeirloom(); err != nil {
		t.Fatal(err)
	}
}

// startInstance starts a short-lived heirloom of the profile, with its own SQLite database, log and
// config (mutate changes the profile's), and stops it when the test ends.
func startInstance(t testing.TB, profileName string, mutate func(*heirloomConfig)) *instance {
	t.Helper()
	return startInstanceEnv(t, profileName, mutate)
}

// startInstanceEnv is startInstance with extra environment for the process (HEIRLOOM_FAULT).
func startInstanceEnv(t testing.TB, profileName string, mutate func(*heirloomConfig), extraEnv ...string) *instance {
	t.Helper()
	p := e.profiles[profileName]
	p.claim(t)
	home, err := os.MkdirTemp(e.dir, profileName+"-")
	if err != nil {
		t.Fatal(err)
	}
	h := &instance{name: profileName + " " + filepath.Base(home), home: home, appserviceID: p.id, prefix: p.prefix,
		asPort: p.port, asToken: p.asToken, configPath: filepath.Join(home, "config.yaml"),
		dbPath: filepath.Join(home, "heirloom.db"), logPath: filepath.Join(home, "heirloom.log"), bridge: p.bridge}
	cfg := e.profileConfig(p)
	cfg.dbURI = "file:" + h.dbPath + "?_txlock=immediate"
	if mutate != nil {
		mutate(&cfg)
	}
	if err = os.WriteFile(h.configPath, []byte(cfg.yaml()), 0o600); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	e.instances = append(e.instances, h)
	e.mu.Unlock()
	t.Cleanup(func() { h.stopHeirloom(syscall.SIGTERM) })
	for attempt := 1; ; attempt++ {
		if err = h.start(e.binary, extraEnv...); err == nil {
			return h
		}
		if !h.portClash() || attempt == 3 {
			t.Fatal(err)
		}
		// Another process holds the profile's registered port for a moment: wait and try again.
		time.Sleep(2 * time.Second)
	}
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
	for _, h := range x.instances {
		h.stopHeirloom(syscall.SIGTERM)
	}
	_ = x.synapse("stop")
	if os.Getenv("HEIRLOOM_E2E_KEEP") != "" {
		fmt.Println("kept end-to-end state in", x.dir)
		if x.pgURL != "" {
			fmt.Println("kept the PostgreSQL database", x.pgURL)
		}
		return
	}
	_ = os.RemoveAll(x.dir)
	if x.pgURL != "" {
		if err := dropPostgresDatabase(x.pgBase, x.pgURL); err != nil {
			fmt.Println("dropping the run's PostgreSQL database:", err)
		}
	}
}

// freshPostgresDatabase creates an empty database of its own for the run, on the server of base,
// so that a second run never meets the first one's rows. It returns the new database's URL.
func freshPostgresDatabase(base string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("HEIRLOOM_E2E_POSTGRES: %w", err)
	}
	db, err := sql.Open("postgres", base)
	if err != nil {
		return "", err
	}
	defer db.Close()
	name := fmt.Sprintf("%s_%d_%d", strings.TrimPrefix(u.Path, "/"), os.Getpid(), time.Now().UnixNano()%1_000_000)
	if _, err = db.Exec("CREATE DATABASE " + pq.QuoteIdentifier(name)); err != nil {
		return "", fmt.Errorf("creating the run's PostgreSQL database %s: %w", name, err)
	}
	u.Path = "/" + name
	return u.String(), nil
}

// dropPostgresDatabase drops the run's database (fresh), connected to base.
func dropPostgresDatabase(base, fresh string) error {
	u, err := url.Parse(fresh)
	if err != nil {
		return err
	}
	db, err := sql.Open("postgres", base)
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.Exec("DROP DATABASE IF EXISTS " + pq.QuoteIdentifier(strings.TrimPrefix(u.Path, "/")))
	return err
}

// api calls heirloom's bridge API and decodes the answer into out. It returns the status code.
func (h *instance) api(method, path string, body any, out any) (int, error) {
	return e.request(method, fmt.Sprintf("http://127.0.0.1:%d/_heirloom/v1%s", h.asPort, path), "Bearer "+apiSecret, body, out)
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

// db opens the instance's database (SQLite read-only, or the PostgreSQL run's database).
func (h *instance) db(t testing.TB) testDB {
	t.Helper()
	if h.postgres {
		db, err := sql.Open("postgres", cmp.Or(h.pgURL, e.pgURL))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return testDB{DB: db, postgres: true}
	}
	db, err := sql.Open("sqlite3", "file:"+h.dbPath+"?mode=ro&_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return testDB{DB: db}
}

// dbWritable opens the instance's database for writing, for tests that take away what heirloom
// holds (as a lost push would).
func (h *instance) dbWritable(t testing.TB) testDB {
	t.Helper()
	if h.postgres {
		return h.db(t)
	}
	db, err := sql.Open("sqlite3", "file:"+h.dbPath+"?_busy_timeout=5000&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return testDB{DB: db}
}

func (d testDB) Exec(query string, args ...any) (sql.Result, error) {
	return d.DB.Exec(d.rebind(query), args...)
}

// name returns a unique localpart suffix for this run.
func name(prefix string) string {
	return fmt.Sprintf("%s%d_%d", prefix, time.Now().UnixNano()%1_000_000, uniq.Add(1))
}
