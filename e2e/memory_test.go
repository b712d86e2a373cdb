package e2e

import (
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// memorySessions is how many sessions the memory test's bundle holds (HEIRLOOM_E2E_MEMORY_SESSIONS,
// default 50,000: a 24 MB bundle, a few seconds on CI's 2 cores).
func memorySessions() int {
	if v, err := strconv.Atoi(os.Getenv("HEIRLOOM_E2E_MEMORY_SESSIONS")); err == nil && v > 0 {
		return v
	}
	return 50_000
}

// shareBetweenPuppets has puppet a invite puppet c (same instance) to the room, waits until c
// imported the bundle of n sessions (90 % shared), and returns the bundle's size.
func shareBetweenPuppets(t *testing.T, h *instance, a, c puppetIdentity, roomID string, n int) int64 {
	t.Helper()
	b := h.invite(t, a, roomID, c.UserID).Bundle
	if b.State != "delivered" || b.Sessions != n*9/10 {
		t.Fatalf("bundle: %+v", b)
	}
	var got receivedBundle
	eventually(t, 3*time.Minute, "the invitee puppet to import the bundle", func() (bool, string) {
		for _, rb := range h.bundles(t, c).Received {
			if rb.RoomID == roomID {
				got = rb
			}
		}
		return got.State == "imported" || got.State == "failed", got.State
	})
	if got.State != "imported" || got.Imported != n*9/10 || got.Withheld != n/10 {
		t.Fatalf("import: %+v", got)
	}
	for _, sb := range h.bundles(t, a).Sent {
		if sb.BundleID == b.BundleID {
			return sb.Size
		}
	}
	t.Fatalf("bundle %s not listed", b.BundleID)
	return 0
}

// docs/performance.md: heirloom streams a bundle through a temporary file while it builds and while
// it imports, "so memory stays below the bundle's size". A heirloom process of its own (so its peak
// RSS is this test's) builds, uploads and delivers a bundle from one puppet to another through
// Synapse, then downloads and imports it. What the bundle costs in memory is the growth of the
// process's peak RSS (VmHWM: Go heap, SQLite's C memory and all) over its peak after a warm-up with
// a small bundle (1,000 sessions) through the same path, which pays the fixed costs (machines
// loaded, pools, caches); that growth must be below the bundle's size.
func TestMemoryStaysBelowBundleSize(t *testing.T) {
	n := memorySessions()
	const warmN = 1000
	h := startInstance(t, "alt", func(c *heirloomConfig) { c.maxBundle = 256 << 20 })
	a, c := h.newPuppet(t), h.newPuppet(t)
	warmRoom, roomID := h.createRoom(t, a, "shared"), h.createRoom(t, a, "shared")
	fillStart := time.Now()
	h.fillSessions(t, a, warmRoom, warmN)
	h.fillSessions(t, a, roomID, n)
	t.Logf("wrote %d sessions in %s", n+warmN, time.Since(fillStart).Round(time.Millisecond))
	h.stopHeirloom(syscall.SIGTERM)
	if err := h.start(e.binary); err != nil {
		t.Fatal(err)
	}
	idle := h.procStatus(t, "VmRSS")
	shareBetweenPuppets(t, h, a, c, warmRoom, warmN)
	warm := h.procStatus(t, "VmHWM")

	start := time.Now()
	size := shareBetweenPuppets(t, h, a, c, roomID, n)
	took := time.Since(start)
	if size < int64(n)*400 {
		t.Fatalf("bundle size %d for %d sessions: too small to measure against", size, n)
	}
	peak := h.procStatus(t, "VmHWM")
	growth := peak - warm
	t.Logf("%d sessions: bundle %.1f MB; heirloom RSS idle %.1f MB, peak after the warm-up %.1f MB, peak %.1f MB: "+
		"the bundle cost %.1f MB (%.2f of its size; %.2f counted from idle); invite to imported %s",
		n, float64(size)/1e6, float64(idle)/1e6, float64(warm)/1e6, float64(peak)/1e6, float64(growth)/1e6,
		float64(growth)/float64(size), float64(peak-idle)/float64(size), took.Round(time.Millisecond))
	if growth >= size {
		t.Fatalf("heirloom's peak RSS grew by %d bytes building and importing a %d-byte bundle: not below the bundle's size", growth, size)
	}
}
