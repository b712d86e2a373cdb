package daemon

import (
	"os"
	"testing"

	"github.com/heirloom-matrix/heirloom/e2ee"
)

// TestMain points mautrix's event types at heirloom's room key types first, as Run does, so the
// tests that build a process without Run start a Manager too.
func TestMain(m *testing.M) {
	e2ee.RegisterContentTypes()
	os.Exit(m.Run())
}
