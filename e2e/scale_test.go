package e2e

import (
	"database/sql"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func provision(tb testing.TB) {
	userID := "@" + name("heirloom_scale") + ":" + domain
	var p puppetIdentity
	code, err := e.api("PUT", "/puppets/"+userID, map[string]any{}, &p)
	if err != nil || code != 200 || p.MasterKey == "" {
		tb.Fatalf("provisioning %s: %d %v", userID, code, err)
	}
}

// BenchmarkProvisionPuppet provisions one new puppet per iteration against the real Synapse:
// registration, device, keys, cross-signing identity, device signature.
func BenchmarkProvisionPuppet(b *testing.B) {
	for i := 0; i < b.N; i++ {
		provision(b)
	}
}

// BenchmarkIdlePuppets provisions b.N puppets, restarts heirloom, and reports its RSS with the
// puppets idle (their machines are loaded lazily, so none is in memory) and after loading all.
func BenchmarkIdlePuppets(b *testing.B) {
	for i := 0; i < b.N; i++ {
		provision(b)
	}
	b.StopTimer()
	e.stopHeirloom(syscall.SIGTERM)
	if err := e.startHeirloom(); err != nil {
		b.Fatal(err)
	}
	var status struct {
		Puppets int `json:"puppets"`
		Loaded  int `json:"loaded_machines"`
	}
	apiOK(b, "GET", "/status", nil, &status)
	if status.Loaded != 0 || status.Puppets < b.N {
		b.Fatalf("after a restart: %+v", status)
	}
	b.ReportMetric(float64(procStatus(b, "VmRSS")), "idle-rss-bytes")
	b.ReportMetric(float64(status.Puppets), "puppets")
}

// BenchmarkRouteToDevicePlaintext posts one transaction of b.N plaintext to-device events (room
// key request cancellations), each to a different provisioned (and unloaded) puppet, and measures
// heirloom routing them to their machines, which it loads lazily. The events are not encrypted, so
// no Olm decryption is measured: this is the cost of routing and of loading machines. Run with
// -benchtime 1000x for the 1,000-event transaction.
func BenchmarkRouteToDevicePlaintext(b *testing.B) {
	type target struct{ user, device string }
	targets := make([]target, b.N)
	for i := range targets {
		userID := "@" + name("heirloom_route") + ":" + domain
		var p puppetIdentity
		if code, err := e.api("PUT", "/puppets/"+userID, map[string]any{}, &p); err != nil || code != 200 {
			b.Fatalf("provisioning: %d %v", code, err)
		}
		targets[i] = target{p.UserID, p.DeviceID}
	}
	e.stopHeirloom(syscall.SIGTERM) // start with no machine loaded
	if err := e.startHeirloom(); err != nil {
		b.Fatal(err)
	}
	events := make([]map[string]any, len(targets))
	for i, t := range targets {
		events[i] = map[string]any{"type": "m.room_key_request", "sender": "@someone:" + domain, "to_user_id": t.user,
			"to_device_id": t.device, "content": map[string]any{"action": "request_cancellation", "request_id": fmt.Sprint("r", i),
				"requesting_device_id": "OTHER"}}
	}
	hsToken := readHSToken(b)
	b.ResetTimer()
	code, err := e.request("PUT", fmt.Sprintf("http://127.0.0.1:%d/_matrix/app/v1/transactions/route-%d", e.asPort, b.N),
		"Bearer "+hsToken, map[string]any{"events": []any{}, "de.sorunome.msc2409.to_device": events}, nil)
	b.StopTimer()
	if err != nil || code != 200 {
		b.Fatalf("transaction: %d %v", code, err)
	}
	var status struct {
		Loaded int `json:"loaded_machines"`
	}
	apiOK(b, "GET", "/status", nil, &status)
	if status.Loaded < b.N {
		b.Fatalf("only %d machines loaded for %d events", status.Loaded, b.N)
	}
	b.ReportMetric(float64(procStatus(b, "VmRSS")), "rss-bytes")
}

func readHSToken(tb testing.TB) string {
	tb.Helper()
	data, err := os.ReadFile(e.configPath)
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "hs_token: "); ok {
			return v
		}
	}
	tb.Fatal("no hs_token in the config")
	return ""
}

// BenchmarkInviteToFirstDecrypt measures, on the local Synapse, the time from the invite call to
// the invitee's first decrypted historical message: a puppet inviting a js-sdk user, and a js-sdk
// user inviting another, in the same run.
func BenchmarkInviteToFirstDecrypt(b *testing.B) {
	b.Run("puppet_to_js", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			p := newPuppet(b)
			u := newJSUser(b, true)
			roomID := puppetCreateRoom(b, p, "shared")
			puppetSend(b, p, roomID, "history")
			b.StartTimer()
			puppetInvite(b, p, roomID, u.UserID)
			e.peer(b, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
			if _, ok := decryptedBodies(jsMessages(b, u, roomID, 1, 60000))["history"]; !ok {
				b.Fatal("not decrypted")
			}
		}
	})
	b.Run("js_to_js", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			alice, bob := newJSUser(b, true), newJSUser(b, true)
			roomID := jsCreateRoom(b, alice, "shared")
			jsSend(b, alice, roomID, "history")
			b.StartTimer()
			e.peer(b, "invite", map[string]any{"user": alice.UserID, "room_id": roomID, "target": bob.UserID}, nil)
			e.peer(b, "join", map[string]any{"user": bob.UserID, "room_id": roomID}, nil)
			if _, ok := decryptedBodies(jsMessages(b, bob, roomID, 1, 60000))["history"]; !ok {
				b.Fatal("not decrypted")
			}
		}
	})
}

