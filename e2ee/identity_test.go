package e2ee

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"
)

// resetIdentity gives the puppet a new cross-signing identity on the homeserver, signing its
// device, as a user who lost theirs sets up another.
func resetIdentity(t *testing.T, p *Puppet) id.Ed25519 {
	t.Helper()
	ctx := context.Background()
	keys, err := p.Mach.GenerateCrossSigningKeys()
	require.NoError(t, err)
	require.NoError(t, p.Mach.PublishCrossSigningKeys(ctx, keys, nil))
	require.NoError(t, p.Mach.SignOwnDevice(ctx, p.Mach.OwnIdentity()))
	return keys.MasterKey.PublicKey()
}

// What heirloom knows of a user's identity is what an admin sees: none before it saw one, the
// first it saw, a change since, and the admin's confirmation of the new one (checked out of band)
// ending the change, but only for the very key that is current.
func TestIdentityChangeAndConfirmation(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	_, err := h.mine.Identity(ctx, h.bob.UserID)
	require.ErrorIs(t, err, ErrUnknownIdentity)

	_, err = h.alice.FetchDevices(ctx, []id.UserID{h.bob.UserID})
	require.NoError(t, err)
	first, err := h.mine.Identity(ctx, h.bob.UserID)
	require.NoError(t, err)
	require.False(t, first.Changed)
	require.Equal(t, first.Current, first.FirstSeen)

	newKey := resetIdentity(t, h.bob)
	_, err = h.alice.FetchDevices(ctx, []id.UserID{h.bob.UserID})
	require.NoError(t, err)
	changed, err := h.mine.Identity(ctx, h.bob.UserID)
	require.NoError(t, err)
	require.True(t, changed.Changed)
	require.Equal(t, newKey, changed.Current)
	require.Equal(t, first.Current, changed.FirstSeen)

	_, err = h.mine.ConfirmIdentity(ctx, h.bob.UserID, first.Current)
	require.ErrorIs(t, err, ErrIdentityMismatch, "the old key is not the current one")
	confirmed, err := h.mine.ConfirmIdentity(ctx, h.bob.UserID, newKey)
	require.NoError(t, err)
	require.False(t, confirmed.Changed)
	require.Equal(t, newKey, confirmed.FirstSeen)
	_, err = h.mine.ConfirmIdentity(ctx, "@nobody:localhost", newKey)
	require.ErrorIs(t, err, ErrUnknownIdentity)
}
