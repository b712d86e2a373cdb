package gateway_test

import (
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"
)

// The replay record holds (event ID, timestamp) of the first decryption of each (session, index,
// sender). A read whose answer leaves origin_server_ts out (a /messages with a filter's
// event_fields naming event_id, sender, room_id, type and content, which Synapse honours) is
// decrypted but not recorded: the same event then arriving in a transaction, with its real
// timestamp, is no replay and reaches the bridge decrypted.
func TestReadWithoutTimestampLeavesTheLiveEventDecryptable(t *testing.T) {
	h := newHarness(t)
	room := id.RoomID("!r:localhost")
	p := h.newReader(t)
	alice := newRemoteSender(t, room)
	alice.giveKey(t, p, room)
	pushState(t, h, "1", readerJoins("$join", "!r:localhost"))
	h.run(t)

	live := alice.event(t, "$live", room, "hello")
	trimmed := regexp.MustCompile(`,"origin_server_ts":\d+`).ReplaceAllString(live, "")
	require.NotEqual(t, live, trimmed)
	h.answerPaths(map[string]string{"/messages": `{"chunk":[` + trimmed + `],"start":"s","end":"e"}`})
	filter := `{"event_fields":["event_id","sender","room_id","type","content"]}`
	resp := h.readAs(t, room, "/messages?dir=b&filter="+strings.ReplaceAll(filter, `"`, "%22"))
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
	require.Contains(t, string(resp.body), "hello", "the read is decrypted")

	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/2", heirloomHS, `{"events":[`+live+`]}`).status)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.True(c, slices.ContainsFunc(deliveredEvents(c, h.bridge), func(ev map[string]any) bool { return ev["event_id"] == "$live" }))
	}, 5*time.Second, 20*time.Millisecond)
	for _, ev := range deliveredEvents(t, h.bridge) {
		if ev["event_id"] == "$live" {
			require.Equal(t, "m.room.message", ev["type"], "the live event must reach the bridge decrypted: %v", ev)
		}
	}
}
