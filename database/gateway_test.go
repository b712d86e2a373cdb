package database_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

func roomEvent(n int, room id.RoomID) *database.GatewayEvent {
	eventID := id.EventID(fmt.Sprintf("$e%d", n))
	return &database.GatewayEvent{Key: string(eventID), EventID: eventID, RoomID: room, Kind: database.GatewayRoomEvent,
		Body: fmt.Sprintf(`{"event_id":"%s"}`, eventID)}
}

func eventIDs(events []*database.GatewayEvent) []id.EventID {
	var out []id.EventID
	for _, e := range events {
		out = append(out, e.EventID)
	}
	return out
}

// heads reads the whole outbox's heads and their sequence numbers.
func heads(t *testing.T, db *database.Database) ([]*database.GatewayEvent, []int64) {
	t.Helper()
	events, err := db.GatewayOutboxHeads(context.Background(), 0, 1000)
	require.NoError(t, err)
	var seqs []int64
	for _, e := range events {
		seqs = append(seqs, e.Seq)
	}
	return events, seqs
}

// seqsOf returns the sequence numbers the events were stored under.
func seqsOf(events ...*database.GatewayEvent) []int64 {
	var out []int64
	for _, e := range events {
		out = append(out, e.Seq)
	}
	return out
}

// The bridge's outbox keeps the homeserver's order, stores each event once, and numbers its
// transactions without ever reusing an ID; a transaction not acknowledged is offered again as it
// was.
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
		again := []*database.GatewayEvent{roomEvent(3, roomX), roomEvent(6, roomX)}
		require.NoError(t, db.PutGatewayEvents(ctx, again))
		require.Zero(t, again[0].Seq, "an event stored already is not stored again")
		require.NotZero(t, again[1].Seq)
		depth, size, err := db.GatewayOutboxSize(ctx)
		require.NoError(t, err)
		require.Equal(t, 6, depth)
		require.EqualValues(t, 6*len(`{"event_id":"$e1"}`), size)

		_, seqs := heads(t, db)
		require.Equal(t, append(seqsOf(batch...), again[1].Seq), seqs, "in order")
		first, err := db.CreateGatewayTxn(ctx, seqs[:4], 1000, nil)
		require.NoError(t, err)
		require.Equal(t, []id.EventID{"$e1", "$e2", "$e3", "$e4"}, eventIDs(first.Events))
		require.Equal(t, `{"event_id":"$e1"}`, first.Events[0].Body)

		require.NoError(t, db.RetryGatewayTxn(ctx, first.ID, 5000, "the bridge answered 503", false))
		require.NoError(t, db.RetryGatewayTxn(ctx, first.ID, 6000, "the bridge answered 500", true))
		pending, err := db.PendingGatewayTxn(ctx)
		require.NoError(t, err)
		require.Equal(t, first.ID, pending.ID, "a failed transaction is retried under its ID")
		require.Equal(t, eventIDs(first.Events), eventIDs(pending.Events))
		require.Equal(t, 2, pending.Attempts)
		require.Equal(t, 1, pending.Refusals)
		require.EqualValues(t, 6000, pending.NextAttempt)
		require.Equal(t, "the bridge answered 500", pending.LastError)

		require.NoError(t, db.FinishGatewayTxn(ctx, first.ID))
		depth, _, err = db.GatewayOutboxSize(ctx)
		require.NoError(t, err)
		require.Equal(t, 2, depth)
		// Delivered events are not stored again when a transaction repeats them.
		require.NoError(t, db.PutGatewayEvents(ctx, []*database.GatewayEvent{roomEvent(2, roomX)}))
		_, seqs = heads(t, db)
		second, err := db.CreateGatewayTxn(ctx, seqs, 1000, nil)
		require.NoError(t, err)
		require.Equal(t, []id.EventID{"$e5", "$e6"}, eventIDs(second.Events))
		require.Greater(t, second.ID, first.ID)
		require.NoError(t, db.FinishGatewayTxn(ctx, second.ID))

		events, _ := heads(t, db)
		require.Empty(t, events)
		// Once pruned, the same ID comes back as a new event: only the window is remembered.
		require.NoError(t, db.PruneGatewayDelivered(ctx, 1<<62))
		require.NoError(t, db.PutGatewayEvents(ctx, []*database.GatewayEvent{roomEvent(7, roomY)}))
		_, seqs = heads(t, db)
		third, err := db.CreateGatewayTxn(ctx, seqs, 1000, nil)
		require.NoError(t, err)
		require.Greater(t, third.ID, second.ID, "transaction IDs never go back, even with the outbox empty")
		probe, err := db.NextGatewayTxnID(ctx)
		require.NoError(t, err)
		require.Greater(t, probe, third.ID)
	})
}

