//go:build !heirloom_fault

package history

import "testing"

// A binary built without the heirloom_fault tag (make build, the Dockerfile) has no crash points,
// whatever HEIRLOOM_FAULT says: were they built in, this test's process would exit here.
func TestNoCrashPointsWithoutTheFaultTag(t *testing.T) {
	t.Setenv("HEIRLOOM_FAULT", "crash_before_import,crash_before_delivery")
	faultPoint("crash_before_import")
	faultPoint("crash_before_delivery")
}
