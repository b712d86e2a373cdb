package e2e

// A standby that takes over with nothing lost, as the README deploys it ("Two processes and a load
// balancer"): two heirloom processes with one config on one PostgreSQL database, behind haproxy
// (scripts/haproxy.sh) which routes by GET /_heirloom/v1/ready; the homeserver's registration and
// the bridge point at haproxy. heirloom runs in gateway mode in front of the test bridge, with an
// API-mode puppet beside it, while js-sdk users talk to both.

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lib/pq"
)

// failoverTakeoverLimit is how soon the standby must serve after the active process dies.
const failoverTakeoverLimit = 10 * time.Second

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

// olmDecryptionErrors are what mautrix and heirloom log when an Olm message cannot be decrypted.
var olmDecryptionErrors = []string{"Failed to decrypt olm message", "Found matching session, but decryption failed",
	"Failed to decrypt to-device event", "DEBUG: Failed to decrypt prekey olm message with newly created session"}

// A second process on the same PostgreSQL database waits as the standby while the first is busy,
// and writes nothing; the active one is killed (SIGKILL) with messages flowing both ways through
// ghosts of the bridge and an API puppet in encrypted rooms and an invite's key bundle in flight.
// The standby serves within 10 s; every message reaches its recipients once, decrypted (the
// bridge may get a transaction again, never an event in another transaction); the bundle in
// flight is delivered; neither process logged an Olm decryption error.
func TestStandbyTakesOverUnderTraffic(t *testing.T) {
	s := newFailoverSite(t, needPostgres(t))
	if err := s.a.start(e.binary, "HEIRLOOM_FAULT_FILE="+s.faults); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "haproxy to route to the active process", func() (bool, string) { return s.ready(s.lb), "" })
	lbURL := fmt.Sprintf("http://127.0.0.1:%d", s.lb.asPort)
	bridge := startJSBridge(t, jsBridgeOpts{Homeserver: lbURL, Registration: &e.jsBridgeGWReg})
	u, u2 := newJSUser(t, true), newJSUser(t, true)
	scene := newGhostScene(t, bridge, u, "jsg_", "failover room")
	var pup puppetIdentity
	s.lb.apiOK(t, "PUT", "/puppets/@"+name(s.a.prefix+"fo")+":"+domain, map[string]any{}, &pup)
	apiRoom := s.lb.createRoom(t, pup, "shared", u.UserID)
	jsAcceptInvite(t, u, apiRoom)
	// Both ways once before the traffic: the ghosts' and the puppet's devices and sessions exist.
	bridge.call(t, "sendText", map[string]any{"user": scene.alice, "room_id": scene.room, "body": "ghost warm-up"}, nil)
	jsWaitDecrypted(t, u, scene.room, map[string]any{"body": "ghost warm-up"})
	jsSend(t, u, scene.room, "js warm-up")
	bridge.waitEvent(t, map[string]any{"room_id": scene.room, "body": "js warm-up"})
	s.lb.send(t, pup, apiRoom, "puppet warm-up")
	jsWaitDecrypted(t, u, apiRoom, map[string]any{"body": "puppet warm-up"})
	jsSend(t, u, apiRoom, "js warm-up to the puppet")
	s.lb.waitDecrypts(t, pup, apiRoom, []string{"js warm-up to the puppet"})
	historyRoom := s.lb.createRoom(t, pup, "shared")
	s.lb.send(t, pup, historyRoom, "said before the failover")

	senders := []*traffic{
		{name: "ghost", sent: map[string]string{}, send: func(body, txnID string) (string, error) {
			var out struct {
				EventID string `json:"event_id"`
			}
			err := bridge.try("sendMessage", map[string]any{"user": scene.alice, "room_id": scene.room, "txn_id": txnID,
				"content": map[string]any{"msgtype": "m.text", "body": body}}, &out)
			return out.EventID, err
		}},
		{name: "puppet", sent: map[string]string{}, send: func(body, txnID string) (string, error) {
			var out struct {
				EventID string `json:"event_id"`
			}
			code, err := s.lb.api("POST", "/puppets/"+pup.UserID+"/rooms/"+apiRoom+"/messages?txn_id="+txnID,
				map[string]any{"msgtype": "m.text", "body": body}, &out)
			if err == nil && code != 200 {
				err = fmt.Errorf("answered %d", code)
			}
			return out.EventID, err
		}},
		jsTraffic("js to the ghosts", u, scene.room),
		jsTraffic("js to the puppet", u, apiRoom),
	}
	stop := make(chan struct{})
	var sending sync.WaitGroup
	for _, tr := range senders {
		sending.Add(1)
		go tr.run(stop, &sending)
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		sending.Wait()
	}()

	// The second process starts while the first is busy: it waits, and writes nothing.
	time.Sleep(2 * time.Second)
	markB := s.b.mark(t)
	if err := s.b.startStandby(e.binary); err != nil {
		t.Fatal(err)
	}
	waiting := markB.wait(t, 10*time.Second, "the standby's wait", func(l logLine) bool {
		return strings.HasPrefix(l.str("message"), "Waiting as the standby")
	})
	application := waiting.str("application_name")
	standbyPIDs := map[int]bool{}
	for range 10 {
		backends := s.backends(t, application)
		if len(backends) > 1 {
			t.Fatalf("the standby has %d connections to the database, want its lease's one: %v", len(backends), backends)
		}
		for pid := range backends {
			standbyPIDs[pid] = true
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(standbyPIDs) == 0 {
		t.Fatalf("no connection of the standby (application_name %q) seen", application)
	}

	// An invite's key bundle in flight: uploaded, not yet delivered, when the active process dies.
	markA := s.a.mark(t)
	if err := os.WriteFile(s.faults, []byte("hold_before_delivery"), 0o600); err != nil {
		t.Fatal(err)
	}
	go func() {
		_, _ = s.lb.api("POST", "/puppets/"+pup.UserID+"/rooms/"+historyRoom+"/invite", map[string]any{"user_id": u2.UserID}, nil)
	}()
	eventually(t, 30*time.Second, "the active process to hold with the bundle uploaded", func() (bool, string) {
		data, _ := os.ReadFile(s.a.logPath)
		return strings.Contains(string(data[min(int(markA.offset), len(data)):]), "holding at hold_before_delivery"), ""
	})
	time.Sleep(time.Second)
	killed := time.Now()
	_ = s.a.heirloom.Process.Signal(syscall.SIGKILL)
	if !s.a.waitHeirloomExit(10 * time.Second) {
		t.Fatal("the active process did not die")
	}
	eventually(t, 30*time.Second, "the standby to serve through haproxy", func() (bool, string) { return s.ready(s.lb), "" })
	takeover := time.Since(killed)
	took, _ := markB.find(t, msgIs("Took over the database lease: this process is the active one now"))
	t.Logf("the standby served through haproxy %s after the SIGKILL (its log: waited %v, previous_pid %v)",
		takeover.Round(10*time.Millisecond), took["waited"], took["previous_pid"])
	if takeover > failoverTakeoverLimit {
		t.Errorf("the standby served %s after the active process died, want within %s", takeover, failoverTakeoverLimit)
	}
	// The standby's lease connection writes the lease row when it takes over, and nothing before.
	statements := s.writesBy(t, standbyPIDs)
	for _, st := range statements {
		if st.at.Before(killed.Truncate(time.Millisecond)) || !strings.Contains(st.text, "heirloom_lease") {
			t.Errorf("the standby wrote to the database at %s (the active process died at %s): %s", st.at, killed, st.text)
		}
	}
	t.Logf("the standby's lease connection (pids %v) ran %d writing statements, all on the lease row after the active process died", standbyPIDs, len(statements))
	for _, l := range markB.lines(t) {
		if l.str("message") == "Took over the database lease: this process is the active one now" {
			break
		}
		if m := l.str("method"); m != "" && !(m == "GET" && strings.Contains(l.str("url"), "/versions")) &&
			!(m == "POST" && strings.Contains(l.str("url"), "/ping")) {
			t.Errorf("the standby sent %s %s to the homeserver before it took over", m, l.str("url"))
		}
	}

	time.Sleep(4 * time.Second) // traffic after the takeover
	close(stop)
	sending.Wait()
	s.checkDelivered(t, senders, scene, u, pup, apiRoom)

	// The bridge retries the invite that failed with the process: its echo delivers the bundle
	// built before the SIGKILL, and no second is built.
	path := fmt.Sprintf("%s/_matrix/client/v3/rooms/%s/invite?user_id=%s", e.hsURL, url.PathEscape(historyRoom), url.QueryEscape(pup.UserID))
	if code, err := e.request("POST", path, "Bearer "+s.a.asToken, map[string]any{"user_id": u2.UserID}, nil); err != nil || code != 200 {
		t.Fatalf("the invite again: %d %v", code, err)
	}
	var sent []sentBundle
	eventually(t, 60*time.Second, "the bundle in flight to be delivered", func() (bool, string) {
		sent = nil
		for _, b := range s.lb.bundles(t, pup).Sent {
			if b.RoomID == historyRoom {
				sent = append(sent, b)
			}
		}
		return len(sent) == 1 && sent[0].State == "delivered", fmt.Sprintf("%+v", sent)
	})
	e.peer(t, "join", map[string]any{"user": u2.UserID, "room_id": historyRoom}, nil)
	requireJSDecrypts(t, u2, historyRoom, []string{"said before the failover"})

	for _, h := range []*instance{s.a, s.b} {
		data, _ := os.ReadFile(h.logPath)
		for _, bad := range olmDecryptionErrors {
			if strings.Contains(string(data), bad) {
				t.Errorf("%s logged an Olm decryption error (%q); see %s", h.name, bad, h.logPath)
			}
		}
	}
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

// checkDelivered checks that every message sent reached its recipients once, decrypted: the
// ghosts' and the puppet's the js-sdk user, the js-sdk user's the bridge (each event in one
// transaction, perhaps delivered again under its ID) and the puppet.
func (s *failoverSite) checkDelivered(t *testing.T, senders []*traffic, scene ghostScene, u jsUser, pup puppetIdentity, apiRoom string) {
	t.Helper()
	ghost, puppet, toGhosts, toPuppet := senders[0].bodies(), senders[1].bodies(), senders[2].bodies(), senders[3].bodies()
	for _, tr := range senders {
		t.Logf("%s: %d messages sent, %d attempts failed (while no process served) and were retried", tr.name, len(tr.bodies()), tr.errs)
		if len(tr.bodies()) < 15 {
			t.Fatalf("%s sent only %d messages", tr.name, len(tr.bodies()))
		}
	}
	for room, want := range map[string]map[string]string{scene.room: ghost, apiRoom: puppet} {
		// The user's own messages are in the rooms too.
		own := len(toGhosts)
		if room == apiRoom {
			own = len(toPuppet)
		}
		msgs := jsMessages(t, u, room, len(want)+own, 60000)
		seen := map[string][]jsMessage{}
		for _, m := range msgs {
			seen[m.Body] = append(seen[m.Body], m)
		}
		for body, eventID := range want {
			got := seen[body]
			if len(got) != 1 || !got[0].Decrypted || got[0].EventID != eventID {
				t.Errorf("%s saw %q as %+v, want once, decrypted, as %s", u.UserID, body, got, eventID)
			}
		}
	}
	// The bridge: each js-sdk message once, decrypted; each event in one transaction.
	var byBody map[string][]string
	var txnsOf map[string][]string
	eventually(t, 60*time.Second, "the bridge to receive every message", func() (bool, string) {
		byBody, txnsOf = s.bridgeDeliveries(scene.room)
		var missing []string
		for body, eventID := range toGhosts {
			if len(byBody[body]) == 0 {
				missing = append(missing, fmt.Sprintf("%q (%s: in bridge transactions %v as %s)", body, eventID, txnsOf[eventID], s.typeDelivered(eventID)))
			}
		}
		return len(missing) == 0, fmt.Sprintf("%d of %d missing: %s\n%s", len(missing), len(toGhosts), strings.Join(missing, ", "), s.problems())
	})
	repeated := 0
	for body, eventID := range toGhosts {
		if ids := byBody[body]; len(slices.Compact(slices.Sorted(slices.Values(ids)))) != 1 || ids[0] != eventID {
			t.Errorf("the bridge received %q as events %v, want %s once", body, ids, eventID)
		}
	}
	for eventID, txns := range txnsOf {
		distinct := slices.Compact(slices.Sorted(slices.Values(txns)))
		if len(distinct) != 1 {
			t.Errorf("the bridge received event %s in transactions %v: an event goes in one transaction", eventID, distinct)
		}
		repeated += len(txns) - 1
	}
	t.Logf("the bridge got %d events, %d of them again in a transaction it was sent before", len(txnsOf), repeated)
	var want []string
	for body := range toPuppet {
		want = append(want, body)
	}
	s.lb.waitDecrypts(t, pup, apiRoom, want)
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

// A process whose lease another process took (here: the lease row rewritten, as a takeover after a
// network partition leaves it) stops acting at its next renewal, says so in its log and exits with
// code 7, having handled nothing more.
func TestLostLeaseStopsTheProcess(t *testing.T) {
	base := needPostgres(t)
	pgURL, err := freshPostgresDatabase(base)
	if err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	e.cleanups = append(e.cleanups, func() { _ = dropPostgresDatabase(base, pgURL) })
	e.mu.Unlock()
	h := startInstance(t, "alt", func(c *heirloomConfig) { c.dbType, c.dbURI = "postgres", pgURL })
	h.postgres, h.pgURL = true, pgURL
	h.newPuppet(t)
	db, err := sql.Open("postgres", pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	mark := h.mark(t)
	if _, err = db.Exec(`UPDATE heirloom_lease SET holder='heirloom-elsewhere', host='elsewhere', pid=1,
		expires_at=clock_timestamp() + interval '1 hour'`); err != nil {
		t.Fatal(err)
	}
	lost := mark.wait(t, 10*time.Second, "the loss", func(l logLine) bool { return strings.HasPrefix(l.str("message"), "Lost the lease") })
	if l := lost.str("level"); l != "error" || !strings.Contains(lost.str("error"), "taken by another process") {
		t.Fatalf("the loss was logged as %v", lost)
	}
	if !h.waitHeirloomExit(30 * time.Second) {
		t.Fatal("the process that lost its lease did not exit")
	}
	var exit *exec.ExitError
	if !errors.As(h.exitErr, &exit) || exit.ExitCode() != 7 {
		t.Fatalf("exit: %v, want code 7", h.exitErr)
	}
	after := false
	for _, l := range mark.lines(t) {
		after = after || strings.HasPrefix(l.str("message"), "Lost the lease")
		if after && (l.str("message") == "Provisioned puppet" || strings.HasPrefix(l.str("message"), "Transaction handled")) {
			t.Fatalf("acted after the loss: %v", l)
		}
	}
}
