package keybundle_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/keybundle"
)

func TestDecide(t *testing.T) {
	const (
		inviter  id.UserID = "@alice:example.org"
		stranger id.UserID = "@mallory:example.org"
	)
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	window := 24 * time.Hour
	valid := keybundle.AcceptInput{
		AcceptedAt: now.Add(-time.Hour), Inviter: inviter, Sender: inviter, Joined: true,
		SenderTrust: id.TrustStateCrossSignedTOFU, Now: now, Window: window,
	}
	for _, tc := range []struct {
		name       string
		mutate     func(*keybundle.AcceptInput)
		want       keybundle.Verdict
		wantReason string
	}{
		{"cross-signed, trusted on first use", func(*keybundle.AcceptInput) {}, keybundle.Import, ""},
		{"cross-signed and verified", func(in *keybundle.AcceptInput) { in.SenderTrust = id.TrustStateCrossSignedVerified }, keybundle.Import, ""},
		{"device verified", func(in *keybundle.AcceptInput) { in.SenderTrust = id.TrustStateVerified }, keybundle.Import, ""},
		{"accepted just now", func(in *keybundle.AcceptInput) { in.AcceptedAt = now }, keybundle.Import, ""},
		{"accepted exactly a window ago", func(in *keybundle.AcceptInput) { in.AcceptedAt = now.Add(-window) }, keybundle.Import, ""},
		{"no accepted invite", func(in *keybundle.AcceptInput) { in.AcceptedAt = time.Time{} }, keybundle.Wait, "no accepted invite"},
		{"no accepted invite, any sender", func(in *keybundle.AcceptInput) {
			in.AcceptedAt, in.Sender, in.Joined = time.Time{}, stranger, false
		}, keybundle.Wait, "no accepted invite"},
		{"accepted a moment over the window ago", func(in *keybundle.AcceptInput) {
			in.AcceptedAt = now.Add(-window - time.Millisecond)
		}, keybundle.Expire, "24h0m0s"},
		{"accepted days ago", func(in *keybundle.AcceptInput) { in.AcceptedAt = now.Add(-72 * time.Hour) }, keybundle.Expire, "ago"},
		{"sender is not the inviter", func(in *keybundle.AcceptInput) { in.Sender = stranger }, keybundle.Reject, "not the inviter"},
		{"not joined", func(in *keybundle.AcceptInput) { in.Joined = false }, keybundle.Wait, "not joined"},
		{"sender identity changed", func(in *keybundle.AcceptInput) { in.SenderTrust = id.TrustStateCrossSignedUntrusted }, keybundle.Reject, "identity changed"},
		{"trust unset", func(in *keybundle.AcceptInput) { in.SenderTrust = id.TrustStateUnset }, keybundle.Reject, "not cross-signed"},
		{"unknown device", func(in *keybundle.AcceptInput) { in.SenderTrust = id.TrustStateUnknownDevice }, keybundle.Reject, "not cross-signed"},
		{"forwarded trust", func(in *keybundle.AcceptInput) { in.SenderTrust = id.TrustStateForwarded }, keybundle.Reject, "not cross-signed"},
		{"device key mismatch", func(in *keybundle.AcceptInput) { in.SenderTrust = id.TrustStateDeviceKeyMismatch }, keybundle.Reject, ""},
		{"blacklisted", func(in *keybundle.AcceptInput) { in.SenderTrust = id.TrustStateBlacklisted }, keybundle.Reject, "blacklisted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := valid
			tc.mutate(&in)
			verdict, reason := keybundle.Decide(in)
			require.Equal(t, tc.want, verdict, "reason: %s", reason)
			if tc.want == keybundle.Import {
				require.Empty(t, reason)
			} else {
				require.NotEmpty(t, reason, "every refusal says why")
				require.Contains(t, reason, tc.wantReason)
			}
		})
	}
}

// deviceKeys returns self-signed device keys of a fresh Olm account, as mautrix uploads them.
func deviceKeys(t *testing.T, userID id.UserID, deviceID id.DeviceID) (*mautrix.DeviceKeys, *crypto.OlmAccount) {
	t.Helper()
	account := crypto.NewOlmAccount()
	keys := &mautrix.DeviceKeys{
		UserID:     userID,
		DeviceID:   deviceID,
		Algorithms: []id.Algorithm{id.AlgorithmMegolmV1, id.AlgorithmOlmV1},
		Keys: mautrix.KeyMap{
			id.NewDeviceKeyID(id.KeyAlgorithmCurve25519, deviceID): string(account.IdentityKey()),
			id.NewDeviceKeyID(id.KeyAlgorithmEd25519, deviceID):    string(account.SigningKey()),
		},
	}
	sign(t, account, keys)
	return keys, account
}

