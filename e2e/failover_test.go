package e2e

// A standby that takes over with nothing lost, as docs/deployment.md deploys it ("Two processes and
// a load balancer"): two heirloom processes with one config on one PostgreSQL database, behind haproxy
// (scripts/haproxy.sh) which routes by GET /_heirloom/v1/ready; the homeserver's registration and
// the bridge point at haproxy. heirloom runs in gateway mode in front of the test bridge, with an
// API-mode puppet beside it, while js-sdk users talk to both (failover_site_test.go).

import (
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// failoverTakeoverLimit is how soon the standby must serve after the active process dies.
const failoverTakeoverLimit = 10 * time.Second

// olmDecryptionErrors are what mautrix and heirloom log when an Olm message cannot be decrypted.
var olmDecryptionErrors = []string{"Failed to decrypt olm message", "Found matching session, but decryption failed",
	"Failed to decrypt to-device event", "DEBUG: Failed to decrypt prekey olm message with newly created session"}

// failoverScene is what flows through the deployment: the bridge's ghosts in an encrypted room
// with a js-sdk user, an API puppet with that user in another, and a room whose history the puppet
// shares with a second js-sdk user.
type failoverScene struct {
	bridge      *jsBridge
	ghosts      ghostScene
	u, u2       jsUser
	pup         puppetIdentity
	apiRoom     string
	historyRoom string
}

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
	sc := s.newScene(t)
	senders, stop := s.startTraffic(sc)
	defer stop()
	time.Sleep(2 * time.Second) // traffic before the second process starts
	markB, standbyPIDs := s.startStandbyWhileBusy(t)
	killed := s.killWithBundleInFlight(t, sc)
	s.checkTakeover(t, killed, markB, standbyPIDs)
	time.Sleep(4 * time.Second) // traffic after the takeover
	stop()
	s.checkDelivered(t, senders, sc)
	s.checkBundleDelivered(t, sc)
	for _, h := range []*instance{s.a, s.b} {
		data, _ := os.ReadFile(h.logPath)
		for _, bad := range olmDecryptionErrors {
			if strings.Contains(string(data), bad) {
				t.Errorf("%s logged an Olm decryption error (%q); see %s", h.name, bad, h.logPath)
			}
		}
	}
}

// newScene sets the rooms up through the active process and has each side write once, so that
// the ghosts' and the puppet's devices and sessions exist before the traffic.
func (s *failoverSite) newScene(t *testing.T) *failoverScene {
	t.Helper()
	sc := &failoverScene{u: newJSUser(t, true), u2: newJSUser(t, true)}
	sc.bridge = startJSBridge(t, jsBridgeOpts{Homeserver: fmt.Sprintf("http://127.0.0.1:%d", s.lb.asPort), Registration: &e.jsBridgeGWReg})
	sc.ghosts = newGhostScene(t, sc.bridge, sc.u, "jsg_", "failover room")
	s.lb.apiOK(t, "PUT", "/puppets/@"+name(s.a.prefix+"fo")+":"+domain, map[string]any{}, &sc.pup)
	sc.apiRoom = s.lb.createRoom(t, sc.pup, "shared", sc.u.UserID)
	jsAcceptInvite(t, sc.u, sc.apiRoom)
	room := sc.ghosts.room
	sc.bridge.call(t, "sendText", map[string]any{"user": sc.ghosts.alice, "room_id": room, "body": "ghost warm-up"}, nil)
	jsWaitDecrypted(t, sc.u, room, map[string]any{"body": "ghost warm-up"})
	jsSend(t, sc.u, room, "js warm-up")
	sc.bridge.waitEvent(t, map[string]any{"room_id": room, "body": "js warm-up"})
	s.lb.send(t, sc.pup, sc.apiRoom, "puppet warm-up")
	jsWaitDecrypted(t, sc.u, sc.apiRoom, map[string]any{"body": "puppet warm-up"})
	jsSend(t, sc.u, sc.apiRoom, "js warm-up to the puppet")
	s.lb.waitDecrypts(t, sc.pup, sc.apiRoom, []string{"js warm-up to the puppet"})
	sc.historyRoom = s.lb.createRoom(t, sc.pup, "shared")
	s.lb.send(t, sc.pup, sc.historyRoom, "said before the failover")
	return sc
}

