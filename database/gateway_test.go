package database_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

func roomEvent(n int, room id.RoomID) *database.GatewayEvent {
	eventID := id.EventID(fmt.Sprintf("$e%d", n))
	return &database.GatewayEvent{Key: string(eventID), EventID: eventID, RoomID: room, Kind: database.GatewayRoomEvent,
		Body: fmt.Sprintf(`{"event_id":"%s"}`, eventID)}
}

func eventIDs(txn *database.GatewayTxn) []id.EventID {
	var out []id.EventID
	for _, e := range txn.Events {
		out = append(out, e.EventID)
	}
	return out
}

// The bridge's outbox keeps the homeserver's order, delivers each stored event once, and numbers
// its transactions without ever reusing an ID; a transaction not acknowledged is offered again
// as it was.
func TestGatewayOutboxOrderAndRetry(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		none, err := db.PendingGatewayTxn(ctx)
		require.NoError(t, err)
		require.Nil(t, none)

		var batch []*database.GatewayEvent
		for i := 1; i <= 5; i++ {
			batch = append(batch, roomEvent(i, roomX))
		}
		require.NoError(t, db.PutGatewayEvents(ctx, batch))
		// The homeserver sends the transaction again (heirloom crashed before acknowledging it).
		require.NoError(t, db.PutGatewayEvents(ctx, []*database.GatewayEvent{roomEvent(3, roomX), roomEvent(6, roomX)}))
		depth, err := db.CountGatewayEvents(ctx)
		require.NoError(t, err)
		require.Equal(t, 6, depth)

		first, err := db.ComposeGatewayTxn(ctx, 4, 1000, nil)
		require.NoError(t, err)
		require.Equal(t, []id.EventID{"$e1", "$e2", "$e3", "$e4"}, eventIDs(first))

		require.NoError(t, db.RetryGatewayTxn(ctx, first.ID, 5000, "the bridge answered 500"))
		again, err := db.PendingGatewayTxn(ctx)
		require.NoError(t, err)
		require.Equal(t, first.ID, again.ID, "a failed transaction is retried under its ID")
		require.Equal(t, eventIDs(first), eventIDs(again))
		require.Equal(t, 1, again.Attempts)
		require.EqualValues(t, 5000, again.NextAttempt)

		require.NoError(t, db.FinishGatewayTxn(ctx, first.ID))
		depth, err = db.CountGatewayEvents(ctx)
		require.NoError(t, err)
		require.Equal(t, 2, depth)
		// Delivered events are not stored again when a transaction repeats them.
		require.NoError(t, db.PutGatewayEvents(ctx, []*database.GatewayEvent{roomEvent(2, roomX)}))
		second, err := db.ComposeGatewayTxn(ctx, 4, 1000, nil)
		require.NoError(t, err)
		require.Equal(t, []id.EventID{"$e5", "$e6"}, eventIDs(second))
		require.Greater(t, second.ID, first.ID)
		require.NoError(t, db.FinishGatewayTxn(ctx, second.ID))

		nothing, err := db.ComposeGatewayTxn(ctx, 4, 1000, nil)
		require.NoError(t, err)
		require.Nil(t, nothing)
		// Once pruned, the same ID comes back as a new event: only the window is remembered.
		require.NoError(t, db.PruneGatewayDelivered(ctx, 1<<62))
		require.NoError(t, db.PutGatewayEvents(ctx, []*database.GatewayEvent{roomEvent(7, roomY)}))
		third, err := db.ComposeGatewayTxn(ctx, 4, 1000, nil)
		require.NoError(t, err)
		require.Greater(t, third.ID, second.ID, "transaction IDs never go back, even with the outbox empty")
	})
}

// An encrypted event whose key has not arrived holds back its own room only; it goes on when its
// key arrives (decrypted, in its place), or when its wait ends (as it is, recorded as late).
func TestGatewayOutboxHoldsBackOnlyTheWaitingRoom(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		waitX := roomEvent(1, roomX)
		waitX.Waiting, waitX.SessionID, waitX.WaitUntil = true, "sessX", 2000
		require.NoError(t, db.PutGatewayEvents(ctx, []*database.GatewayEvent{
			waitX, roomEvent(2, roomY), roomEvent(3, roomX), roomEvent(4, roomY),
		}))
		txn, err := db.ComposeGatewayTxn(ctx, 10, 1000, nil)
		require.NoError(t, err)
		require.Equal(t, []id.EventID{"$e2", "$e4"}, eventIDs(txn), "room Y is not held back by room X's wait")
		require.NoError(t, db.FinishGatewayTxn(ctx, txn.ID))

		nothing, err := db.ComposeGatewayTxn(ctx, 10, 1500, nil)
		require.NoError(t, err)
		require.Nil(t, nothing, "room X waits for its key")

		waiting, err := db.WaitingGatewayEvents(ctx, "sessX")
		require.NoError(t, err)
		require.Len(t, waiting, 1)
		ok, err := db.ResolveGatewayEvent(ctx, waiting[0].Seq, `{"event_id":"$e1","type":"m.room.message"}`)
		require.NoError(t, err)
		require.True(t, ok)
		txn, err = db.ComposeGatewayTxn(ctx, 10, 1500, nil)
		require.NoError(t, err)
		require.Equal(t, []id.EventID{"$e1", "$e3"}, eventIDs(txn), "the decrypted event goes first, in its place")
		require.JSONEq(t, `{"event_id":"$e1","type":"m.room.message"}`, txn.Events[0].Body)
		require.NoError(t, db.FinishGatewayTxn(ctx, txn.ID))

		// A second wait runs out: the event goes on encrypted, and is recorded as late.
		waitAgain := roomEvent(5, roomX)
		waitAgain.Waiting, waitAgain.SessionID, waitAgain.WaitUntil = true, "sessZ", 2000
		require.NoError(t, db.PutGatewayEvents(ctx, []*database.GatewayEvent{waitAgain, roomEvent(6, roomX)}))
		var late []id.EventID
		txn, err = db.ComposeGatewayTxn(ctx, 10, 2001, func(ctx context.Context, e *database.GatewayEvent) error {
			late = append(late, e.EventID)
			return db.PutGatewayLate(ctx, &database.GatewayLate{EventID: e.EventID, RoomID: e.RoomID, SessionID: e.SessionID, Body: e.Body})
		})
		require.NoError(t, err)
		require.Equal(t, []id.EventID{"$e5", "$e6"}, eventIDs(txn))
		require.Equal(t, []id.EventID{"$e5"}, late)
		lates, err := db.LateGatewayEvents(ctx, "sessZ")
		require.NoError(t, err)
		require.Len(t, lates, 1)
		// Resolving after the event left changes nothing (the key came too late for it).
		ok, err = db.ResolveGatewayEvent(ctx, txn.Events[0].Seq, "{}")
		require.NoError(t, err)
		require.False(t, ok)
	})
}
