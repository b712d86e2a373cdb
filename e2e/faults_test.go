package e2e

import (
	"context"
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
	t.Cleanup(func() {
		if !restarted {
			if err := e.synapse("start"); err != nil {
				t.Errorf("restarting Synapse after the outage: %v", err)
			}
		}
	})
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

// Another process holding SQLite's write lock for a while does not make heirloom fail: a write
// that comes in meanwhile waits for the lock (busy timeout) and goes through once it is released.
func TestSQLiteBusy(t *testing.T) {
	if os.Getenv("HEIRLOOM_E2E_POSTGRES") != "" {
		t.Skip("SQLite locking: this run uses PostgreSQL")
	}
	const hold = 2 * time.Second
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
	locked := true
	defer func() {
		if locked {
			_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
		}
	}()
	type result struct {
		code    int
		err     error
		eventID string
		at      time.Time
	}
	done := make(chan result, 1)
	const text = "written while the database was locked"
	go func() {
		var resp struct {
			EventID string `json:"event_id"`
		}
		code, err := e.api("POST", "/puppets/"+p.UserID+"/rooms/"+roomID+"/messages", map[string]any{"msgtype": "m.text", "body": text}, &resp)
		done <- result{code, err, resp.EventID, time.Now()}
	}()
	// The send needs the write lock (its new outbound session is stored): while another process
	// holds the lock, it must not finish.
	select {
	case r := <-done:
		t.Fatalf("the send finished (%d %v) while another process held the write lock", r.code, r.err)
	case <-time.After(hold):
	}
	if _, err = conn.ExecContext(t.Context(), "COMMIT"); err != nil {
		t.Fatalf("releasing the lock: %v", err)
	}
	locked = false
	released := time.Now()
	select {
	case r := <-done:
		if r.err != nil || r.code != 200 || r.eventID == "" {
			t.Fatalf("the send that waited for the lock answered %d %v %q", r.code, r.err, r.eventID)
		}
		if r.at.Before(released) {
			t.Fatalf("the send finished before the lock was released")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the send did not finish within 30 s of the lock's release")
	}
	waitPuppetDecrypts(t, p, roomID, []string{text})
}
