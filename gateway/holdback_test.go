package gateway_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
)

// A waiting event (its key not yet arrived) holds back its own room only, however many of its
// room's events pile up behind it: another room's event is delivered at once.
func TestWaitingEventHoldsBackOnlyItsRoomWhateverTheVolume(t *testing.T) {
	h := newHarness(t, func(c *config.Config) { c.Gateway.DecryptWait = 10 * time.Minute })
	h.newReader(t)
	roomA, roomB := id.RoomID("!a:localhost"), id.RoomID("!b:localhost")
	sender := newRemoteSender(t, roomA) // its key never reaches the reader
	push := func(txnID string, events []string) {
		require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/"+txnID, heirloomHS,
			`{"events":[`+strings.Join(events, ",")+`]}`).status)
	}
	push("joins", []string{readerJoins("$ja", roomA),
		readerJoins("$jb", roomB)})
	push("waiting", []string{sender.event(t, "$waiting", roomA, "its key is late")})
	for i := range 25 { // a busy room: 2,500 events behind the waiting one
		var batch []string
		for j := range 100 {
			batch = append(batch, inRoom(messageEvent(fmt.Sprintf("$a%d_%d", i, j), "@alice:localhost", "busy"), roomA))
		}
		push(fmt.Sprintf("busy%d", i), batch)
	}
	push("b", []string{inRoom(messageEvent("$inB", "@alice:localhost", "room B"), roomB)})
	h.run(t)
	require.EventuallyWithT(t, func(c *assert.CollectT) { require.Contains(c, eventsOf(bridgeTxns(c, h.bridge)), "$inB") }, 10*time.Second, 20*time.Millisecond,
		"room B's event is held back by room A's waiting event")
	for _, eventID := range eventsOf(bridgeTxns(t, h.bridge)) {
		require.False(t, strings.HasPrefix(eventID, "$a"), "room A's events wait behind its waiting event, in order (%s went)", eventID)
	}
}

// When heirloom cannot tell whether the bridge has a user in a room (the membership lookup fails),
// the homeserver's transaction fails, to be sent again: the room's events never go to the bridge
// on a guess.
func TestMembershipLookupFailureFailsTheTransaction(t *testing.T) {
	h := newHarness(t)
	h.run(t)
	_, err := h.db.Raw.Exec(context.Background(), `ALTER TABLE mx_user_profile RENAME TO mx_user_profile_gone`)
	require.NoError(t, err)
	txn := `{"events":[` + strings.Replace(messageEvent("$private", "@alice:localhost", "between heirloom's puppets"), "!r:localhost", "!private:localhost", 1) + `]}`
	resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS, txn)
	require.NotEqual(t, http.StatusOK, resp.status, "the transaction was taken: %s", resp.body)
	time.Sleep(500 * time.Millisecond)
	require.Empty(t, eventsOf(bridgeTxns(t, h.bridge)), "nothing went to the bridge on a guess")
}
