package gateway_test

import (
	"context"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

// The replay record holds (event ID, timestamp) of the first decryption of each (session, index,
// sender). A read whose answer leaves origin_server_ts out (a /messages with a filter's
// event_fields naming event_id, sender, room_id, type and content, which Synapse honours) is
// decrypted but not recorded: the same event then arriving in a transaction, with its real
// timestamp, is no replay and reaches the bridge decrypted.
func TestReadWithoutTimestampLeavesTheLiveEventDecryptable(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	room := id.RoomID("!r:localhost")
	const reader = id.UserID("@irc_reader:localhost")
	require.NoError(t, h.db.PutPuppet(ctx, &database.Puppet{UserID: reader, DeviceID: "READER", Ready: true}))
	p, err := h.mgr.Get(ctx, reader)
	require.NoError(t, err)
	alice := newRemoteSender(t, room)
	alice.giveKey(t, p, room)
	pushState(t, h, "1", memberEvent("$join", string(reader), string(reader), "join"))
	h.run(t)

	live := alice.event(t, "$live", room, "hello")
	trimmed := regexp.MustCompile(`,"origin_server_ts":\d+`).ReplaceAllString(live, "")
	require.NotEqual(t, live, trimmed)
	h.hs.setAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) {
		if strings.HasSuffix(r.URL.Path, "/messages") {
			answerJSON(http.StatusOK, `{"chunk":[`+trimmed+`],"start":"s","end":"e"}`)(w, r, body)
			return
		}
		answerJSON(http.StatusNotFound, `{"errcode":"M_NOT_FOUND","error":"not found"}`)(w, r, body)
	})
	filter := `{"event_fields":["event_id","sender","room_id","type","content"]}`
	resp := h.do(t, http.MethodGet, "/_matrix/client/v3/rooms/"+string(room)+"/messages?dir=b&filter="+strings.ReplaceAll(filter, `"`, "%22")+
		"&user_id="+string(reader), bridgeAS, "")
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
