//go:build heirloom_fault

package history

import (
	"os"
	"slices"
	"strings"
)

// faultPoint is a crash point for the restart tests, built only with the heirloom_fault tag (the
// end-to-end suite builds heirloom with it; make build and the Dockerfile do not). The points named
// in HEIRLOOM_FAULT (comma-separated) make the process exit at once, as a SIGKILL would, at a
// moment a test cannot otherwise hit:
//
//	crash_before_import    after a bundle was accepted, before it is downloaded and imported
//	crash_before_delivery  after a bundle was uploaded, before its details are sent to devices
func faultPoint(name string) {
	if slices.Contains(strings.Split(os.Getenv("HEIRLOOM_FAULT"), ","), name) {
		os.Exit(137)
	}
}
