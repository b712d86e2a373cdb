package gateway_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// withheldThenKey has withholder send the reader an m.room_key.withheld for alice's session under
// the sender key it names (of a device of the withholder's), then alice's message of that session
// arrive, then alice's key, and checks that the bridge gets the message decrypted.
func withheldThenKey(t *testing.T, withholder id.UserID, senderKey func(alice *remoteSender) id.SenderKey) {
	h := newHarness(t)
	ctx := context.Background()
	p := h.newReader(t)
	h.run(t)
	roomX := id.RoomID("!x:localhost")
	inX := func(ev string) string { return strings.Replace(ev, "!r:localhost", string(roomX), 1) }
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS, `{"events":[`+
		readerJoins("$jr", roomX)+`,`+inX(memberEvent("$jm", "@mallory:localhost", "@mallory:localhost", "join"))+`,`+
		inX(memberEvent("$ja", "@alice:localhost", "@alice:localhost", "join"))+`]}`).status)

	alice := newRemoteSender(t, roomX)
	key := senderKey(alice)
	// The withholder's device with that key, known to the reader (it shares keys with it).
	ed := make([]byte, 32)
	_, _ = rand.Read(ed)
	signing := id.Ed25519(base64.RawStdEncoding.EncodeToString(ed))
	if key == alice.senderKey {
		signing = alice.signing // alice's own device
	}
	require.NoError(t, p.Mach.CryptoStore.PutDevice(ctx, withholder, &id.Device{UserID: withholder, DeviceID: "WITHHOLDER",
		IdentityKey: id.IdentityKey(key), SigningKey: signing}))
	require.True(t, h.mgr.RouteToDevice(ctx, &event.Event{Sender: withholder, Type: event.ToDeviceRoomKeyWithheld, ToUserID: reader, ToDeviceID: "READER",
		Content: event.Content{Parsed: &event.RoomKeyWithheldEventContent{RoomID: roomX, Algorithm: id.AlgorithmMegolmV1,
			SessionID: alice.ogs.ID(), SenderKey: key, Code: event.RoomKeyWithheldUnverified, Reason: "withheld"}}}))

	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/2", heirloomHS,
		`{"events":[`+alice.event(t, "$secret", roomX, "alice's secret")+`]}`).status)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.True(c, slices.ContainsFunc(deliveredEvents(c, h.bridge), func(ev map[string]any) bool { return ev["event_id"] == "$secret" }))
	}, 5*time.Second, 20*time.Millisecond)
	alice.giveKey(t, p, roomX)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.True(c, slices.ContainsFunc(deliveredEvents(c, h.bridge), func(ev map[string]any) bool {
			return ev["event_id"] == "$secret" && ev["type"] == "m.room.message"
		}), "alice's message must reach the bridge decrypted once her key arrives")
	}, 5*time.Second, 50*time.Millisecond)
}

// A member's m.room_key.withheld naming his own device's sender key and another member's session
// ID (anyone may send one: it is plaintext) is no final answer for the bridge: alice's message of
// that session, arriving before her key, waits for it like a message whose key has not come, and
// when her key arrives the bridge gets it decrypted.
func TestWithheldKeyOfAnotherMembersSessionNeverHidesTheMessageFromTheBridge(t *testing.T) {
	withheldThenKey(t, "@mallory:localhost", func(*remoteSender) id.SenderKey {
		curve := make([]byte, 32)
		_, _ = rand.Read(curve)
		return id.SenderKey(base64.RawStdEncoding.EncodeToString(curve))
	})
}

// Nor is the sender's own withheld answer final: a sender who withheld her key (unverified) and
// sends it later (once she trusts the bridge's device) has her message reach the bridge decrypted.
func TestSendersWithheldKeySentLaterReachesTheBridgeDecrypted(t *testing.T) {
	withheldThenKey(t, "@alice:localhost", func(alice *remoteSender) id.SenderKey { return alice.senderKey })
}
