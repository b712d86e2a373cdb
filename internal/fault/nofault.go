//go:build !heirloom_fault

// Package fault holds the fault points of the restart tests; without the heirloom_fault tag
// (every build but the end-to-end suite's) none is ever armed. See fault.go.
package fault

// Active reports false: no fault point is built in.
func Active(string) bool { return false }

// Crash does nothing: no fault point is built in.
func Crash(string) {}

// Hold does nothing: no fault point is built in.
func Hold(string) {}
