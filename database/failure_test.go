package database_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/database"
)

// errOf keeps the error of a call that also returns a value.
func errOf[T any](_ T, err error) error { return err }

// When the database fails (the disk is gone, the server is down), no operation reports success:
// a transaction marked processed, a bundle saved or an invite recorded that was not would be lost
// without a trace, so every one returns an error for its caller to act on and log.
func TestEveryOperationReportsAFailedDatabase(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		sent := &database.SentBundle{BundleID: "b", Puppet: puppetA, RoomID: roomX, Invitee: invitee}
		received := &database.ReceivedBundle{Puppet: puppetA, RoomID: roomX, Sender: alice}
		nothing := func(context.Context) error { return nil }
		require.NoError(t, db.Close())
		for name, op := range map[string]func() error{
			"Upgrade":                   func() error { return db.Upgrade(ctx) },
			"DoTxn":                     func() error { return db.DoTxn(ctx, nothing) },
			"DoBulkTxn":                 func() error { return db.DoBulkTxn(ctx, 1, nothing) },
			"PutSentBundle":             func() error { return db.PutSentBundle(ctx, sent) },
			"ClaimSentBundleForInvite":  func() error { return errOf(db.ClaimSentBundleForInvite(ctx, puppetA, roomX, invitee, "$i")) },
			"SetInviteFailed":           func() error { return db.SetInviteFailed(ctx, "b") },
			"SetInviteEvent":            func() error { return db.SetInviteEvent(ctx, "b", "$i") },
			"HasSentBundleForInvite":    func() error { return errOf(db.HasSentBundleForInvite(ctx, puppetA, roomX, "$i")) },
			"GetSentBundle":             func() error { return errOf(db.GetSentBundle(ctx, "b")) },
			"ListSentBundles":           func() error { return errOf(db.ListSentBundles(ctx, puppetA)) },
			"ListUnfinishedSentBundles": func() error { return errOf(db.ListUnfinishedSentBundles(ctx)) },
			"PutDelivery":               func() error { return db.PutDelivery(ctx, "b", database.Delivery{UserID: invitee, DeviceID: "D"}) },
			"GetDeliveries":             func() error { return errOf(db.GetDeliveries(ctx, "b")) },
			"FailStaleSentBundles":      func() error { return errOf(db.FailStaleSentBundles(ctx, time.Now(), "r")) },
			"ListRedeliverable":         func() error { return errOf(db.ListRedeliverable(ctx, invitee, time.Now())) },
			"ListSentBundlesInRoom":     func() error { return errOf(db.ListSentBundlesInRoom(ctx, roomX)) },
			"LatestSentTo":              func() error { return errOf(db.LatestSentTo(ctx, roomX, invitee)) },
			"CountBundles":              func() error { return errOf(db.CountBundles(ctx)) },
			"PutGatewayEvents":          func() error { return db.PutGatewayEvents(ctx, []*database.GatewayEvent{roomEvent(1, roomX)}) },
			"GatewayOutboxHeads":        func() error { return errOf(db.GatewayOutboxHeads(ctx, 0, 10)) },
			"PendingGatewayTxn":         func() error { return errOf(db.PendingGatewayTxn(ctx)) },
			"NextGatewayTxnID":          func() error { return errOf(db.NextGatewayTxnID(ctx)) },
			"CreateGatewayTxn":          func() error { return errOf(db.CreateGatewayTxn(ctx, []int64{1}, 1, nil)) },
			"FinishGatewayTxn":          func() error { return db.FinishGatewayTxn(ctx, 1) },
			"RetryGatewayTxn":           func() error { return db.RetryGatewayTxn(ctx, 1, 1, "r", false) },
			"SplitGatewayTxn":           func() error { return db.SplitGatewayTxn(ctx, 1, "r") },
			"RefuseGatewayEvent":        func() error { return db.RefuseGatewayEvent(ctx, 1, 1, 1, "r", true) },
			"GatewayDeadLetters": func() error {
				_, _, err := db.GatewayDeadLetters(ctx, 10)
				return err
			},
			"RequeueGatewayDeadLetters": func() error { return errOf(db.RequeueGatewayDeadLetters(ctx, "all")) },
			"PruneGatewayDeadLetters":   func() error { return errOf(db.PruneGatewayDeadLetters(ctx, 1)) },
			"WaitingGatewayEvents":      func() error { return errOf(db.WaitingGatewayEvents(ctx, "s")) },
			"ResolveGatewayEvent":       func() error { return errOf(db.ResolveGatewayEvent(ctx, 1, "{}", "")) },
			"PruneGatewayDelivered":     func() error { return db.PruneGatewayDelivered(ctx, 1) },
			"GatewayOutboxSize": func() error {
				_, _, err := db.GatewayOutboxSize(ctx)
				return err
			},
			"CountGatewayEvents":        func() error { return errOf(db.CountGatewayEvents(ctx)) },
			"PutGatewayLate":            func() error { return db.PutGatewayLate(ctx, &database.GatewayLate{EventID: "$e", RoomID: roomX}) },
			"LateGatewayEvents":         func() error { return errOf(db.LateGatewayEvents(ctx, "s")) },
			"DeleteGatewayLate":         func() error { return db.DeleteGatewayLate(ctx, "$e") },
			"PruneGatewayLate":          func() error { return db.PruneGatewayLate(ctx, 1, 1) },
			"GatewaySend":               func() error { return errOf(db.GatewaySend(ctx, puppetA, "t")) },
			"PutGatewaySend":            func() error { return db.PutGatewaySend(ctx, puppetA, "t", "$e") },
			"PruneGatewaySends":         func() error { return db.PruneGatewaySends(ctx, 1) },
			"PutGatewayMedia":           func() error { return db.PutGatewayMedia(ctx, "m", "s") },
			"GatewayMedia":              func() error { return errOf(db.GatewayMedia(ctx, "m")) },
			"PruneGatewayMedia":         func() error { return db.PruneGatewayMedia(ctx, 1, 1) },
			"GetPuppet":                 func() error { return errOf(db.GetPuppet(ctx, puppetA)) },
			"PutPuppet":                 func() error { return db.PutPuppet(ctx, &database.Puppet{UserID: puppetA, DeviceID: "D"}) },
			"TouchPuppet":               func() error { return db.TouchPuppet(ctx, puppetA) },
			"CountPuppets":              func() error { return errOf(db.CountPuppets(ctx)) },
			"ListPuppets":               func() error { return errOf(db.ListPuppets(ctx)) },
			"ListPuppetIDs":             func() error { return errOf(db.ListPuppetIDs(ctx)) },
			"ListPuppetsActiveSince":    func() error { return errOf(db.ListPuppetsActiveSince(ctx, 0)) },
			"PutReceivedBundle":         func() error { return db.PutReceivedBundle(ctx, received) },
			"UpdateReceivedBundle":      func() error { return db.UpdateReceivedBundle(ctx, received) },
			"SaveImportedBundle":        func() error { return db.SaveImportedBundle(ctx, received) },
			"GetReceivedBundle":         func() error { return errOf(db.GetReceivedBundle(ctx, puppetA, roomX, alice)) },
			"ListReceivedBundles":       func() error { return errOf(db.ListReceivedBundles(ctx, puppetA)) },
			"ListReceivedBundlesInRoom": func() error { return errOf(db.ListReceivedBundlesInRoom(ctx, roomX)) },
			"ListRetryable":             func() error { return errOf(db.ListRetryable(ctx, roomX)) },
			"RetryNow":                  func() error { return errOf(db.RetryNow(ctx, puppetA, roomX)) },
			"ListDueRetries":            func() error { return errOf(db.ListDueRetries(ctx)) },
			"RejectBundlesNotFrom":      func() error { return errOf(db.RejectBundlesNotFrom(ctx, puppetA, roomX, alice, "r")) },
			"PutInvite":                 func() error { return db.PutInvite(ctx, &database.Invite{Puppet: puppetA, RoomID: roomX}) },
			"MarkInviteAccepted":        func() error { return db.MarkInviteAccepted(ctx, puppetA, roomX, "$i") },
			"ConfirmJoin":               func() error { return db.ConfirmJoin(ctx, puppetA, roomX, "$i", "$j") },
			"GetInvite":                 func() error { return errOf(db.GetInvite(ctx, puppetA, roomX)) },
			"ListAcceptedInvites":       func() error { return errOf(db.ListAcceptedInvites(ctx, time.Now())) },
			"ExpireAcceptWindow":        func() error { return errOf(db.ExpireAcceptWindow(ctx, time.Hour)) },
			"DeleteInvite":              func() error { return db.DeleteInvite(ctx, puppetA, roomX) },
			"Refused":                   func() error { return errOf(db.Refused(ctx, alice)) },
			"RecordRefusal":             func() error { return errOf(db.RecordRefusal(ctx, alice)) },
			"RotateAfter":               func() error { return errOf(db.RotateAfter(ctx, roomX)) },
			"RequireRotation":           func() error { return db.RequireRotation(ctx, roomX, time.Now()) },
			"RecordRoomEncryption":      func() error { return db.RecordRoomEncryption(ctx, roomX, "{}", "{}") },
			"GetRoomEncryption":         func() error { return errOf(db.GetRoomEncryption(ctx, roomX)) },
			"IsTxnProcessed":            func() error { return errOf(db.IsTxnProcessed(ctx, "t", "h")) },
			"MarkTxnProcessed":          func() error { return db.MarkTxnProcessed(ctx, "t", "h") },
			"PruneTxns":                 func() error { return db.PruneTxns(ctx, time.Hour) },
		} {
			require.Error(t, op(), name)
		}
	})
}
