package e2ee

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/id"
)

// F6: a member who re-sends a session he received (as his own m.room_key) must not re-attribute the
// puppet's imported copy nor erase keys_shared_by: "direct" proves the relayer, not the creator.
func TestRelayedRoomKeyKeepsTheHeldClaimsAndProvenance(t *testing.T) {
	for _, advance := range []int{0, 3} {
		t.Run([]string{"at the same index", "at a later index"}[min(advance, 1)], func(t *testing.T) {
			mgr, db := testManager(t)
			p := testPuppet(t, mgr, "victim")
			ctx := context.Background()
			alice, mallory := newOlmSender("@alice:localhost"), newOlmSender("@mallory:localhost")
			joined(t, db, roomA, p.UserID, alice.user, mallory.user)
			out, err := olm.NewOutboundGroupSession()
			require.NoError(t, err)
			stored, _, err := p.StoreSession(ctx, importedCopy(t, out, roomA, alice, "@inviter:localhost"))
			require.NoError(t, err)
			require.True(t, stored)
			for range advance {
				_, err = out.Encrypt([]byte("x"))
				require.NoError(t, err)
			}
			mallory.sendRoomKey(ctx, p, roomA, out.ID(), out.Key(), true)
			held, err := p.Store.GetGroupSession(ctx, roomA, out.ID())
			require.NoError(t, err)
			require.Equal(t, alice.curve, held.SenderKey, "the held copy's sender claim must stay")
			require.Equal(t, alice.signing, held.SigningKey)
			require.Equal(t, id.KeySourceForward, held.KeySource)
			require.Equal(t, id.UserID("@inviter:localhost"), held.SourceUser, "keys_shared_by must still name the inviter")
		})
	}
}
