package e2e

// Gateway benchmarks (make bench-gateway): the test bridge behind heirloom, in encrypted rooms,
// beside the same bridge talking straight to Synapse in unencrypted rooms, measured in one run.
// Each runs once (-benchtime 1x) over a fixed number of messages:
//
//	HEIRLOOM_BRIDGE_LATENCY_MESSAGES  messages per path for the latency (default 20)
//	HEIRLOOM_GATEWAY_SENDS            sends per path for the throughput (default 100)
//	HEIRLOOM_GATEWAY_GHOSTS           speaking ghosts in the per-ghost device benchmark (default 200)

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// latencyPath is one way from a js-sdk user's send to the bridge's handler.
type latencyPath struct {
	name   string
	bridge *jsBridge
	room   string
	// encrypted: the bridge receives the event still encrypted (the direct path into an
	// encrypted room), so it is matched by its type and position, not its body.
	encrypted bool
	after     int64
	ms        []float64
}

// measure sends one message as u and waits for the bridge's handler to have it: the time from
// the send call to the handler.
func (p *latencyPath) measure(b *testing.B, u jsUser, i int) {
	b.Helper()
	body := fmt.Sprintf("latency %s %d %s", p.name, i, name(""))
	start := float64(time.Now().UnixMicro()) / 1000
	id := jsSendID(b, u, p.room, body)
	filter := map[string]any{"room_id": p.room, "type": "m.room.message", "body": body, "after": p.after}
	if p.encrypted {
		filter = map[string]any{"room_id": p.room, "type": "m.room.encrypted", "after": p.after}
	}
	ev := p.bridge.waitEvent(b, filter)
	if ev.Event.EventID != id {
		b.Fatalf("%s: message %d reached the bridge as %s, want %s", p.name, i, ev.Event.EventID, id)
	}
	p.after = ev.Seq
	p.ms = append(p.ms, ev.ReceivedTS-start)
}

// gatewayRoom has a ghost of the bridge behind heirloom create a room (encrypted by
// gateway.encrypt_new_rooms) and invite u, who joins; the ghost speaks first, so it has a device
// when u sends.
func gatewayRoom(b testing.TB, bridge *jsBridge, ghost string, users ...jsUser) string {
	b.Helper()
	bridge.call(b, "register", map[string]any{"user": ghost}, nil)
	var room struct {
		RoomID string `json:"room_id"`
	}
	bridge.call(b, "createRoom", map[string]any{"user": ghost, "name": "gateway bench"}, &room)
	bridge.call(b, "sendText", map[string]any{"user": ghost, "room_id": room.RoomID, "body": "ready"}, nil)
	for _, u := range users {
		bridge.call(b, "invite", map[string]any{"user": ghost, "room_id": room.RoomID, "target": u.UserID}, nil)
		jsAcceptInvite(b, u, room.RoomID)
	}
	return room.RoomID
}

// directRoom has u create a room with a ghost of the directly connected bridge: unencrypted, or
// encrypted (the bridge then gets what it cannot read).
func directRoom(b testing.TB, bridge *jsBridge, ghost string, u jsUser, encrypted bool) string {
	b.Helper()
	bridge.call(b, "register", map[string]any{"user": ghost}, nil)
	var room struct {
		RoomID string `json:"room_id"`
	}
	e.peer(b, "createRoom", map[string]any{"user": u.UserID, "history_visibility": "shared", "encrypted": encrypted, "invite": []string{ghost}}, &room)
	roomID := room.RoomID
	bridge.waitEvent(b, map[string]any{"room_id": roomID, "type": "m.room.member", "state_key": ghost, "membership": "invite"})
	bridge.call(b, "join", map[string]any{"user": ghost, "room_id": roomID}, nil)
	e.peer(b, "waitForMembership", map[string]any{"user": u.UserID, "room_id": roomID, "target": ghost, "membership": "join"}, nil)
	return roomID
}

