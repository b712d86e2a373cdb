package gateway_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

// The delivery loop gives the rooms whose events go alone and the others turns: a room that had
// an event set aside within the hour, flooded with events that each go alone, holds another
// room's event back by one transaction, not one per flooded event.
func TestDeliveryGivesRoomsGoingAloneAndOthersTurns(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	roomX, roomY := id.RoomID("!x:localhost"), id.RoomID("!y:localhost")
	const alice = "@irc_alice:localhost"
	require.NoError(t, h.db.PutGatewayEvents(ctx, []*database.GatewayEvent{{Key: "aside", EventID: "$aside", RoomID: roomX,
		Kind: database.GatewayRoomEvent, Body: inRoom(messageEvent("$aside", "@mallory:localhost", "poison"), roomX),
		DeadAt: h.db.Now().UnixMilli(), LastError: "the bridge answered 500"}}))
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS, `{"events":[`+
		inRoom(memberEvent("$jx", alice, alice, "join"), roomX)+`,`+inRoom(memberEvent("$jy", alice, alice, "join"), roomY)+`]}`).status)
	h.run(t)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.Subset(c, eventsOf(bridgeTxns(c, h.bridge)), []string{"$jx", "$jy"})
	}, 5*time.Second, 20*time.Millisecond)
	before := len(bridgeTxns(t, h.bridge))

	var events []string
	for n := range 6 {
		events = append(events, inRoom(messageEvent(fmt.Sprintf("$x%d", n), "@mallory:localhost", "flood"), roomX))
	}
	events = append(events, inRoom(messageEvent("$y", "@bob:localhost", "room Y"), roomY))
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/2", heirloomHS,
		`{"events":[`+strings.Join(events, ",")+`]}`).status)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.Contains(c, eventsOf(bridgeTxns(c, h.bridge)), "$y")
	}, 5*time.Second, 20*time.Millisecond)
	txns := bridgeTxns(t, h.bridge)[before:]
	at := slices.IndexFunc(txns, func(txn bridgeTxn) bool { return slices.Contains(eventsOf([]bridgeTxn{txn}), "$y") })
	require.LessOrEqual(t, at, 1, "room Y's event waits behind one of room X's transactions alone at most: %v", txnsEvents(txns))
}

func txnsEvents(txns []bridgeTxn) [][]string {
	var out [][]string
	for _, txn := range txns {
		out = append(out, eventsOf([]bridgeTxn{txn}))
	}
	return out
}
