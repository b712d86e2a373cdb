package history

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// nonCanonical re-encodes a 32-byte key in unpadded base64 with its two unused trailing bits set:
// the same 32 bytes for Go's (non-strict) decoder, another string for everyone who compares
// strings, and an error for a strict decoder (rust-sdk's base64 crate: "InvalidLastSymbol").
func nonCanonical(t *testing.T, key string) string {
	t.Helper()
	raw, err := base64.RawStdEncoding.Strict().DecodeString(key)
	require.NoError(t, err)
	require.Len(t, raw, 32)
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	last := bytes.IndexByte([]byte(alphabet), key[42])
	out := key[:42] + string(alphabet[last|1])
	again, err := base64.RawStdEncoding.DecodeString(out)
	require.NoError(t, err, "Go's default decoder accepts the non-canonical form")
	require.Equal(t, raw, again)
	_, err = base64.RawStdEncoding.Strict().DecodeString(out)
	require.Error(t, err, "a strict decoder refuses it")
	return out
}

// A bundle entry's sender_claimed_keys.ed25519 or sender_key, or a withheld entry's sender_key, in
// a non-canonical base64 form (the two unused trailing bits set) reads as the same bytes with Go's
// default decoder; rust-sdk decodes keys strictly and refuses the whole bundle over one such entry.
// Whatever a bundle brings in, no key leaves in the puppet's own bundles in a form other than the
// canonical one.
func TestNonCanonicalBase64KeysNeverLeaveInABundle(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(t *testing.T, k *keybundle.RoomKey, w *keybundle.Withheld)
	}{
		{"none", func(t *testing.T, _ *keybundle.RoomKey, _ *keybundle.Withheld) {}},
		{"claimed ed25519", func(t *testing.T, k *keybundle.RoomKey, _ *keybundle.Withheld) {
			k.SenderClaimedKeys.Ed25519 = id.Ed25519(nonCanonical(t, string(k.SenderClaimedKeys.Ed25519)))
		}},
		{"sender_key", func(t *testing.T, k *keybundle.RoomKey, _ *keybundle.Withheld) {
			k.SenderKey = id.SenderKey(nonCanonical(t, string(k.SenderKey)))
		}},
		{"withheld sender_key", func(t *testing.T, _ *keybundle.RoomKey, w *keybundle.Withheld) {
			w.SenderKey = id.SenderKey(nonCanonical(t, string(w.SenderKey)))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testdb.ForEach(t, func(t *testing.T, dbCfg config.Database) {
				env := newBenchEnvOn(t, dbCfg)
				p := env.puppet(t, "victim")
				honest, hostile, withheldSession := newMegolmKey(t), newMegolmKey(t), newMegolmKey(t)
				entry := hostile.entry(t, benchRoom, 0)
				w := keybundle.Withheld{Algorithm: id.AlgorithmMegolmV1, Code: keybundle.CodeHistoryNotShared, Reason: "no",
					RoomID: benchRoom, SenderKey: validCurve, SessionID: withheldSession.out.ID()}
				tc.mutate(t, &entry, &w)
				inbound := bundleOf(t, []keybundle.RoomKey{honest.entry(t, benchRoom, 0), entry}, []keybundle.Withheld{w})
				res, err := importPlain(t, env, p, inbound)
				require.NoError(t, err)
				t.Logf("import of the hostile bundle: %+v", res)

				var out bytes.Buffer
				_, err = env.svc.writeBundle(context.Background(), p, benchRoom, &out)
				require.NoError(t, err)
				if dir := os.Getenv("HEIRLOOM_BUNDLE_FIXTURES"); dir != "" {
					name := map[string]string{"claimed ed25519": "ed", "sender_key": "curve", "withheld sender_key": "withheld", "none": "honest"}[tc.name]
					require.NoError(t, os.WriteFile(filepath.Join(dir, "noncanon-"+name+".json"), out.Bytes(), 0o644))
				}
				var wire struct {
					RoomKeys []keybundle.RoomKey  `json:"room_keys"`
					Withheld []keybundle.Withheld `json:"withheld"`
				}
				require.NoError(t, json.Unmarshal(out.Bytes(), &wire))
				strict := base64.RawStdEncoding.Strict()
				for _, k := range wire.RoomKeys {
					_, err := strict.DecodeString(string(k.SenderKey))
					require.NoError(t, err, "room key %s: sender_key %q is not canonical base64: Element refuses the whole bundle", k.SessionID, k.SenderKey)
					_, err = strict.DecodeString(string(k.SenderClaimedKeys.Ed25519))
					require.NoError(t, err, "room key %s: ed25519 %q is not canonical base64: Element refuses the whole bundle", k.SessionID, k.SenderClaimedKeys.Ed25519)
				}
				for _, w := range wire.Withheld {
					_, err := strict.DecodeString(string(w.SenderKey))
					require.NoError(t, err, "withheld %s: sender_key %q is not canonical base64: Element refuses the whole bundle", w.SessionID, w.SenderKey)
				}
			})
		})
	}
}
