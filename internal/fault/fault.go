//go:build heirloom_fault

// Package fault holds the fault points of the restart tests, built only with the heirloom_fault
// tag (the end-to-end suite builds heirloom with it; make build and the Dockerfile do not).
// HEIRLOOM_FAULT names the active points, comma-separated:
//
//	crash_before_import    after a bundle was accepted, before it is downloaded and imported
//	crash_before_delivery  after a bundle was uploaded, before its details are sent to devices
//	gateway_hold_delivery  gateway mode stores what arrives for the bridge but delivers nothing,
//	                       so a test can kill heirloom between the homeserver's ack and delivery
//	gateway_unbounded_content  gateway mode hands the bridge decrypted content however deeply
//	                       it nests, so a test can have a real bridge refuse an event
//	slow_create_ack        heirloom answers a homeserver transaction holding an m.room.create 3 s
//	                       after handling it, so the homeserver holds the rest of the new room's
//	                       state back meanwhile (it may arrive after the bridge's first send)
package fault

import (
	"os"
	"slices"
	"strings"
)

// Active reports whether the named point is armed.
func Active(name string) bool {
	return slices.Contains(strings.Split(os.Getenv("HEIRLOOM_FAULT"), ","), name)
}

// Crash makes the process exit at once, as a SIGKILL would, if the named point is armed.
func Crash(name string) {
	if Active(name) {
		os.Exit(137)
	}
}
