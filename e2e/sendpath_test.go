package e2e

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// sendPathSize is HEIRLOOM_BENCH_SEND_MESSAGES and HEIRLOOM_BENCH_SEND_MEMBERS (defaults 1,000 and 20).
func sendPathSize() (messages, members int) {
	messages, members = 1000, 20
	if v, err := strconv.Atoi(os.Getenv("HEIRLOOM_BENCH_SEND_MESSAGES")); err == nil && v >= 2 {
		messages = v
	}
	if v, err := strconv.Atoi(os.Getenv("HEIRLOOM_BENCH_SEND_MEMBERS")); err == nil && v >= 1 {
		members = v
	}
	return messages, members
}

// sendPathRoom is an encrypted room of a puppet with js-sdk members, all joined.
func sendPathRoom(tb testing.TB, members int) (puppetIdentity, string, []jsUser) {
	tb.Helper()
	p := newPuppet(tb)
	users := make([]jsUser, members)
	ids := make([]string, members)
	for i := range users {
		users[i] = newJSUser(tb, true)
		ids[i] = users[i].UserID
	}
	roomID := puppetCreateRoom(tb, p, "shared", ids...)
	var wg sync.WaitGroup
	errs := make(chan error, members)
	for _, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, err := e.request("POST", e.peerURL+"/rpc/join", "", map[string]any{"user": u.UserID, "room_id": roomID, "timeout_ms": 120000}, nil)
			if err != nil || code != 200 {
				errs <- fmt.Errorf("%s joining: %d %v", u.UserID, code, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
	return p, roomID, users
}

// sendTimed sends n messages from the puppet one after the other through heirloom's API (each
// returns once the homeserver accepted the encrypted event), calling between after every one, and
// returns each send's time (between's own time left out).
func sendTimed(tb testing.TB, p puppetIdentity, roomID, prefix string, n int, between func(i int)) []float64 {
	tb.Helper()
	times := make([]float64, 0, n)
	for i := range n {
		start := time.Now()
		var resp struct {
			EventID string `json:"event_id"`
		}
		code, err := e.api("POST", "/puppets/"+p.UserID+"/rooms/"+roomID+"/messages",
			map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("%s %d", prefix, i)}, &resp)
		times = append(times, float64(time.Since(start).Microseconds())/1000)
		if err != nil || code != 200 {
			tb.Fatalf("send %d: %d %v", i, code, err)
		}
		if between != nil {
			between(i)
		}
	}
	return times
}

// homeserverTimed does the homeserver's part of n of the puppet's sends without heirloom: as
// heirloom does for each message, it reads the member list and sends an m.room.encrypted event
// (here the content of one heirloom sent, so the same bytes), straight to Synapse with the
// appservice's token, one after the other. It returns each message's time.
func homeserverTimed(tb testing.TB, p puppetIdentity, roomID, eventID string, n int) []float64 {
	tb.Helper()
	auth := "Bearer " + e.asToken
	as := "user_id=" + url.QueryEscape(p.UserID)
	room := e.hsURL + "/_matrix/client/v3/rooms/" + url.PathEscape(roomID)
	var evt struct {
		Content json.RawMessage `json:"content"`
	}
	if code, err := e.request("GET", room+"/event/"+url.PathEscape(eventID)+"?"+as, auth, nil, &evt); err != nil || code != 200 {
		tb.Fatalf("reading the event heirloom sent: %d %v", code, err)
	}
	times := make([]float64, 0, n)
	for i := range n {
		start := time.Now()
		if code, err := e.request("GET", room+"/members?"+as, auth, nil, nil); err != nil || code != 200 {
			tb.Fatalf("members %d: %d %v", i, code, err)
		}
		txn := fmt.Sprintf("homeserver-only-%d-%d", time.Now().UnixNano(), i)
		if code, err := e.request("PUT", room+"/send/m.room.encrypted/"+txn+"?"+as, auth, evt.Content, nil); err != nil || code != 200 {
			tb.Fatalf("send %d: %d %v", i, code, err)
		}
		times = append(times, float64(time.Since(start).Microseconds())/1000)
	}
	return times
}

// sendPhase is one part of the send-path benchmark, as `make bench` reports it.
type sendPhase struct {
	Name       string    `json:"name"`
	Messages   int       `json:"messages"`
	Seconds    float64   `json:"seconds"`
	PerSecond  float64   `json:"messages_per_second"`
	KeyQueries float64   `json:"key_queries"`
	MS         []float64 `json:"ms"` // min, median, max per message
	// CPUMS is the CPU time (user and system) each process used per message in the phase.
	CPUMS map[string]float64 `json:"cpu_ms_per_message"`
}

func newSendPhase(name string, times []float64, keyQueries float64, cpu map[string]float64) sendPhase {
	sorted := slices.Clone(times)
	slices.Sort(sorted)
	total := 0.0
	for _, t := range times {
		total += t
	}
	for k := range cpu {
		cpu[k] /= float64(len(times))
	}
	return sendPhase{Name: name, Messages: len(times), Seconds: total / 1000, PerSecond: float64(len(times)) / (total / 1000),
		KeyQueries: keyQueries, MS: []float64{sorted[0], sorted[len(sorted)/2], sorted[len(sorted)-1]}, CPUMS: cpu}
}

// processCPU returns the CPU time (user and system, ms) heirloom, Synapse and the js-sdk peer have
// used so far, from /proc.
func processCPU(tb testing.TB) map[string]float64 {
	tb.Helper()
	pids := map[string]int{"heirloom": e.heirloom.Process.Pid, "js-sdk peer": e.peerCmd.Process.Pid}
	if data, err := os.ReadFile(filepath.Join(e.dir, "synapse", "synapse.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil {
			pids["synapse"] = pid
		}
	}
	out := map[string]float64{}
	for name, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			tb.Fatalf("reading %s's CPU time: %v", name, err)
		}
		// The fields after the command name (in parentheses, which may hold spaces): utime and
		// stime are the 12th and 13th, in clock ticks (100 a second on Linux).
		fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
		utime, _ := strconv.ParseFloat(fields[11], 64)
		stime, _ := strconv.ParseFloat(fields[12], 64)
		out[name] = (utime + stime) * 10
	}
	return out
}

