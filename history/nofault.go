//go:build !heirloom_fault

package history

// faultPoint does nothing: the crash points of the restart tests are built only with the
// heirloom_fault tag (see fault.go).
func faultPoint(string) {}
