package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.mau.fi/util/dbutil"
	_ "go.mau.fi/util/dbutil/litestream"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/id"
)

// procStatus reads a field (in kB) of the shared heirloom's /proc status, in bytes.
func procStatus(tb testing.TB, field string) int64 {
	tb.Helper()
	return e.procStatus(tb, field)
}

// procStatus reads a field (in kB) of the heirloom process's /proc status, in bytes.
func (h *instance) procStatus(tb testing.TB, field string) int64 {
	tb.Helper()
	if h.heirloom == nil {
		tb.Fatalf("heirloom (%s) is not running", h.name)
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", h.heirloom.Process.Pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, field+":") {
			fields := strings.Fields(line)
			if len(fields) != 3 || fields[2] != "kB" {
				tb.Fatalf("unexpected /proc status line %q", line)
			}
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				tb.Fatalf("/proc status line %q: %v", line, err)
			}
			return kb * 1024
		}
	}
	tb.Fatalf("no %s", field)
	return 0
}

// withBundleCap restarts heirloom with another history_sharing.max_bundle_size for the benchmark.
func withBundleCap(tb testing.TB, size int64) {
	tb.Helper()
	data, err := os.ReadFile(e.configPath)
	if err != nil {
		tb.Fatal(err)
	}
	old := fmt.Sprintf("max_bundle_size: %d", e2eMaxBundle)
	patched := strings.Replace(string(data), old, fmt.Sprintf("max_bundle_size: %d", size), 1)
	restart := func(cfg string) {
		e.stopHeirloom(syscall.SIGTERM)
		if err := os.WriteFile(e.configPath, []byte(cfg), 0o600); err != nil {
			tb.Fatal(err)
		}
		if err := e.startHeirloom(); err != nil {
			tb.Fatal(err)
		}
	}
	restart(patched)
	tb.Cleanup(func() { restart(string(data)) })
}

// fillPuppetSessions writes n valid megolm sessions (90 % shared) for the puppet into the shared
// heirloom's database, through mautrix's crypto store, while heirloom runs.
func fillPuppetSessions(tb testing.TB, p puppetIdentity, roomID string, n int) {
	tb.Helper()
	e.fillSessions(tb, p, roomID, n)
}

// fillSessions writes n valid megolm sessions (90 % shared) for the puppet into the instance's
// database (SQLite or PostgreSQL), through mautrix's crypto store, while heirloom runs.
func (h *instance) fillSessions(tb testing.TB, p puppetIdentity, roomID string, n int) {
	tb.Helper()
	uri, dialect := "file:"+h.dbPath+"?_txlock=immediate", "sqlite3-fk-wal"
	if h.postgres {
		uri, dialect = e.pgURL, "postgres"
	}
	raw, err := dbutil.NewWithDialect(uri, dialect)
	if err != nil {
		tb.Fatal(err)
	}
	defer raw.Close()
	var cfg secretsConfig
	readYAML(tb, h.configPath, &cfg)
	store := crypto.NewSQLCryptoStore(raw, nil, p.UserID, id.DeviceID(p.DeviceID), []byte(cfg.Encryption.PickleKey))
	ctx := context.Background()
	for done := 0; done < n; {
		err = raw.DoTxn(ctx, nil, func(ctx context.Context) error {
			for end := min(n, done+5000); done < end; done++ {
				ogs, err := olm.NewOutboundGroupSession()
				if err != nil {
					return err
				}
				shared := done%10 != 0
				igs, err := crypto.NewInboundGroupSession(id.SenderKey(p.Curve25519), id.Ed25519(p.Ed25519), id.RoomID(roomID),
					ogs.Key(), 7*24*time.Hour, 100, &shared, false)
				if err != nil {
					return err
				}
				if err = store.PutGroupSession(ctx, igs); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkBigBundleEndToEnd: a puppet holding N sessions (HEIRLOOM_E2E_BIG_SESSIONS, default
// 100,000) in one room invites another puppet through the real Synapse; heirloom builds, uploads,
// delivers, downloads and imports the bundle. Reports the time from the invite call to the import,
// the bundle size, and heirloom's peak RSS growth over its idle RSS.
func BenchmarkBigBundleEndToEnd(b *testing.B) {
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("HEIRLOOM_E2E_BIG_SESSIONS")); err == nil && v > 0 {
		n = v
	}
	if os.Getenv("HEIRLOOM_E2E_POSTGRES") != "" {
		b.Skip("fills heirloom's SQLite database directly")
	}
	withBundleCap(b, 256<<20)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		a, c := newPuppet(b), newPuppet(b)
		roomID := puppetCreateRoom(b, a, "shared")
		fillPuppetSessions(b, a, roomID, n)
		e.stopHeirloom(syscall.SIGTERM) // fresh process: its peak RSS is this run's
		if err := e.startHeirloom(); err != nil {
			b.Fatal(err)
		}
		idle := procStatus(b, "VmRSS")
		b.StartTimer()
		start := time.Now()
		resp := puppetInvite(b, a, roomID, c.UserID)
		inviteTook := time.Since(start)
		if resp.Bundle.State != "delivered" || resp.Bundle.Sessions != n*9/10 {
			b.Fatalf("bundle: %+v", resp.Bundle)
		}
		var got receivedBundle
		deadline := time.Now().Add(5 * time.Minute)
		for time.Now().Before(deadline) {
			for _, rb := range puppetBundles(b, c).Received {
				if rb.RoomID == roomID {
					got = rb
				}
			}
			if got.State == "imported" || got.State == "failed" {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		total := time.Since(start)
		b.StopTimer()
		if got.State != "imported" || got.Imported != n*9/10 || got.Withheld != n/10 {
			b.Fatalf("import: %+v", got)
		}
		var size int64
		for _, sb := range puppetBundles(b, a).Sent {
			if sb.BundleID == resp.Bundle.BundleID {
				size = sb.Size
			}
		}
		peak := procStatus(b, "VmHWM") - idle
		b.ReportMetric(float64(inviteTook.Milliseconds()), "invite-ms")
		b.ReportMetric(float64(total.Milliseconds()), "invite-to-imported-ms")
		b.ReportMetric(float64(size), "bundle-bytes")
		b.ReportMetric(float64(peak), "peak-rss-growth-bytes")
		b.ReportMetric(float64(peak)/float64(max(size, 1)), "peak/bundle")
	}
}