func sign(t *testing.T, account *crypto.OlmAccount, keys *mautrix.DeviceKeys) {
	t.Helper()
	sig, err := account.SignJSON(keys)
	require.NoError(t, err)
	keys.Signatures = signatures.NewSingleSignature(keys.UserID, id.KeyAlgorithmEd25519, keys.DeviceID.String(), sig)
}

// viaJSON returns the keys as a receiver parses them from the Olm payload.
func viaJSON(t *testing.T, keys *mautrix.DeviceKeys) *mautrix.DeviceKeys {
	t.Helper()
	data, err := json.Marshal(keys)
	require.NoError(t, err)
	var out mautrix.DeviceKeys
	require.NoError(t, json.Unmarshal(data, &out))
	return &out
}

func TestValidateSenderDeviceKeys(t *testing.T) {
	const (
		sender id.UserID   = "@alice:example.org"
		device id.DeviceID = "ALICEDEVICE"
	)
	for _, tc := range []struct {
		name string
		// prepare returns the keys in the message and the Olm keys the message was sent with.
		prepare func(t *testing.T) (*mautrix.DeviceKeys, id.SenderKey, id.Ed25519)
		wantErr error
	}{{
		name: "valid",
		prepare: func(t *testing.T) (*mautrix.DeviceKeys, id.SenderKey, id.Ed25519) {
			keys, acc := deviceKeys(t, sender, device)
			return viaJSON(t, keys), acc.IdentityKey(), acc.SigningKey()
		},
	}, {
		name: "valid with a cross-signing signature and unsigned data",
		prepare: func(t *testing.T) (*mautrix.DeviceKeys, id.SenderKey, id.Ed25519) {
			keys, acc := deviceKeys(t, sender, device)
			keys.Signatures[sender][id.NewKeyID(id.KeyAlgorithmEd25519, "c2VsZi1zaWduaW5n")] = "c2lnbmF0dXJl"
			keys.Unsigned = map[string]any{"device_display_name": "Element Web"}
			return viaJSON(t, keys), acc.IdentityKey(), acc.SigningKey()
		},
	}, {
		name: "valid with a signed field heirloom does not know",
		prepare: func(t *testing.T) (*mautrix.DeviceKeys, id.SenderKey, id.Ed25519) {
			keys, acc := deviceKeys(t, sender, device)
			keys.Extra = map[string]any{"org.example.future": map[string]any{"x": 1.0}}
			sign(t, acc, keys)
			return viaJSON(t, keys), acc.IdentityKey(), acc.SigningKey()
		},
	}, {
		name: "valid dehydrated device",
		prepare: func(t *testing.T) (*mautrix.DeviceKeys, id.SenderKey, id.Ed25519) {
			keys, acc := deviceKeys(t, sender, device)
			keys.Dehydrated = true
			sign(t, acc, keys)
			return viaJSON(t, keys), acc.IdentityKey(), acc.SigningKey()
		},
	}, {
		name: "no keys",
		prepare: func(t *testing.T) (*mautrix.DeviceKeys, id.SenderKey, id.Ed25519) {
			_, acc := deviceKeys(t, sender, device)
			return nil, acc.IdentityKey(), acc.SigningKey()
		},
		wantErr: keybundle.ErrNoSenderDeviceKeys,
	}, {
		name: "keys of another user",
		prepare: func(t *testing.T) (*mautrix.DeviceKeys, id.SenderKey, id.Ed25519) {
			keys, acc := deviceKeys(t, "@mallory:example.org", device)
			return viaJSON(t, keys), acc.IdentityKey(), acc.SigningKey()
		},
		wantErr: keybundle.ErrDeviceKeysWrongUser,
	}, {
		name: "ed25519 key differs from the Olm message's",
		prepare: func(t *testing.T) (*mautrix.DeviceKeys, id.SenderKey, id.Ed25519) {
			keys, acc := deviceKeys(t, sender, device)
			return viaJSON(t, keys), acc.IdentityKey(), crypto.NewOlmAccount().SigningKey()
		},
		wantErr: keybundle.ErrDeviceKeysMismatch,
	}, {
		name: "curve25519 key differs from the Olm session's",
		prepare: func(t *testing.T) (*mautrix.DeviceKeys, id.SenderKey, id.Ed25519) {
			keys, acc := deviceKeys(t, sender, device)
			return viaJSON(t, keys), crypto.NewOlmAccount().IdentityKey(), acc.SigningKey()
		},
		wantErr: keybundle.ErrDeviceKeysMismatch,
	}, {
		name: "keys listed under another device ID",
		prepare: func(t *testing.T) (*mautrix.DeviceKeys, id.SenderKey, id.Ed25519) {
			keys, acc := deviceKeys(t, sender, device)
			keys.DeviceID = "OTHERDEVICE"
			return viaJSON(t, keys), acc.IdentityKey(), acc.SigningKey()
		},
		wantErr: keybundle.ErrDeviceKeysMismatch,
	}, {
		name: "empty device ID",
		prepare: func(t *testing.T) (*mautrix.DeviceKeys, id.SenderKey, id.Ed25519) {
			keys, acc := deviceKeys(t, sender, "")
			return viaJSON(t, keys), acc.IdentityKey(), acc.SigningKey()
		},
		wantErr: keybundle.ErrDeviceKeysMismatch,
	}, {
		name: "field changed after signing",
		prepare: func(t *testing.T) (*mautrix.DeviceKeys, id.SenderKey, id.Ed25519) {
			keys, acc := deviceKeys(t, sender, device)
			keys.Algorithms = []id.Algorithm{id.AlgorithmOlmV1}
			return viaJSON(t, keys), acc.IdentityKey(), acc.SigningKey()
		},
		wantErr: keybundle.ErrDeviceKeysBadSignature,
	}, {
		name: "field added after signing",
		prepare: func(t *testing.T) (*mautrix.DeviceKeys, id.SenderKey, id.Ed25519) {
			keys, acc := deviceKeys(t, sender, device)
			keys.Dehydrated = true
			return viaJSON(t, keys), acc.IdentityKey(), acc.SigningKey()
		},
		wantErr: keybundle.ErrDeviceKeysBadSignature,
	}, {
		name: "signed by another device",
		prepare: func(t *testing.T) (*mautrix.DeviceKeys, id.SenderKey, id.Ed25519) {
			keys, acc := deviceKeys(t, sender, device)
			sign(t, crypto.NewOlmAccount(), keys)
			return viaJSON(t, keys), acc.IdentityKey(), acc.SigningKey()
		},
		wantErr: keybundle.ErrDeviceKeysBadSignature,
	}, {
		name: "signature missing",
		prepare: func(t *testing.T) (*mautrix.DeviceKeys, id.SenderKey, id.Ed25519) {
			keys, acc := deviceKeys(t, sender, device)
			keys.Signatures = nil
			return viaJSON(t, keys), acc.IdentityKey(), acc.SigningKey()
		},
		wantErr: keybundle.ErrDeviceKeysBadSignature,
	}, {
		name: "signature not base64",
		prepare: func(t *testing.T) (*mautrix.DeviceKeys, id.SenderKey, id.Ed25519) {
			keys, acc := deviceKeys(t, sender, device)
			keys.Signatures[sender][id.NewKeyID(id.KeyAlgorithmEd25519, device.String())] = "!!!"
			return viaJSON(t, keys), acc.IdentityKey(), acc.SigningKey()
		},
		wantErr: keybundle.ErrDeviceKeysBadSignature,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			keys, senderKey, claimed := tc.prepare(t)
			err := keybundle.ValidateSenderDeviceKeys(sender, senderKey, claimed, keys)
			if tc.wantErr == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tc.wantErr)
		})
	}
}