// BenchmarkGatewayLatency: a js-sdk user's message to the bridge's handler, through heirloom into
// an encrypted room, beside the same kind of bridge talking straight to Synapse in an
// unencrypted room; the two paths take turns, message by message.
func BenchmarkGatewayLatency(b *testing.B) {
	_, gwURL := startGateway(b, "gw-js", func(g *gatewayConfig) { g.encryptNewRooms = true })
	viaGateway := startJSBridge(b, jsBridgeOpts{Homeserver: gwURL, Registration: &e.jsBridgeGWReg})
	direct := sharedJSBridge(b)
	u := newJSUser(b, true)
	paths := []*latencyPath{
		{name: "direct", bridge: direct, room: directRoom(b, direct, "@"+name("jsb_lat")+":"+domain, u, false)},
		{name: "direct-encrypted", bridge: direct, room: directRoom(b, direct, "@"+name("jsb_late")+":"+domain, u, true), encrypted: true},
		{name: "gateway", bridge: viaGateway, room: gatewayRoom(b, viaGateway, "@"+name("jsg_lat")+":"+domain, u)},
	}
	for _, p := range paths {
		var last struct {
			LastSeq int64 `json:"last_seq"`
		}
		p.bridge.call(b, "events", map[string]any{"room_id": p.room}, &last)
		p.after = last.LastSeq
		p.measure(b, u, -1) // warm up: the first message shares a session
		p.ms = nil
	}
	n := latencyMessages()
	sumBefore, countBefore := deliverySeconds(b, gwURL)
	b.ResetTimer()
	for range b.N {
		for i := range n {
			for _, p := range paths {
				p.measure(b, u, i)
			}
		}
	}
	b.StopTimer()
	stats := map[string][2]float64{}
	for _, p := range paths {
		slices.Sort(p.ms)
		stats[p.name] = [2]float64{percentile(p.ms, 50), percentile(p.ms, 99)}
	}
	d, de, g := stats["direct"], stats["direct-encrypted"], stats["gateway"]
	b.ReportMetric(d[0], "direct-p50-ms")
	b.ReportMetric(d[1], "direct-p99-ms")
	b.ReportMetric(g[0], "gateway-p50-ms")
	b.ReportMetric(g[1], "gateway-p99-ms")
	b.ReportMetric(g[0]-d[0], "added-p50-ms")
	b.ReportMetric(g[0]/d[0], "p50-ratio")
	b.ReportMetric(de[0], "direct-encrypted-p50-ms")
	// heirloom's own part, from its metrics: an event stored for the bridge to the bridge's ack.
	sum, count := deliverySeconds(b, gwURL)
	own := 1000 * (sum - sumBefore) / (count - countBefore)
	b.ReportMetric(own, "heirloom-mean-ms")
	b.Logf("%d messages per path, js-sdk send call -> matrix-appservice-bridge onEvent: direct (unencrypted) p50 %.1f ms p99 %.1f ms; "+
		"through heirloom (encrypted) p50 %.1f ms p99 %.1f ms; added p50 %.1f ms (ratio %.2f); heirloom's own part (stored -> bridge's ack) mean %.1f ms; "+
		"control: direct into an encrypted room (the bridge gets ciphertext) p50 %.1f ms p99 %.1f ms",
		n, d[0], d[1], g[0], g[1], g[0]-d[0], g[0]/d[0], own, de[0], de[1])
}

