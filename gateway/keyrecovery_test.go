package gateway

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A session's missing key is fetched once, not once per event of the session, and again only
// after keyRecoveryEvery.
func TestKeyRecoveryClaimsEachSessionOnce(t *testing.T) {
	var k keyRecoveries
	now := time.Now()
	s1 := recoveryKey{roomID: "!r:hs", senderKey: "alice", sessionID: "s1"}
	s2 := recoveryKey{roomID: "!r:hs", senderKey: "alice", sessionID: "s2"}
	require.True(t, k.claim(s1, now))
	require.False(t, k.claim(s1, now.Add(time.Second)), "the second event of the session")
	require.True(t, k.claim(s2, now.Add(time.Second)), "another session")
	require.False(t, k.claim(s1, now.Add(keyRecoveryEvery-time.Second)))
	require.True(t, k.claim(s1, now.Add(keyRecoveryEvery)), "fetched again after keyRecoveryEvery")
	require.Len(t, k.since, 2, "s2 is still remembered, the old claim of s1 replaced")
	require.True(t, k.claim(recoveryKey{roomID: "!r:hs", senderKey: "alice", sessionID: "s3"}, now.Add(3*keyRecoveryEvery)))
	require.Len(t, k.since, 1, "what is older than keyRecoveryEvery is forgotten")
}

// The claim is of one session: the same session ID in another room, or under another sender key,
// is another claim.
func TestKeyRecoveryClaimsPerRoomSenderKeyAndSession(t *testing.T) {
	var k keyRecoveries
	now := time.Now()
	require.True(t, k.claim(recoveryKey{roomID: "!m:hs", senderKey: "mallory", sessionID: "s"}, now))
	require.True(t, k.claim(recoveryKey{roomID: "!x:hs", senderKey: "mallory", sessionID: "s"}, now), "another room")
	require.True(t, k.claim(recoveryKey{roomID: "!x:hs", senderKey: "alice", sessionID: "s"}, now), "another sender key")
	require.False(t, k.claim(recoveryKey{roomID: "!x:hs", senderKey: "alice", sessionID: "s"}, now), "the same session")
}
