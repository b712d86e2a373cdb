package e2e

// The deployment of the failover tests (failover_test.go): two heirloom processes with one config
// on one PostgreSQL database behind haproxy, and what watches them (PostgreSQL's statement log,
// the bridge's transactions, the senders' messages).

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lib/pq"
)

// needPostgres returns the PostgreSQL server of the end-to-end run, or skips the test.
func needPostgres(t *testing.T) string {
	t.Helper()
	base := os.Getenv("HEIRLOOM_E2E_POSTGRES")
	if base == "" {
		t.Skip("needs PostgreSQL (a standby exists only there): make e2e-postgres runs it, as CI does")
	}
	return base
}

// failoverSite is the deployment: the database, haproxy on the registered port, two processes.
type failoverSite struct {
	pg       *sql.DB
	pgName   string
	dir      string
	a, b, lb *instance
	rec      *txnRecorder
	faults   string // the file that arms fault points of process a
}

func newFailoverSite(t *testing.T, base string) *failoverSite {
	t.Helper()
	p := e.profiles["gw-js"]
	dir, err := os.MkdirTemp(e.dir, "failover-")
	if err != nil {
		t.Fatal(err)
	}
	pgURL, err := freshPostgresDatabase(base)
	if err != nil {
		t.Fatal(err)
	}
	// Dropped at the suite's teardown: its check of the logs reads the seeds stored in it.
	e.mu.Lock()
	e.cleanups = append(e.cleanups, func() { _ = dropPostgresDatabase(base, pgURL) })
	e.mu.Unlock()
	s := &failoverSite{dir: dir, faults: filepath.Join(dir, "faults"), rec: startTxnRecorder(t, e.jsBridgeGWReg.URL)}
	u, _ := url.Parse(pgURL)
	s.pgName = strings.TrimPrefix(u.Path, "/")
	if s.pg, err = sql.Open("postgres", pgURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.pg.Close() })
	// Every statement that writes, as PostgreSQL logs it: what the standby never runs.
	if _, err = s.pg.Exec(`ALTER DATABASE ` + pq.QuoteIdentifier(s.pgName) + ` SET log_statement = 'mod'`); err != nil {
		t.Fatal(err)
	}
	s.a = s.process(t, p, "a", pgURL, nil)
	s.b = s.process(t, p, "b", pgURL, s.a)
	s.lb = &instance{name: "haproxy", asPort: p.port}
	haproxy := func(args ...string) {
		t.Helper()
		cmd := exec.Command(filepath.Join(e.root, "scripts", "haproxy.sh"), args...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("haproxy.sh %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	haproxy("start", filepath.Join(dir, "haproxy"), fmt.Sprint(p.port),
		fmt.Sprintf("127.0.0.1:%d", s.a.asPort), fmt.Sprintf("127.0.0.1:%d", s.b.asPort))
	t.Cleanup(func() { haproxy("stop", filepath.Join(dir, "haproxy")) })
	return s
}

// process writes the config of one of the two processes: the profile's, on the run's database,
// listening on a port of its own; the registered URL is haproxy's. The second one's config is the
// first one's, generated secrets and all, but for the port it listens on.
func (s *failoverSite) process(t *testing.T, p *profile, name, pgURL string, first *instance) *instance {
	t.Helper()
	home := filepath.Join(s.dir, name)
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	h := &instance{name: "failover " + name, home: home, appserviceID: p.id, prefix: p.prefix, asPort: freePort(),
		asToken: p.asToken, configPath: filepath.Join(home, "config.yaml"), logPath: filepath.Join(home, "heirloom.log"),
		postgres: true, pgURL: pgURL, bridge: p.bridge}
	if first == nil {
		cfg := e.profileConfig(p)
		cfg.listenPort, cfg.dbType, cfg.dbURI = h.asPort, "postgres", pgURL
		cfg.gateway.bridgeURL, cfg.gateway.encryptNewRooms = s.rec.URL, true
		if err := os.WriteFile(h.configPath, []byte(cfg.yaml()), 0o600); err != nil {
			t.Fatal(err)
		}
		// The secrets (the pickle key above all) are generated once, for both.
		if err := e.generate(h.configPath, filepath.Join(home, "registration.yaml")); err != nil {
			t.Fatal(err)
		}
	} else {
		data, err := os.ReadFile(first.configPath)
		if err != nil {
			t.Fatal(err)
		}
		listen := fmt.Sprintf("\n    port: %d\n", first.asPort)
		if !strings.Contains(string(data), listen) {
			t.Fatalf("no %q in %s", listen, data)
		}
		data = []byte(strings.Replace(string(data), listen, fmt.Sprintf("\n    port: %d\n", h.asPort), 1))
		if err = os.WriteFile(h.configPath, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(h.logPath, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	e.instances = append(e.instances, h)
	e.mu.Unlock()
	t.Cleanup(func() { h.stopHeirloom(syscall.SIGTERM) })
	return h
}

func (s *failoverSite) ready(h *instance) bool {
	code, _ := e.request("GET", fmt.Sprintf("http://127.0.0.1:%d/_heirloom/v1/ready", h.asPort), "", nil, nil)
	return code == 200
}

// standbyBackends returns the PostgreSQL backends of the process whose connections are named
// application, with the last statement of each.
func (s *failoverSite) backends(t *testing.T, application string) map[int]string {
	t.Helper()
	rows, err := s.pg.Query(`SELECT pid, query FROM pg_stat_activity WHERE application_name=$1 AND datname=current_database()`, application)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int]string{}
	for rows.Next() {
		var pid int
		var query string
		if err = rows.Scan(&pid, &query); err != nil {
			t.Fatal(err)
		}
		out[pid] = query
	}
	return out
}

// pgStatement is a statement PostgreSQL logged.
type pgStatement struct {
	at   time.Time
	pid  int
	text string
}

// writesBy returns the writing statements PostgreSQL logged for the backends pids (log_statement
// 'mod' on the run's database; the cluster of scripts/postgres.sh logs to server.log in its data
// directory, each line with its time and the backend's pid).
func (s *failoverSite) writesBy(t *testing.T, pids map[int]bool) []pgStatement {
	t.Helper()
	var dataDir string
	if err := s.pg.QueryRow(`SHOW data_directory`).Scan(&dataDir); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dataDir, "server.log"))
	if err != nil {
		t.Fatalf("reading PostgreSQL's log (scripts/postgres.sh logs to server.log in the data directory): %v", err)
	}
	head := regexp.MustCompile(`^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \w+) \[(\d+)\] LOG:  (?:statement|execute [^:]*): (.*)$`)
	var out []pgStatement
	var cur *pgStatement
	for _, line := range strings.Split(string(data), "\n") {
		if cur != nil && strings.HasPrefix(line, "\t") {
			cur.text += "\n" + line
			continue
		}
		cur = nil
		m := head.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		var pid int
		fmt.Sscan(m[2], &pid)
		if !pids[pid] {
			continue
		}
		at, _ := time.Parse("2006-01-02 15:04:05.000 MST", m[1])
		out = append(out, pgStatement{at: at, pid: pid, text: m[3]})
		cur = &out[len(out)-1]
	}
	return out
}

// traffic is one sender's messages: each is retried under the same transaction ID until it is
// taken, as a bridge retries a send whose outcome it does not know.
type traffic struct {
	name string
	send func(body, txnID string) (string, error)
	mu   sync.Mutex
	sent map[string]string // body → event ID
	errs int
}

func (tr *traffic) run(stop <-chan struct{}, done *sync.WaitGroup) {
	defer done.Done()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		body := fmt.Sprintf("%s %d", tr.name, i)
		txnID := strings.ReplaceAll(body, " ", "-") + "-" + name("")
		for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); {
			eventID, err := tr.send(body, txnID)
			if err == nil {
				tr.mu.Lock()
				tr.sent[body] = eventID
				tr.mu.Unlock()
				break
			}
			tr.mu.Lock()
			tr.errs++
			tr.mu.Unlock()
			time.Sleep(250 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func (tr *traffic) bodies() map[string]string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	out := make(map[string]string, len(tr.sent))
	for k, v := range tr.sent {
		out[k] = v
	}
	return out
}

// jsTraffic is a js-sdk user's messages into a room (straight to Synapse).
func jsTraffic(name string, u jsUser, roomID string) *traffic {
	return &traffic{name: name, sent: map[string]string{}, send: func(body, _ string) (string, error) {
		var out struct {
			EventID string `json:"event_id"`
		}
		code, err := e.request("POST", e.peerURL+"/rpc/send", "", map[string]any{"user": u.UserID, "room_id": roomID, "body": body}, &out)
		if err == nil && code != 200 {
			err = fmt.Errorf("peer answered %d", code)
		}
		return out.EventID, err
	}}
}

// problems returns the warnings and errors both processes logged, for a failure's message.
func (s *failoverSite) problems() string {
	var out []string
	for _, h := range []*instance{s.a, s.b} {
		data, _ := os.ReadFile(h.logPath)
		for _, line := range strings.Split(string(data), "\n") {
			if strings.Contains(line, `"level":"warn"`) || strings.Contains(line, `"level":"error"`) {
				out = append(out, h.name+": "+line)
			}
		}
	}
	return strings.Join(out, "\n")
}

// typeDelivered says as what type the bridge received the event, if it did.
func (s *failoverSite) typeDelivered(eventID string) string {
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	var types []string
	for _, txn := range s.rec.got {
		for _, ev := range txn.Events {
			if ev.EventID == eventID {
				types = append(types, ev.Type)
			}
		}
	}
	return fmt.Sprint(types)
}

// bridgeDeliveries reads the recorder: the event IDs of each decrypted message body in the room,
// and the transactions each event came in, in order.
func (s *failoverSite) bridgeDeliveries(roomID string) (byBody, txnsOf map[string][]string) {
	byBody, txnsOf = map[string][]string{}, map[string][]string{}
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	for _, txn := range s.rec.got {
		for _, ev := range txn.Events {
			if ev.RoomID != roomID {
				continue
			}
			txnsOf[ev.EventID] = append(txnsOf[ev.EventID], txn.ID)
			var c struct {
				Body string `json:"body"`
			}
			if ev.Type == "m.room.message" && json.Unmarshal(ev.Content, &c) == nil {
				byBody[c.Body] = append(byBody[c.Body], ev.EventID)
			}
		}
	}
	return byBody, txnsOf
}