// startTraffic starts the four senders: a ghost (through the bridge) and the puppet (through the
// API) into their rooms, and the js-sdk user into both. stop stops them and waits for each to
// finish its message.
func (s *failoverSite) startTraffic(sc *failoverScene) (senders []*traffic, stop func()) {
	senders = []*traffic{
		{name: "ghost", sent: map[string]string{}, send: func(body, txnID string) (string, error) {
			var out struct {
				EventID string `json:"event_id"`
			}
			err := sc.bridge.try("sendMessage", map[string]any{"user": sc.ghosts.alice, "room_id": sc.ghosts.room, "txn_id": txnID,
				"content": map[string]any{"msgtype": "m.text", "body": body}}, &out)
			return out.EventID, err
		}},
		{name: "puppet", sent: map[string]string{}, send: func(body, txnID string) (string, error) {
			var out struct {
				EventID string `json:"event_id"`
			}
			code, err := s.lb.api("POST", "/puppets/"+sc.pup.UserID+"/rooms/"+sc.apiRoom+"/messages?txn_id="+txnID,
				map[string]any{"msgtype": "m.text", "body": body}, &out)
			if err == nil && code != 200 {
				err = fmt.Errorf("answered %d", code)
			}
			return out.EventID, err
		}},
		jsTraffic("js to the ghosts", sc.u, sc.ghosts.room),
		jsTraffic("js to the puppet", sc.u, sc.apiRoom),
	}
	done := make(chan struct{})
	var sending sync.WaitGroup
	for _, tr := range senders {
		sending.Add(1)
		go tr.run(done, &sending)
	}
	var once sync.Once
	return senders, func() {
		once.Do(func() { close(done) })
		sending.Wait()
	}
}

// startStandbyWhileBusy starts the second process while the first is busy and returns its log
// mark and the PostgreSQL backends it has as the standby: one, its lease's.
func (s *failoverSite) startStandbyWhileBusy(t *testing.T) (logMark, map[int]bool) {
	t.Helper()
	markB := s.b.mark(t)
	if err := s.b.startStandby(e.binary); err != nil {
		t.Fatal(err)
	}
	waiting := markB.wait(t, 10*time.Second, "the standby's wait", func(l logLine) bool {
		return strings.HasPrefix(l.str("message"), "Waiting as the standby")
	})
	application := waiting.str("application_name")
	pids := map[int]bool{}
	for range 10 {
		backends := s.backends(t, application)
		if len(backends) > 1 {
			t.Fatalf("the standby has %d connections to the database, want its lease's one: %v", len(backends), backends)
		}
		for pid := range backends {
			pids[pid] = true
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(pids) == 0 {
		t.Fatalf("no connection of the standby (application_name %q) seen", application)
	}
	return markB, pids
}

// killWithBundleInFlight has the puppet invite the second js-sdk user and kills the active process
// (SIGKILL) once the invite's bundle is uploaded and not yet delivered. It returns when it killed.
func (s *failoverSite) killWithBundleInFlight(t *testing.T, sc *failoverScene) time.Time {
	t.Helper()
	markA := s.a.mark(t)
	if err := os.WriteFile(s.faults, []byte("hold_before_delivery"), 0o600); err != nil {
		t.Fatal(err)
	}
	go func() {
		_, _ = s.lb.api("POST", "/puppets/"+sc.pup.UserID+"/rooms/"+sc.historyRoom+"/invite", map[string]any{"user_id": sc.u2.UserID}, nil)
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
	return killed
}

// checkTakeover checks that the standby served through haproxy within the limit, and that until it
// took over it wrote nothing to the database and sent the homeserver nothing but its startup
// checks.
func (s *failoverSite) checkTakeover(t *testing.T, killed time.Time, markB logMark, standbyPIDs map[int]bool) {
	t.Helper()
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
}

// checkBundleDelivered has the bridge retry the invite that failed with the process: its echo
// delivers the bundle built before the SIGKILL, no second is built, and the invitee reads the
// history.
func (s *failoverSite) checkBundleDelivered(t *testing.T, sc *failoverScene) {
	t.Helper()
	path := fmt.Sprintf("%s/_matrix/client/v3/rooms/%s/invite?user_id=%s", e.hsURL, url.PathEscape(sc.historyRoom), url.QueryEscape(sc.pup.UserID))
	if code, err := e.request("POST", path, "Bearer "+s.a.asToken, map[string]any{"user_id": sc.u2.UserID}, nil); err != nil || code != 200 {
		t.Fatalf("the invite again: %d %v", code, err)
	}
	var sent []sentBundle
	eventually(t, 60*time.Second, "the bundle in flight to be delivered", func() (bool, string) {
		sent = nil
		for _, b := range s.lb.bundles(t, sc.pup).Sent {
			if b.RoomID == sc.historyRoom {
				sent = append(sent, b)
			}
		}
		return len(sent) == 1 && sent[0].State == "delivered", fmt.Sprintf("%+v", sent)
	})
	e.peer(t, "join", map[string]any{"user": sc.u2.UserID, "room_id": sc.historyRoom}, nil)
	requireJSDecrypts(t, sc.u2, sc.historyRoom, []string{"said before the failover"})
}

// checkDelivered checks that every message sent reached its recipients once, decrypted: the
// ghosts' and the puppet's the js-sdk user, the js-sdk user's the bridge (each event in one
// transaction, perhaps delivered again under its ID) and the puppet.
func (s *failoverSite) checkDelivered(t *testing.T, senders []*traffic, sc *failoverScene) {
	t.Helper()
	scene, u, pup, apiRoom := sc.ghosts, sc.u, sc.pup, sc.apiRoom
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
