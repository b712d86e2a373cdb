package history

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// bundleSender is a device that sends bundles over Olm: its account and the sender_device_keys
// it puts in its messages (MSC4147), self-signed.
type bundleSender struct {
	user    id.UserID
	account *crypto.OlmAccount
	keys    *mautrix.DeviceKeys
}

func newBundleSender(t *testing.T, user id.UserID) *bundleSender {
	t.Helper()
	account := crypto.NewOlmAccount()
	keys := &mautrix.DeviceKeys{UserID: user, DeviceID: "SENDERDEVICE",
		Algorithms: []id.Algorithm{id.AlgorithmMegolmV1, id.AlgorithmOlmV1},
		Keys: mautrix.KeyMap{
			id.NewDeviceKeyID(id.KeyAlgorithmCurve25519, "SENDERDEVICE"): string(account.IdentityKey()),
			id.NewDeviceKeyID(id.KeyAlgorithmEd25519, "SENDERDEVICE"):    string(account.SigningKey()),
		}}
	sig, err := account.SignJSON(keys)
	require.NoError(t, err)
	keys.Signatures = signatures.NewSingleSignature(user, id.KeyAlgorithmEd25519, "SENDERDEVICE", sig)
	return &bundleSender{user: user, account: account, keys: keys}
}

// envelope is the Olm envelope of the sender's bundle message, carrying keys as sender_device_keys.
func (s *bundleSender) envelope(keys *mautrix.DeviceKeys) *crypto.DecryptedOlmEvent {
	return &crypto.DecryptedOlmEvent{Sender: s.user, SenderKey: s.account.IdentityKey(), SenderDeviceKeys: keys,
		Keys: crypto.OlmEventKeys{Ed25519: s.account.SigningKey()}, Type: event.ToDeviceRoomKeyBundle}
}

// bundleMessage is an m.room_key_bundle for the room naming a real encrypted file.
func bundleMessage(t *testing.T, env *benchEnv) *e2ee.BundleContent {
	t.Helper()
	sealed, err := keybundle.Seal(env.dir, 1<<20, func(w io.Writer) (keybundle.Counts, error) {
		_, err := w.Write([]byte(`{"room_keys":[],"withheld":[]}`))
		return keybundle.Counts{}, err
	})
	require.NoError(t, err)
	defer sealed.Close()
	sealed.Info.URL = "mxc://localhost/bundle"
	return &e2ee.BundleContent{RoomKeyBundleEventContent: event.RoomKeyBundleEventContent{RoomID: benchRoom, File: *sealed.Info},
		Type: event.ToDeviceRoomKeyBundle}
}

// A bundle message without valid sender_device_keys (the sending device's own keys, self-signed,
// the very keys the Olm message came with) is dropped on arrival: nothing of it is stored, so no
// later join can make the puppet download it.
func TestBundleWithoutValidSenderDeviceKeysIsDropped(t *testing.T) {
	env := newBenchEnv(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = env.svc.Shutdown(ctx)
	})
	p := pointPuppetAt(t, env, "http://127.0.0.1:1")
	for _, tc := range []struct {
		name   string
		user   id.UserID
		keys   func(s *bundleSender) *mautrix.DeviceKeys
		stored bool
	}{
		{"valid", "@alice:localhost", func(s *bundleSender) *mautrix.DeviceKeys { return s.keys }, true},
		{"another user's", "@carol:localhost", func(*bundleSender) *mautrix.DeviceKeys {
			return newBundleSender(t, "@dave:localhost").keys
		}, false},
		{"another device's of the same user", "@erin:localhost", func(*bundleSender) *mautrix.DeviceKeys {
			return newBundleSender(t, "@erin:localhost").keys
		}, false},
		{"not self-signed", "@frank:localhost", func(s *bundleSender) *mautrix.DeviceKeys {
			keys := *s.keys
			keys.Algorithms = []id.Algorithm{id.AlgorithmOlmV1} // changed after signing
			return &keys
		}, false},
		{"none", "@bob:localhost", func(*bundleSender) *mautrix.DeviceKeys { return nil }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newBundleSender(t, tc.user)
			env.svc.ReceiveBundle(context.Background(), p, s.envelope(tc.keys(s)), bundleMessage(t, env))
			b, err := env.db.GetReceivedBundle(context.Background(), p.UserID, benchRoom, tc.user)
			require.NoError(t, err)
			if tc.stored {
				require.NotNil(t, b, "a bundle with valid sender_device_keys waits for the join")
				require.Equal(t, id.DeviceID("SENDERDEVICE"), b.SenderDevice)
			} else {
				require.Nil(t, b, "the bundle is dropped")
			}
		})
	}
}