// cpuSince returns the CPU time each process used since before.
func cpuSince(tb testing.TB, before map[string]float64) map[string]float64 {
	now := processCPU(tb)
	for k := range now {
		now[k] -= before[k]
	}
	return now
}

func loadAverage() string {
	data, _ := os.ReadFile("/proc/loadavg")
	fields := strings.Fields(string(data))
	if len(fields) < 3 {
		return "?"
	}
	return strings.Join(fields[:3], " ")
}

// BenchmarkSendPath: a puppet sends 1,000 messages (HEIRLOOM_BENCH_SEND_MESSAGES) into an
// encrypted room with 20 js-sdk members (HEIRLOOM_BENCH_SEND_MEMBERS), through the real Synapse.
//   - steady: no membership or device change. Messages per second and heirloom's device key
//     queries (heirloom_key_queries_total) per message, after a first message that queried and
//     shared the room key with every member.
//   - new-device: the same, with one member logging in another device halfway. That device must
//     read the last message (it gets the room key once heirloom has re-queried its owner's
//     devices), and the key queries are counted the same way.
//   - homeserver-only: the homeserver's part of each send without heirloom (homeserverTimed):
//     what bounds the figures above.
//
// Each phase has a room and members of its own: Synapse's cost per message grows with the
// number of events its members have not read (the js-sdk clients send no read receipts), so a
// phase run in a room the previous one filled would pay for it.
//
// With HEIRLOOM_BENCH_RESULTS set it writes send.json there for scripts/benchtable.
func BenchmarkSendPath(b *testing.B) {
	messages, members := sendPathSize()
	const first = "first message: every member's devices queried, the room key shared"
	// room sets up a phase's room and sends its first message, which every member reads.
	room := func() (puppetIdentity, string, []jsUser) {
		p, roomID, users := sendPathRoom(b, members)
		puppetSend(b, p, roomID, first)
		for _, u := range []jsUser{users[0], users[members-1]} {
			e.peer(b, "waitForMessage", map[string]any{"user": u.UserID, "room_id": roomID, "body": first, "timeout_ms": 60000}, nil)
		}
		return p, roomID, users
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		loadBefore := loadAverage()

		p, roomID, users := room()
		b.StartTimer()
		queries, cpu := metric(b, "heirloom_key_queries_total"), processCPU(b)
		times := sendTimed(b, p, roomID, "steady", messages, nil)
		steady := newSendPhase("steady", times, metric(b, "heirloom_key_queries_total")-queries, cpuSince(b, cpu))
		b.StopTimer()
		e.peer(b, "waitForMessage", map[string]any{"user": users[members-1].UserID, "room_id": roomID,
			"body": fmt.Sprintf("steady %d", messages-1), "timeout_ms": 120000}, nil)

		// A member's second device halfway.
		p, roomID, users = room()
		var second jsUser
		queries, cpu = metric(b, "heirloom_key_queries_total"), processCPU(b)
		times = sendTimed(b, p, roomID, "new-device", messages, func(i int) {
			if i == messages/2-1 {
				e.peer(b, "addDevice", map[string]any{"user": users[0].UserID, "timeout_ms": 60000}, &second)
			}
		})
		newDevice := newSendPhase("new-device", times, metric(b, "heirloom_key_queries_total")-queries, cpuSince(b, cpu))
		lastBody := fmt.Sprintf("new-device %d", messages-1)
		e.peer(b, "waitForMessage", map[string]any{"user": users[0].UserID, "device": second.DeviceID, "room_id": roomID,
			"body": lastBody, "timeout_ms": 120000}, nil)

		// The homeserver alone, in a room like the first, with the content of a message heirloom
		// sent there.
		p, roomID, _ = room()
		var sent struct {
			EventID string `json:"event_id"`
		}
		apiOK(b, "POST", "/puppets/"+p.UserID+"/rooms/"+roomID+"/messages", map[string]any{"msgtype": "m.text", "body": "steady 0"}, &sent)
		cpu = processCPU(b)
		times = homeserverTimed(b, p, roomID, sent.EventID, messages)
		homeserver := newSendPhase("homeserver-only", times, 0, cpuSince(b, cpu))
		loadAfter := loadAverage()

		b.ReportMetric(steady.PerSecond, "steady-msg/s")
		b.ReportMetric(steady.KeyQueries/float64(messages), "steady-key-queries/msg")
		b.ReportMetric(newDevice.PerSecond, "new-device-msg/s")
		b.ReportMetric(newDevice.KeyQueries/float64(messages), "new-device-key-queries/msg")
		b.ReportMetric(homeserver.PerSecond, "homeserver-only-msg/s")
		for _, ph := range []sendPhase{steady, newDevice, homeserver} {
			b.Logf("%s: %d messages in %.1f s, %.1f msg/s, %.0f key queries, per message %.1f / %.1f / %.1f ms (min / median / max); "+
				"CPU per message: heirloom %.2f ms, Synapse %.1f ms, js-sdk peer %.1f ms",
				ph.Name, ph.Messages, ph.Seconds, ph.PerSecond, ph.KeyQueries, ph.MS[0], ph.MS[1], ph.MS[2],
				ph.CPUMS["heirloom"], ph.CPUMS["synapse"], ph.CPUMS["js-sdk peer"])
		}
		b.Logf("the new device %s read %q; load average %s before, %s after", second.DeviceID, lastBody, loadBefore, loadAfter)
		if dir := os.Getenv("HEIRLOOM_BENCH_RESULTS"); dir != "" {
			data, err := json.Marshal(map[string]any{"members": members, "messages": messages, "new_device_read_last": true,
				"load_before": loadBefore, "load_after": loadAfter, "phases": []sendPhase{steady, newDevice, homeserver}})
			if err != nil {
				b.Fatal(err)
			}
			if err = os.WriteFile(filepath.Join(dir, "send.json"), append(data, '\n'), 0o600); err != nil {
				b.Fatal(err)
			}
		}
	}
}
