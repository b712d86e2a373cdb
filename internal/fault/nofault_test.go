//go:build !heirloom_fault

package fault

import "testing"

// A binary built without the heirloom_fault tag (make build, the Dockerfile) has no fault points,
// whatever HEIRLOOM_FAULT says: were they built in, this test's process would exit here.
func TestNoFaultPointsWithoutTheFaultTag(t *testing.T) {
	t.Setenv("HEIRLOOM_FAULT", "crash_before_import,crash_before_delivery,gateway_hold_delivery,gateway_unbounded_content,slow_create_ack,fail_transactions")
	Crash("crash_before_import")
	Crash("crash_before_delivery")
	if Active("gateway_hold_delivery") || Active("gateway_unbounded_content") || Active("slow_create_ack") || Active("fail_transactions") {
		t.Fatal("a fault point is armed in a build without the heirloom_fault tag")
	}
}