// Only the join that replaced the very invite recorded accepts it: not a join that replaced a
// later invite (another invite followed), a leave (the invite was rescinded) or a knock.
func TestJoinReplaced(t *testing.T) {
	const invite id.EventID = "$invite"
	for _, tc := range []struct {
		name string
		join keybundle.JoinInfo
		want keybundle.Replaced
	}{
		{"replaced the invite", keybundle.JoinInfo{ReplacesState: invite, PrevMembership: event.MembershipInvite}, keybundle.ReplacedInvite},
		{"replaced the invite, previous membership not given", keybundle.JoinInfo{ReplacesState: invite}, keybundle.ReplacedInvite},
		{"replaced another invite that followed", keybundle.JoinInfo{ReplacesState: "$a-later-invite", PrevMembership: event.MembershipInvite}, keybundle.ReplacedOther},
		{"replaced another invite, previous membership not given", keybundle.JoinInfo{ReplacesState: "$a-later-invite"}, keybundle.ReplacedOther},
		{"replaced a leave that rescinded the invite", keybundle.JoinInfo{ReplacesState: "$rescind", PrevMembership: event.MembershipLeave}, keybundle.ReplacedOther},
		{"names the invite, but as a leave", keybundle.JoinInfo{ReplacesState: invite, PrevMembership: event.MembershipLeave}, keybundle.ReplacedOther},
		{"names the invite, but as a knock", keybundle.JoinInfo{ReplacesState: invite, PrevMembership: event.MembershipKnock}, keybundle.ReplacedOther},
		{"says nothing of what it replaced", keybundle.JoinInfo{PrevMembership: event.MembershipInvite}, keybundle.ReplacedUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, keybundle.JoinReplaced(invite, tc.join))
		})
	}
	require.Equal(t, keybundle.ReplacedOther, keybundle.JoinReplaced("", keybundle.JoinInfo{ReplacesState: invite}),
		"no recorded invite: a join accepts nothing")
}