// BenchmarkGatewaySends: a ghost's text messages, one after the other as a bridge sends into a
// room, through heirloom into an encrypted room (with a js-sdk user and the ghost's own device to
// encrypt for), beside direct sends into an unencrypted room.
func BenchmarkGatewaySends(b *testing.B) {
	_, gwURL := startGateway(b, "gw-js", func(g *gatewayConfig) { g.encryptNewRooms = true })
	viaGateway := startJSBridge(b, jsBridgeOpts{Homeserver: gwURL, Registration: &e.jsBridgeGWReg})
	direct := sharedJSBridge(b)
	u := newJSUser(b, true)
	directGhost, gatewayGhost := "@"+name("jsb_send")+":"+domain, "@"+name("jsg_send")+":"+domain
	rooms := map[string]string{
		"direct":  directRoom(b, direct, directGhost, u, false),
		"gateway": gatewayRoom(b, viaGateway, gatewayGhost, u),
	}
	n := envInt("HEIRLOOM_GATEWAY_SENDS", 100)
	rate := map[string]float64{}
	b.ResetTimer()
	for range b.N {
		for _, path := range []string{"direct", "gateway"} {
			bridge, ghost := direct, directGhost
			if path == "gateway" {
				bridge, ghost = viaGateway, gatewayGhost
			}
			start := time.Now()
			var last string
			for i := range n {
				var sent struct {
					EventID string `json:"event_id"`
				}
				bridge.call(b, "sendText", map[string]any{"user": ghost, "room_id": rooms[path], "body": fmt.Sprintf("send %s %d", path, i)}, &sent)
				last = sent.EventID
			}
			rate[path] = float64(n) / time.Since(start).Seconds()
			// The last one is readable on the other side (decrypted, for the gateway).
			if m := jsWaitMessage(b, u, rooms[path], map[string]any{"body": fmt.Sprintf("send %s %d", path, n-1)}); m.EventID != last {
				b.Fatalf("%s: the last send arrived as %s, want %s", path, m.EventID, last)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(rate["direct"], "direct-msg/s")
	b.ReportMetric(rate["gateway"], "gateway-msg/s")
	b.ReportMetric(rate["gateway"]/rate["direct"], "throughput-ratio")
	b.Logf("%d sequential sends per path by one ghost: direct (unencrypted) %.1f msg/s, through heirloom (encrypted) %.1f msg/s, %.0f%% of direct",
		n, rate["direct"], rate["gateway"], 100*rate["gateway"]/rate["direct"])
}

// BenchmarkGatewayGhosts: the cost of a device per ghost. A room with 3 js-sdk users, and
// HEIRLOOM_GATEWAY_GHOSTS ghosts that each speak once (8 at a time): each ghost's first send
// creates its device and identity and shares its session with every device in the room, the
// other ghosts' included. Reported: time to the first message the first js-sdk user decrypts, to
// the last, and the to-device messages heirloom handled per second meanwhile.
func BenchmarkGatewayGhosts(b *testing.B) {
	gw, gwURL := startGateway(b, "gw-js", func(g *gatewayConfig) { g.encryptNewRooms = true })
	bridge := startJSBridge(b, jsBridgeOpts{Homeserver: gwURL, Registration: &e.jsBridgeGWReg})
	users := []jsUser{newJSUser(b, true), newJSUser(b, true), newJSUser(b, true)}
	owner := "@" + name("jsg_owner") + ":" + domain
	roomID := gatewayRoom(b, bridge, owner, users...)
	n := envInt("HEIRLOOM_GATEWAY_GHOSTS", 200)
	ghosts := make([]string, n)
	var wg sync.WaitGroup
	var failMu sync.Mutex
	var failures []error
	sem := make(chan struct{}, 8)
	// each runs calls of the bridge 8 at a time; failures are reported by the benchmark's goroutine.
	each := func(i int, calls func(i int) error) {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := calls(i); err != nil {
				failMu.Lock()
				failures = append(failures, err)
				failMu.Unlock()
			}
		})
	}
	checkFailures := func() {
		wg.Wait()
		if len(failures) > 0 {
			b.Fatalf("%d calls of the bridge failed, the first: %v", len(failures), failures[0])
		}
	}
	for i := range ghosts {
		ghosts[i] = "@" + name(fmt.Sprintf("jsg_g%d_", i)) + ":" + domain
		each(i, func(i int) error {
			if err := bridge.try("register", map[string]any{"user": ghosts[i]}, nil); err != nil {
				return err
			}
			if err := bridge.try("invite", map[string]any{"user": owner, "room_id": roomID, "target": ghosts[i]}, nil); err != nil {
				return err
			}
			return bridge.try("join", map[string]any{"user": ghosts[i], "room_id": roomID}, nil)
		})
	}
	checkFailures()
	toDeviceBefore := toDeviceHandled(b, gwURL)
	b.ResetTimer()
	start := time.Now()
	var firstAt atomic.Int64
	firstSeen := make(chan struct{})
	var firstErr error
	go func() {
		defer close(firstSeen)
		var m jsMessage
		code, err := e.request("POST", e.peerURL+"/rpc/waitForMessage", "", map[string]any{"user": users[0].UserID, "room_id": roomID,
			"body": "ghost 0 speaks", "timeout_ms": 300000}, &m)
		if err == nil && code != 200 {
			err = fmt.Errorf("waiting for the first ghost's message: %d", code)
		}
		firstErr = err
		firstAt.Store(int64(time.Since(start)))
	}()
	for i := range ghosts {
		each(i, func(i int) error {
			return bridge.try("sendText", map[string]any{"user": ghosts[i], "room_id": roomID, "body": fmt.Sprintf("ghost %d speaks", i)}, nil)
		})
		if i == 0 {
			wg.Wait() // the first goes alone: the time to its decryption is the first figure
		}
	}
	checkFailures()
	sent := time.Since(start)
	<-firstSeen
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	jsWaitMessage(b, users[0], roomID, map[string]any{"body": fmt.Sprintf("ghost %d speaks", n-1), "timeout_ms": 600000})
	last := time.Since(start)
	b.StopTimer()
	toDevice := toDeviceHandled(b, gwURL) - toDeviceBefore
	devices := 0
	for _, g := range ghosts {
		if gw.deviceOf(b, g) != "" {
			devices++
		}
	}
	if devices != n {
		b.Fatalf("%d of %d ghosts have a device after speaking", devices, n)
	}
	first := time.Duration(firstAt.Load())
	b.ReportMetric(first.Seconds()*1000, "first-decrypted-ms")
	b.ReportMetric(last.Seconds(), "all-sent-and-read-s")
	b.ReportMetric(float64(toDevice)/sent.Seconds(), "to-device/s")
	b.Logf("%d ghosts speaking once in a room with 3 js-sdk users: first message decrypted after %s, all %d sent in %s (read by the last at %s); "+
		"heirloom handled %d to-device messages, %.0f/s", n, first.Round(time.Millisecond), n, sent.Round(time.Millisecond),
		last.Round(time.Millisecond), toDevice, float64(toDevice)/sent.Seconds())
}

// deliverySeconds reads heirloom_gateway_delivery_seconds' sum and count.
func deliverySeconds(b testing.TB, gwURL string) (sum, count float64) {
	b.Helper()
	metrics := scrape(b, gwURL+"/metrics")
	sum, _ = metricValue(metrics, "heirloom_gateway_delivery_seconds_sum ")
	count, _ = metricValue(metrics, "heirloom_gateway_delivery_seconds_count ")
	return sum, count
}

// toDeviceHandled is the number of to-device messages heirloom received in transactions.
func toDeviceHandled(b testing.TB, gwURL string) int {
	b.Helper()
	metrics := scrape(b, gwURL+"/metrics")
	total := 0.0
	for _, l := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(l, `heirloom_events_total{section="to_device"`) {
			if i := strings.LastIndexByte(l, ' '); i > 0 {
				v, _ := strconv.ParseFloat(l[i+1:], 64)
				total += v
			}
		}
	}
	return int(total)
}
