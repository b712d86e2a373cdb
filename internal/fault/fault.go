//go:build heirloom_fault

// Package fault holds the fault points of the restart tests, built only with the heirloom_fault
// tag (the end-to-end suite builds heirloom with it; make build and the Dockerfile do not).
// HEIRLOOM_FAULT (or the file HEIRLOOM_FAULT_FILE) names the active points, comma-separated:
//
//	crash_before_import    after a bundle was accepted, before it is downloaded and imported
//	crash_before_delivery  after a bundle was uploaded, before its details are sent to devices
//	hold_before_delivery   the same point, where the process stops and waits to be killed (it
//	                       says so on stderr), so a test can kill it with a bundle in flight
//	gateway_hold_delivery  gateway mode stores what arrives for the bridge but delivers nothing,
//	                       so a test can kill heirloom between the homeserver's ack and delivery
//	gateway_unbounded_content  gateway mode hands the bridge decrypted content however deeply
//	                       it nests, so a test can have a real bridge refuse an event
//	gateway_no_fallback    gateway mode sets aside a decrypted event the bridge refuses every
//	                       time without handing it over as it arrived first, so a test can have a
//	                       real bridge refuse an event to the end
//	slow_create_ack        heirloom answers a homeserver transaction holding an m.room.create 3 s
//	                       after handling it, so the homeserver holds the rest of the new room's
//	                       state back meanwhile (it may arrive after the bridge's first send)
//	fail_transactions      heirloom answers every homeserver transaction with an error, taking
//	                       nothing, so a test can have the homeserver hold heirloom down
package fault

import (
	"fmt"
	"os"
	"slices"
	"strings"
)

// Active reports whether the named point is armed: named in HEIRLOOM_FAULT, or in the file
// HEIRLOOM_FAULT_FILE names, read at each call (a test arms a point of a running process by
// writing it).
func Active(name string) bool {
	armed := os.Getenv("HEIRLOOM_FAULT")
	if path := os.Getenv("HEIRLOOM_FAULT_FILE"); path != "" {
		if data, err := os.ReadFile(path); err == nil {
			armed += "," + strings.TrimSpace(string(data))
		}
	}
	return slices.Contains(strings.Split(armed, ","), name)
}

// Crash makes the process exit at once, as a SIGKILL would, if the named point is armed.
func Crash(name string) {
	if Active(name) {
		os.Exit(137)
	}
}

// Hold stops the calling goroutine for good if the named point is armed, after saying so on
// stderr: the process goes on until a test kills it.
func Hold(name string) {
	if Active(name) {
		fmt.Fprintf(os.Stderr, "heirloom fault: holding at %s\n", name)
		select {}
	}
}