// A waiting event is resolved in place (decrypted, or as it is), unless it left meanwhile; one
// whose wait ran out goes into a transaction as it is, and late is told in the same database
// transaction.
func TestGatewayOutboxWaitingEvents(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		waitX := roomEvent(1, roomX)
		waitX.Waiting, waitX.SessionID, waitX.WaitUntil = true, "sessX", 2000
		require.NoError(t, db.PutGatewayEvents(ctx, []*database.GatewayEvent{waitX, roomEvent(2, roomY)}))
		waiting, err := db.WaitingGatewayEvents(ctx, "sessX")
		require.NoError(t, err)
		require.Len(t, waiting, 1)
		decrypted := `{"event_id":"$e1","type":"m.room.message","content":{"body":"longer than before"}}`
		ok, err := db.ResolveGatewayEvent(ctx, waiting[0].Seq, decrypted, waiting[0].Body)
		require.NoError(t, err)
		require.True(t, ok)
		events, seqs := heads(t, db)
		require.False(t, events[0].Waiting)
		require.EqualValues(t, len(decrypted)+len(waiting[0].Body), events[0].Size,
			"the outbox counts the decrypted body's bytes and those of the event as it arrived")
		txn, err := db.CreateGatewayTxn(ctx, seqs, 1500, nil)
		require.NoError(t, err)
		require.JSONEq(t, decrypted, txn.Events[0].Body)
		require.Equal(t, waiting[0].Body, txn.Events[0].Original, "the event as it arrived is kept beside its decrypted copy")
		require.NoError(t, db.FinishGatewayTxn(ctx, txn.ID))

		waitAgain := roomEvent(5, roomX)
		waitAgain.Waiting, waitAgain.SessionID, waitAgain.WaitUntil = true, "sessZ", 2000
		require.NoError(t, db.PutGatewayEvents(ctx, []*database.GatewayEvent{waitAgain, roomEvent(6, roomX)}))
		_, seqs = heads(t, db)
		var late []id.EventID
		txn, err = db.CreateGatewayTxn(ctx, seqs, 2001, func(ctx context.Context, e *database.GatewayEvent) error {
			late = append(late, e.EventID)
			return db.PutGatewayLate(ctx, &database.GatewayLate{EventID: e.EventID, RoomID: e.RoomID, SessionID: e.SessionID, Body: e.Body})
		})
		require.NoError(t, err)
		require.Equal(t, []id.EventID{"$e5", "$e6"}, eventIDs(txn.Events))
		require.Equal(t, []id.EventID{"$e5"}, late)
		lates, err := db.LateGatewayEvents(ctx, "sessZ")
		require.NoError(t, err)
		require.Len(t, lates, 1)
		// Resolving after the event left changes nothing (the key came too late for it).
		ok, err = db.ResolveGatewayEvent(ctx, txn.Events[0].Seq, "{}", "")
		require.NoError(t, err)
		require.False(t, ok)
	})
}

