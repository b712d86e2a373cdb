package e2e

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// loadScale is HEIRLOOM_LOAD_SCALE (default 0.2 in the suite; `make load` runs 1.0): at 1.0 the
// load test puts 200 puppets in 50 encrypted rooms with 10 js-sdk users sending 5,000 messages.
func loadScale() float64 {
	if v, err := strconv.ParseFloat(os.Getenv("HEIRLOOM_LOAD_SCALE"), 64); err == nil && v > 0 {
		return v
	}
	return 0.2
}

// TestLoad: js-sdk users send messages into encrypted rooms full of puppets; everything reaches
// heirloom through transactions (room events and the to-device room keys), and every puppet
// decrypts every message of its room. Reports throughput and heirloom's peak RSS.
func TestLoad(t *testing.T) {
	scale := loadScale()
	rooms := max(2, int(50*scale))
	puppetsPerRoom := 4
	users := max(2, int(10*scale))
	messages := max(rooms, int(5000*scale))
	perRoom := messages / rooms

	js := make([]jsUser, users)
	for i := range js {
		js[i] = newJSUser(t, true)
	}
	type loadRoom struct {
		id      string
		owner   jsUser
		puppets []puppetIdentity
	}
	all := make([]loadRoom, rooms)
	var wg sync.WaitGroup
	errs := make(chan error, rooms)
	for r := range all {
		owner := js[r%users]
		roomID := jsCreateRoom(t, owner, "shared")
		all[r] = loadRoom{id: roomID, owner: owner}
		for range puppetsPerRoom {
			all[r].puppets = append(all[r].puppets, newPuppet(t))
		}
	}
	for r := range all {
		for _, p := range all[r].puppets {
			e.peer(t, "invite", map[string]any{"user": all[r].owner.UserID, "room_id": all[r].id, "target": p.UserID, "share_history": false}, nil)
		}
	}
	for r := range all {
		for _, p := range all[r].puppets {
			e.peer(t, "waitForMembership", map[string]any{"user": all[r].owner.UserID, "room_id": all[r].id, "target": p.UserID,
				"membership": "join", "timeout_ms": 60000}, nil)
		}
	}
	before := metric(t, `heirloom_transactions_total{outcome="processed"}`)
	start := time.Now()
	// Each js user sends into its rooms in turn; users send in parallel.
	for u := range js {
		wg.Add(1)
		go func(u int) {
			defer wg.Done()
			for r := u; r < rooms; r += users {
				for m := range perRoom {
					var out map[string]any
					code, err := e.request("POST", e.peerURL+"/rpc/send", "", map[string]any{"user": js[u].UserID,
						"room_id": all[r].id, "body": fmt.Sprintf("load %d/%d", r, m), "timeout_ms": 60000}, &out)
					if err != nil || code != 200 {
						errs <- fmt.Errorf("send %d/%d: %d %v", r, m, code, err)
						return
					}
				}
			}
		}(u)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	sent := time.Since(start)
	// Every puppet decrypts every message of its room.
	for r := range all {
		want := make([]string, perRoom)
		for m := range want {
			want[m] = fmt.Sprintf("load %d/%d", r, m)
		}
		for _, p := range all[r].puppets {
			waitPuppetDecrypts(t, p, all[r].id, want)
		}
	}
	total := time.Since(start)
	txns := metric(t, `heirloom_transactions_total{outcome="processed"}`) - before
	if failed := metric(t, `heirloom_errors_total{where="transaction"}`); failed > 0 {
		t.Fatalf("%v transactions failed to be recorded", failed)
	}
	peak := procStatus(t, "VmHWM")
	decryptions := rooms * puppetsPerRoom * perRoom
	t.Logf("load: %d puppets, %d rooms, %d js users, %d messages sent in %s (%.0f msg/s); %d puppet decryptions verified; "+
		"%.0f transactions; all decrypted after %s; heirloom peak RSS %.1f MB",
		rooms*puppetsPerRoom, rooms, users, rooms*perRoom, sent.Round(time.Millisecond),
		float64(rooms*perRoom)/sent.Seconds(), decryptions, txns, total.Round(time.Millisecond), float64(peak)/1e6)
	if peak > 1<<30 {
		t.Fatalf("heirloom's peak RSS %d bytes is not bounded", peak)
	}
}
