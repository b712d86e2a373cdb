package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

// The js test client's own tests (interop/test/peer.test.mjs), run against the suite's Synapse:
// every end-to-end check relies on that client doing what it says.
func TestInteropPeerSelfTest(t *testing.T) {
	cmd := exec.Command("node", "--test", "test/")
	cmd.Dir = filepath.Join(e.root, "interop")
	cmd.Env = append(os.Environ(), "HEIRLOOM_TEST_HS="+e.hsURL, "HEIRLOOM_TEST_SHARED_SECRET="+sharedSecret)
	out, err := cmd.CombinedOutput()
	t.Logf("node --test interop/test/:\n%s", out)
	if err != nil {
		t.Fatalf("the interop self-tests failed: %v", err)
	}
	count := func(what string) int {
		m := regexp.MustCompile(`(?m)^# ` + what + ` (\d+)$`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("node's report has no %q line", what)
		}
		n, err := strconv.Atoi(string(m[1]))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if pass, fail, skipped := count("pass"), count("fail"), count("skipped"); pass < 5 || fail != 0 || skipped != 0 {
		t.Fatalf("interop self-tests: %d passed, %d failed, %d skipped; want all of them run and passed", pass, fail, skipped)
	}
}