// BenchmarkProvisionSynapse provisions b.N puppets through the shared heirloom against the real
// Synapse and reports the time per puppet, the requests heirloom sent per puppet (from its log)
// and what Synapse stores per puppet and its device: the rows and bytes of each of its tables that
// hold the puppets (its SQLite database; bytes are the values' lengths, indexes left out). Run it
// with -benchtime 100x or so; make bench-scale does.
func BenchmarkProvisionSynapse(b *testing.B) {
	mark := e.mark(b)
	users := make([]string, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		userID := "@" + name("heirloom_synscale") + ":" + domain
		var p puppetIdentity
		if code, err := e.api("PUT", "/puppets/"+userID, map[string]any{}, &p); err != nil || code != 200 {
			b.Fatalf("provisioning %s: %d %v", userID, code, err)
		}
		users = append(users, userID)
	}
	took := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(took.Milliseconds())/float64(b.N), "ms/puppet")
	requests := map[string]int{}
	total := 0
	for _, l := range mark.lines(b) {
		if l.str("message") == "Request completed" && l.str("method") != "" {
			requests[l.str("method")+" "+endpointTemplate(l.str("url"))]++
			total++
		}
	}
	b.ReportMetric(float64(total)/float64(b.N), "requests/puppet")
	b.Logf("%d puppets provisioned through Synapse in %s (%.1f ms each); %.2f requests per puppet:", b.N, took.Round(time.Millisecond),
		float64(took.Milliseconds())/float64(b.N), float64(total)/float64(b.N))
	for _, k := range slices.Sorted(maps.Keys(requests)) {
		b.Logf("  %-60s %.2f", k, float64(requests[k])/float64(b.N))
	}
	rows, bytes := synapseStorage(b, users)
	var rowsAll, bytesAll int
	for _, t := range slices.Sorted(maps.Keys(rows)) {
		b.Logf("  Synapse %-32s %6.2f rows %8.1f bytes per puppet", t, float64(rows[t])/float64(b.N), float64(bytes[t])/float64(b.N))
		rowsAll += rows[t]
		bytesAll += bytes[t]
	}
	b.ReportMetric(float64(rowsAll)/float64(b.N), "synapse-rows/puppet")
	b.ReportMetric(float64(bytesAll)/float64(b.N), "synapse-bytes/puppet")
}

// endpointTemplate is a request URL's path without the client API prefix, its user and device
// IDs replaced by names.
func endpointTemplate(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	path := u.Path
	for _, prefix := range []string{"/_matrix/client/v3", "/_matrix/client/v1", "/_matrix/client/r0", "/_matrix/client"} {
		if rest, ok := strings.CutPrefix(path, prefix); ok {
			path = rest
			break
		}
	}
	parts := strings.Split(path, "/")
	for i, p := range parts {
		switch {
		case strings.HasPrefix(p, "@"):
			parts[i] = "{user}"
		case strings.HasPrefix(p, "HEIRLOOM_"):
			parts[i] = "{device}"
		}
	}
	return strings.Join(parts, "/")
}

// synapseStorage counts the rows of users in every table of Synapse's database that names users,
// and the bytes of their values.
func synapseStorage(b *testing.B, users []string) (rows, bytes map[string]int) {
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(e.dir, "synapse", "homeserver.db")+"?mode=ro&_busy_timeout=10000")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	tables, err := db.Query(`SELECT name FROM sqlite_master WHERE type='table'`)
	if err != nil {
		b.Fatal(err)
	}
	var names []string
	for tables.Next() {
		var n string
		_ = tables.Scan(&n)
		names = append(names, n)
	}
	tables.Close()
	in := "'" + strings.Join(users, "','") + "'"
	rows, bytes = map[string]int{}, map[string]int{}
	for _, table := range names {
		var cols []string
		info, err := db.Query(`SELECT name FROM pragma_table_info(?)`, table)
		if err != nil {
			b.Fatal(err)
		}
		for info.Next() {
			var c string
			_ = info.Scan(&c)
			cols = append(cols, c)
		}
		info.Close()
		key := ""
		for _, c := range []string{"full_user_id", "user_id", "target_user_id"} {
			if slices.Contains(cols, c) {
				key = c
				break
			}
		}
		if table == "users" {
			key = "name"
		}
		if key == "" {
			continue
		}
		var lengths []string
		for _, c := range cols {
			lengths = append(lengths, fmt.Sprintf("COALESCE(LENGTH(CAST(%q AS BLOB)), 0)", c))
		}
		var n, size sql.NullInt64
		q := fmt.Sprintf(`SELECT COUNT(*), SUM(%s) FROM %q WHERE %q IN (%s)`, strings.Join(lengths, "+"), table, key, in)
		if err = db.QueryRow(q).Scan(&n, &size); err != nil {
			b.Fatalf("%s: %v", q[:min(len(q), 200)], err)
		}
		if n.Int64 > 0 {
			rows[table], bytes[table] = int(n.Int64), int(size.Int64)
		}
	}
	return rows, bytes
}
