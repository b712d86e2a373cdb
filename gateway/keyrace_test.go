package gateway_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
)

// A key stored while a transaction is being taken, after heirloom missed it decrypting the
// transaction's event and before it stored that event as waiting, still decrypts the event: the
// delivery loop's look at the new key found nothing waiting yet, so heirloom looks again once the
// event is stored.
func TestKeyArrivingWhileTheEventIsStored(t *testing.T) {
	h := newHarness(t, func(c *config.Config) { c.Gateway.DecryptWait = 10 * time.Minute })
	room := id.RoomID("!r:localhost")
	p := h.newReader(t)
	h.run(t)
	pushState(t, h, "join", readerJoins("$join", "!r:localhost"))
	sender := newRemoteSender(t, room)
	h.gw.BeforeStore(func() {
		h.gw.BeforeStore(nil)
		// The key arrives (a to-device message handled by another path), and the delivery loop
		// looks for what waits for it before the event is stored.
		sender.giveKey(t, p, room)
		require.EventuallyWithT(t, func(c *assert.CollectT) { require.Zero(c, h.gw.NotedSessions()) }, 5*time.Second, 5*time.Millisecond)
		time.Sleep(300 * time.Millisecond)
	})
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS,
		`{"events":[`+sender.event(t, "$racy", room, "decrypted after all")+`]}`).status)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, ev := range deliveredEvents(c, h.bridge) {
			if ev["event_id"] == "$racy" {
				require.Equal(c, "m.room.message", ev["type"])
				return
			}
		}
		require.Fail(c, "not delivered yet")
	}, 5*time.Second, 20*time.Millisecond, "the event went decrypted, without waiting out decrypt_wait")
}
