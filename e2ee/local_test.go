package e2ee

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

// A room key for a device heirloom holds itself is stored in that device's store, as if it had
// come over Olm from the sender's device; a device that merely claims a local puppet's device ID
// with another identity key, and every device of anyone else, is left for Olm.
func TestRoomKeyDeliveredLocallyOnlyToHeirloomsOwnDevices(t *testing.T) {
	mgr, db := testManager(t)
	ctx := context.Background()
	p := testPuppet(t, mgr, "sender")
	// q is provisioned (heirloom holds its device); the stranger is not.
	require.NoError(t, db.PutPuppet(ctx, &database.Puppet{UserID: "@heirloom_local:localhost", DeviceID: "DEVLOCAL", Ready: true}))
	q, err := mgr.Get(ctx, "@heirloom_local:localhost")
	require.NoError(t, err)
	roomID := id.RoomID("!room:localhost")
	joined(t, db, roomID, p.UserID, q.UserID)
	ogs, err := crypto.NewOutboundGroupSession(roomID, nil, nil)
	require.NoError(t, err)
	genuine := &id.Device{UserID: q.UserID, DeviceID: q.DeviceID, IdentityKey: q.Mach.OwnIdentity().IdentityKey}
	impostor := &id.Device{UserID: q.UserID, DeviceID: q.DeviceID, IdentityKey: newOlmSender(q.UserID).curve}
	stranger := &id.Device{UserID: "@js:localhost", DeviceID: "JSDEV", IdentityKey: newOlmSender("@js:localhost").curve}

	recipients := map[id.UserID]map[id.DeviceID]*id.Device{q.UserID: {q.DeviceID: impostor}, stranger.UserID: {stranger.DeviceID: stranger}}
	n, err := p.deliverLocally(ctx, ogs, true, recipients)
	require.NoError(t, err)
	require.Zero(t, n)
	require.Len(t, recipients, 2, "an identity key heirloom does not hold goes over Olm")
	require.Nil(t, heldRow(t, q, roomID, ogs.ID()))

	recipients = map[id.UserID]map[id.DeviceID]*id.Device{q.UserID: {q.DeviceID: genuine}, stranger.UserID: {stranger.DeviceID: stranger}}
	n, err = p.deliverLocally(ctx, ogs, true, recipients)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, map[id.UserID]map[id.DeviceID]*id.Device{stranger.UserID: {stranger.DeviceID: stranger}}, recipients)
	row := heldRow(t, q, roomID, ogs.ID())
	require.NotNil(t, row)
	require.Equal(t, id.SenderKey(p.Mach.OwnIdentity().IdentityKey), row.senderKey)
	require.True(t, row.shared)
	require.Zero(t, row.index)
	shared, err := p.Store.IsOutboundGroupSessionShared(ctx, q.UserID, genuine.IdentityKey, ogs.ID())
	require.NoError(t, err)
	require.True(t, shared, "recorded as shared, so the next send does not give it again")
	igs, err := q.Store.GetGroupSession(ctx, roomID, ogs.ID())
	require.NoError(t, err)
	require.Equal(t, p.UserID, igs.SourceUser)
	require.Equal(t, p.Mach.OwnIdentity().SigningKey, igs.SigningKey)
}
