package gateway_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"
)

// The bridge gets an event decrypted only if the session that decrypts it is its sender's: its
// sender key a device of the sender heirloom knows, with the session's signing key, or, of a
// device heirloom does not know, a key the sender gave the reader himself. A copy from a bundle
// (another member's word) of a session whose device heirloom does not know goes as it arrived.
func TestBridgeGetsDecryptedOnlyWhatTheSendersSessionDecrypts(t *testing.T) {
	for _, tc := range []struct {
		name      string
		device    string // alice's device heirloom knows: "" none, "same" with the session's keys, "other" with another signing key
		bundle    bool   // the reader's copy came from bob's bundle
		decrypted bool
	}{
		{"a room key from the sender, device unknown", "", false, true},
		{"a room key from the sender, device known", "same", false, true},
		{"the sender's device known with another signing key", "other", false, false},
		{"a bundle's copy, device unknown", "", true, false},
		{"a bundle's copy, device known", "same", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			ctx := context.Background()
			room := id.RoomID("!r:localhost")
			p := h.newReader(t)
			alice := newRemoteSender(t, room)
			if tc.bundle {
				shared := true
				igs, err := crypto.NewInboundGroupSession(alice.senderKey, alice.signing, room, alice.sessKey, 0, 0, &shared, false)
				require.NoError(t, err)
				igs.KeySource, igs.SourceUser, igs.ForwardingChains = id.KeySourceForward, "@bob:localhost", []string{"Ym9iJ3MgZGV2aWNlIGtleSwgMzIgYnl0ZXMgbG9uZyEh"}
				stored, reason, err := p.StoreSession(ctx, igs)
				require.NoError(t, err)
				require.True(t, stored, reason)
			} else {
				alice.giveKey(t, p, room)
			}
			if tc.device != "" {
				signing := alice.signing
				if tc.device == "other" {
					ed := make([]byte, 32)
					_, _ = rand.Read(ed)
					signing = id.Ed25519(base64.RawStdEncoding.EncodeToString(ed))
				}
				require.NoError(t, p.Mach.CryptoStore.PutDevice(ctx, "@alice:localhost", &id.Device{UserID: "@alice:localhost",
					DeviceID: "ALICE", IdentityKey: id.IdentityKey(alice.senderKey), SigningKey: signing}))
			}
			pushState(t, h, "1", readerJoins("$join", "!r:localhost"))
			evt := alice.event(t, "$e", room, "alice's words")
			h.answerPaths(map[string]string{"/event/$e": evt})
			resp := h.readAs(t, room, "/event/$e")
			require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
			var got map[string]any
			require.NoError(t, json.Unmarshal(resp.body, &got))
			want := "m.room.encrypted"
			if tc.decrypted {
				want = "m.room.message"
			}
			require.Equal(t, want, got["type"], "%s", resp.body)
		})
	}
}
