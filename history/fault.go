package history

import (
	"os"
	"strings"
)

// faults are crash points for the restart tests, named in HEIRLOOM_FAULT (comma-separated). Each
// makes the process exit at once, as a SIGKILL would, at a moment a test cannot otherwise hit:
//
//	crash_before_import    after a bundle was accepted, before it is downloaded and imported
//	crash_before_delivery  after a bundle was uploaded, before its details are sent to devices
//
// Unset in production; the end-to-end suite sets it for one heirloom run at a time.
var faults = strings.Split(os.Getenv("HEIRLOOM_FAULT"), ",")

func faultPoint(name string) {
	for _, f := range faults {
		if f == name {
			os.Exit(137)
		}
	}
}