// A refused transaction splits into events that go alone; an event refused alone waits to be
// retried, or is set aside: listed, not counted in the outbox, requeued on request, pruned after a
// while.
func TestGatewayOutboxRefusalsAndDeadLetters(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		require.NoError(t, db.PutGatewayEvents(ctx, []*database.GatewayEvent{roomEvent(1, roomX), roomEvent(2, roomX), roomEvent(3, roomY)}))
		_, seqs := heads(t, db)
		txn, err := db.CreateGatewayTxn(ctx, seqs, 1000, nil)
		require.NoError(t, err)
		require.NoError(t, db.SplitGatewayTxn(ctx, txn.ID, "the bridge answered 500"))
		pending, err := db.PendingGatewayTxn(ctx)
		require.NoError(t, err)
		require.Nil(t, pending, "a split transaction is gone")
		events, seqs := heads(t, db)
		require.Len(t, events, 3)
		for _, e := range events {
			require.True(t, e.Solo, "%d goes alone from now on", e.Seq)
		}

		one, err := db.CreateGatewayTxn(ctx, seqs[:1], 1000, nil)
		require.NoError(t, err)
		require.NoError(t, db.RefuseGatewayEvent(ctx, one.ID, seqs[0], 9000, "the bridge answered 400", false))
		events, _ = heads(t, db)
		require.Equal(t, 1, events[0].Refusals)
		require.EqualValues(t, 9000, events[0].RetryAt)
		one, err = db.CreateGatewayTxn(ctx, seqs[:1], 9000, nil)
		require.NoError(t, err)
		require.NoError(t, db.RefuseGatewayEvent(ctx, one.ID, seqs[0], 0, "the bridge answered 400", true))
		_, left := heads(t, db)
		require.Equal(t, seqs[1:], left, "an event set aside leaves the outbox")
		depth, _, err := db.GatewayOutboxSize(ctx)
		require.NoError(t, err)
		require.Equal(t, 2, depth)
		dead, n, err := db.GatewayDeadLetters(ctx, 10)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		require.Equal(t, []id.EventID{"$e1"}, eventIDs(dead))
		require.Equal(t, 2, dead[0].Refusals)
		require.Equal(t, "the bridge answered 400", dead[0].LastError)
		require.NotZero(t, dead[0].DeadAt)

		requeued, err := db.RequeueGatewayDeadLetters(ctx, "$nope")
		require.NoError(t, err)
		require.Zero(t, requeued)
		requeued, err = db.RequeueGatewayDeadLetters(ctx, "")
		require.NoError(t, err)
		require.Equal(t, 1, requeued)
		events, left = heads(t, db)
		require.Equal(t, seqs, left, "back in its place")
		require.Zero(t, events[0].Refusals)
		require.True(t, events[0].Solo)

		one, err = db.CreateGatewayTxn(ctx, []int64{events[0].Seq}, 1000, nil)
		require.NoError(t, err)
		require.NoError(t, db.RefuseGatewayEvent(ctx, one.ID, events[0].Seq, 0, "refused", true))
		expired, err := db.PruneGatewayDeadLetters(ctx, db.Now().Add(time.Hour).UnixMilli())
		require.NoError(t, err)
		require.Equal(t, []id.EventID{"$e1"}, eventIDs(expired))
		_, n, err = db.GatewayDeadLetters(ctx, 10)
		require.NoError(t, err)
		require.Zero(t, n)
	})
}

// The tables beside the outbox are pruned by age and by count: the oldest go first.
func TestGatewaySideTablesPruned(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		now := time.UnixMilli(1_000_000)
		db.Now = func() time.Time { return now }
		for i := range 5 {
			now = now.Add(time.Second)
			require.NoError(t, db.PutGatewayMedia(ctx, fmt.Sprintf("m%d", i), "sealed"))
			require.NoError(t, db.PutGatewayLate(ctx, &database.GatewayLate{EventID: id.EventID(fmt.Sprintf("$l%d", i)), RoomID: roomX,
				SessionID: "s", Body: "{}"}))
		}
		now = now.Add(time.Second)
		require.NoError(t, db.PutGatewayMedia(ctx, "m0", "sealed"), "m0 handed out again: the most recent now")
		require.NoError(t, db.PruneGatewayMedia(ctx, 1_001_500, 3))
		for i, want := range []bool{true, false, false, true, true} {
			sealed, err := db.GatewayMedia(ctx, fmt.Sprintf("m%d", i))
			require.NoError(t, err)
			require.Equal(t, want, sealed != "", "m%d", i)
		}
		require.NoError(t, db.PruneGatewayLate(ctx, 1_002_500, 10))
		lates, err := db.LateGatewayEvents(ctx, "s")
		require.NoError(t, err)
		require.Len(t, lates, 3, "by age")
		require.NoError(t, db.PruneGatewayLate(ctx, 0, 1))
		lates, err = db.LateGatewayEvents(ctx, "s")
		require.NoError(t, err)
		require.Equal(t, []id.EventID{"$l4"}, []id.EventID{lates[0].EventID}, "by count, the newest stays")
		require.Len(t, lates, 1)
	})
}
