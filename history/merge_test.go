package history

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/keybundle"
)

// forge returns an export of the session with the same public key (so the same session ID) and
// another ratchet: what an inviter can make without ever holding the real key.
func forge(t *testing.T, exported string) string {
	raw, err := base64.RawStdEncoding.DecodeString(exported)
	require.NoError(t, err)
	for i := 5; i < 5+128; i++ { // version (1) and index (4), then the ratchet
		raw[i] ^= 0x5a
	}
	return base64.RawStdEncoding.EncodeToString(raw)
}

// A bundle key with a held session's ID but another ratchet is dropped: the real key stays, and
// the held session still decrypts. An honest earlier-index copy is merged as before.
func TestBundleCannotReplaceHeldKeyWithForgery(t *testing.T) {
	env := newBenchEnv(t)
	p := env.puppet(t, "victim")
	ctx := context.Background()
	out, err := olm.NewOutboundGroupSession()
	require.NoError(t, err)
	for range 5 { // advance so the real key is held from index 5
		_, err = out.Encrypt([]byte("x"))
		require.NoError(t, err)
	}
	shared := true
	held, err := crypto.NewInboundGroupSession("senderkey", "signingkey", benchRoom, out.Key(), time.Hour, 100, &shared, false)
	require.NoError(t, err)
	require.NoError(t, p.Mach.StoreGroupSession(ctx, held))
	require.EqualValues(t, 5, held.Internal.FirstKnownIndex())

	genuineAt5, err := held.Internal.Export(5)
	require.NoError(t, err)
	forged := forge(t, string(genuineAt5))
	importKey := func(sessionKey string) importResult {
		bundle, err := json.Marshal(map[string]any{"room_keys": []keybundle.RoomKey{{
			Algorithm: id.AlgorithmMegolmV1, RoomID: benchRoom, SenderKey: "senderkey", SessionID: held.ID(),
			SessionKey: sessionKey, SenderClaimedKeys: keybundle.SenderClaimedKeys{Ed25519: "signingkey"},
		}}, "withheld": []any{}})
		require.NoError(t, err)
		rb := storedBundle(t, env, p.UserID, "@mallory:localhost")
		res, err := env.svc.importBundle(ctx, p, rb, io.NopCloser(bytes.NewReader(bundle)), int64(len(bundle)))
		require.NoError(t, err)
		return res
	}

	res := importKey(forged)
	require.Equal(t, 0, res.imported)
	require.Equal(t, 1, res.skipped)
	after, err := p.Store.GetGroupSession(ctx, benchRoom, held.ID())
	require.NoError(t, err)
	exported, err := after.Internal.Export(5)
	require.NoError(t, err)
	require.Equal(t, string(genuineAt5), string(exported), "the held key is untouched")
	require.Equal(t, id.KeySourceDirect, after.KeySource)
}
