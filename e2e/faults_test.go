package e2e

import (
	"database/sql"
	"os"
	"strconv"
	"testing"
	"time"
)

// Synapse stops for a while (HEIRLOOM_E2E_OUTAGE, default 60 s) during traffic: heirloom answers
// the bridge with clear errors meanwhile, stays up, and afterwards loses nothing: the transactions
// Synapse queued arrive, keys flow both ways, and history sharing works.
func TestHomeserverOutage(t *testing.T) {
	outage := 60 * time.Second
	if v, err := strconv.Atoi(os.Getenv("HEIRLOOM_E2E_OUTAGE")); err == nil {
		outage = time.Duration(v) * time.Second
	}
	u := newJSUser(t, true)
	p := newPuppet(t)
	roomID := jsRoomWithPuppet(t, u, p, "shared")
	jsSend(t, u, roomID, "before the outage")
	waitPuppetDecrypts(t, p, roomID, []string{"before the outage"})

	if err := e.synapse("stop"); err != nil {
		t.Fatal(err)
	}
	restarted := false
	defer func() {
		if !restarted {
			_ = e.synapse("start")
		}
	}()
	deadline := time.Now().Add(outage)
	for time.Now().Before(deadline) {
		var errResp struct {
			ErrCode string `json:"errcode"`
		}
		code, err := e.api("POST", "/puppets/"+p.UserID+"/rooms/"+roomID+"/messages",
			map[string]any{"msgtype": "m.text", "body": "during the outage"}, &errResp)
		if err != nil || code < 500 || errResp.ErrCode == "" {
			t.Fatalf("a send during the outage answered %d %q %v, want a 5xx Matrix error", code, errResp.ErrCode, err)
		}
		var status map[string]any
		apiOK(t, "GET", "/status", nil, &status)
		if status["homeserver_reachable"] != false {
			t.Fatalf("status during the outage: %v", status)
		}
		time.Sleep(min(5*time.Second, time.Until(deadline)))
	}
	if err := e.synapse("start"); err != nil {
		t.Fatal(err)
	}
	restarted = true

	jsSend(t, u, roomID, "after the outage")
	waitPuppetDecrypts(t, p, roomID, []string{"before the outage", "after the outage"})
	puppetSend(t, p, roomID, "the puppet after the outage")
	if _, ok := decryptedBodies(jsMessages(t, u, roomID, 3, 90000))["the puppet after the outage"]; !ok {
		t.Fatal("the js user cannot read the puppet after the outage")
	}
	other := jsCreateRoom(t, u, "shared")
	jsSend(t, u, other, "history after the outage")
	e.peer(t, "invite", map[string]any{"user": u.UserID, "room_id": other, "target": p.UserID}, nil)
	waitReceived(t, p, other, u.UserID, "imported")
}

// Another process holding SQLite's write lock for a while does not make heirloom fail: its
// writes wait (busy timeout) and go through.
func TestSQLiteBusy(t *testing.T) {
	if os.Getenv("HEIRLOOM_E2E_POSTGRES") != "" {
		t.Skip("SQLite locking: this run uses PostgreSQL")
	}
	p := newPuppet(t)
	roomID := puppetCreateRoom(t, p, "shared")
	db, err := sql.Open("sqlite3", "file:"+e.dbPath+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err = conn.ExecContext(t.Context(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	released := make(chan struct{})
	go func() {
		time.Sleep(2 * time.Second)
		_, _ = conn.ExecContext(t.Context(), "COMMIT")
		close(released)
	}()
	start := time.Now()
	eventID := puppetSend(t, p, roomID, "written while the database was locked")
	<-released
	if eventID == "" || time.Since(start) < time.Second {
		t.Fatalf("the send did not wait for the lock (%s)", time.Since(start))
	}
	waitPuppetDecrypts(t, p, roomID, []string{"written while the database was locked"})
}
