package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// heirloomRSS returns the resident set size of the running heirloom process, in bytes.
func heirloomRSS(tb testing.TB) int64 {
	tb.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.heirloom.Process.Pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kb * 1024
		}
	}
	tb.Fatal("no VmRSS")
	return 0
}

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
	if _, err := e.api("GET", "/status", nil, &status); err != nil {
		b.Fatal(err)
	}
	if status.Loaded != 0 || status.Puppets < b.N {
		b.Fatalf("after a restart: %+v", status)
	}
	b.ReportMetric(float64(heirloomRSS(b)), "idle-rss-bytes")
	b.ReportMetric(float64(status.Puppets), "puppets")
}
