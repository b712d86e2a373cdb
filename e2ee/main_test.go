package e2ee

import (
	"os"
	"testing"
)

// TestMain registers heirloom's content types, as the daemon does at start: NewManager and the
// parsers the tests feed depend on them.
func TestMain(m *testing.M) {
	RegisterContentTypes()
	os.Exit(m.Run())
}
