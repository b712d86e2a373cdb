package history

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

// crossSigner is a user's cross-signing identity and devices, as the homeserver's /keys/query
// gives them: each device self-signed, and signed by the self-signing key if it is cross-signed.
type crossSigner struct {
	user                id.UserID
	master, selfSigning olm.PKSigning
	devices             map[id.DeviceID]*crypto.OlmAccount
	crossSigned         map[id.DeviceID]bool
}

func newCrossSigner(t *testing.T, user id.UserID) *crossSigner {
	t.Helper()
	c := &crossSigner{user: user, devices: map[id.DeviceID]*crypto.OlmAccount{}, crossSigned: map[id.DeviceID]bool{}}
	c.resetIdentity(t)
	return c
}

// resetIdentity gives the user a new cross-signing identity (as a user who lost theirs does).
func (c *crossSigner) resetIdentity(t *testing.T) {
	t.Helper()
	var err error
	c.master, err = olm.NewPKSigning()
	require.NoError(t, err)
	c.selfSigning, err = olm.NewPKSigning()
	require.NoError(t, err)
}

func (c *crossSigner) addDevice(deviceID id.DeviceID, crossSigned bool) {
	c.devices[deviceID] = crypto.NewOlmAccount()
	c.crossSigned[deviceID] = crossSigned
}

// oneTimeKeys is one fresh signed one-time key per device, as each device uploads them and the
// homeserver hands them out to /keys/claim.
func (c *crossSigner) oneTimeKeys(t *testing.T) map[id.DeviceID]map[id.KeyID]mautrix.OneTimeKey {
	t.Helper()
	out := map[id.DeviceID]map[id.KeyID]mautrix.OneTimeKey{}
	for deviceID, account := range c.devices {
		require.NoError(t, account.Internal.GenOneTimeKeys(1))
		keys, err := account.Internal.OneTimeKeys()
		require.NoError(t, err)
		account.Internal.MarkKeysAsPublished()
		out[deviceID] = map[id.KeyID]mautrix.OneTimeKey{}
		for keyID, key := range keys {
			otk := mautrix.OneTimeKey{Key: key, IsSigned: true}
			sig, err := account.SignJSON(&otk)
			require.NoError(t, err)
			otk.Signatures = signatures.NewSingleSignature(c.user, id.KeyAlgorithmEd25519, deviceID.String(), sig)
			out[deviceID][id.NewKeyID(id.KeyAlgorithmSignedCurve25519, keyID)] = otk
		}
	}
	return out
}

// open decrypts an Olm to-device message the device received (the first of a new Olm session),
// as the device's client does, and returns its payload.
func (c *crossSigner) open(t *testing.T, deviceID id.DeviceID, content *event.Content) *crypto.DecryptedOlmEvent {
	t.Helper()
	account := c.devices[deviceID]
	require.NoError(t, content.ParseRaw(event.ToDeviceEncrypted))
	encrypted := content.AsEncrypted()
	require.Equal(t, id.AlgorithmOlmV1, encrypted.Algorithm)
	ciphertext, ok := encrypted.OlmCiphertext[account.IdentityKey()]
	require.True(t, ok, "the message is encrypted for the device's identity key")
	require.Equal(t, id.OlmMsgTypePreKey, ciphertext.Type, "a new Olm session starts with a pre-key message")
	session, err := account.Internal.NewInboundSession(ciphertext.Body)
	require.NoError(t, err)
	plaintext, err := session.Decrypt(ciphertext.Body, ciphertext.Type)
	require.NoError(t, err)
	var payload crypto.DecryptedOlmEvent
	require.NoError(t, json.Unmarshal(plaintext, &payload))
	payload.SenderKey = encrypted.SenderKey
	return &payload
}

// query is the homeserver's answer to a /keys/query for the user.
func (c *crossSigner) query(t *testing.T, withIdentity bool) mautrix.RespQueryKeys {
	t.Helper()
	resp := mautrix.RespQueryKeys{DeviceKeys: map[id.UserID]map[id.DeviceID]mautrix.DeviceKeys{c.user: {}}}
	for deviceID, account := range c.devices {
		keys := mautrix.DeviceKeys{UserID: c.user, DeviceID: deviceID, Algorithms: []id.Algorithm{id.AlgorithmMegolmV1, id.AlgorithmOlmV1},
			Keys: mautrix.KeyMap{
				id.NewDeviceKeyID(id.KeyAlgorithmCurve25519, deviceID): string(account.IdentityKey()),
				id.NewDeviceKeyID(id.KeyAlgorithmEd25519, deviceID):    string(account.SigningKey()),
			}}
		sig, err := account.SignJSON(keys)
		require.NoError(t, err)
		keys.Signatures = signatures.NewSingleSignature(c.user, id.KeyAlgorithmEd25519, deviceID.String(), sig)
		if withIdentity && c.crossSigned[deviceID] {
			sig, err = c.selfSigning.SignJSON(keys)
			require.NoError(t, err)
			keys.Signatures[c.user][id.NewKeyID(id.KeyAlgorithmEd25519, c.selfSigning.PublicKey().String())] = sig
		}
		resp.DeviceKeys[c.user][deviceID] = keys
	}
	if !withIdentity {
		return resp
	}
	mk, ssk := c.master.PublicKey(), c.selfSigning.PublicKey()
	master := mautrix.CrossSigningKeys{UserID: c.user, Usage: []id.CrossSigningUsage{id.XSUsageMaster},
		Keys: map[id.KeyID]id.Ed25519{id.NewKeyID(id.KeyAlgorithmEd25519, mk.String()): mk}}
	selfSigning := mautrix.CrossSigningKeys{UserID: c.user, Usage: []id.CrossSigningUsage{id.XSUsageSelfSigning},
		Keys: map[id.KeyID]id.Ed25519{id.NewKeyID(id.KeyAlgorithmEd25519, ssk.String()): ssk}}
	sig, err := c.master.SignJSON(selfSigning)
	require.NoError(t, err)
	selfSigning.Signatures = signatures.NewSingleSignature(c.user, id.KeyAlgorithmEd25519, mk.String(), sig)
	resp.MasterKeys = map[id.UserID]mautrix.CrossSigningKeys{c.user: master}
	resp.SelfSigningKeys = map[id.UserID]mautrix.CrossSigningKeys{c.user: selfSigning}
	return resp
}

// keyQueryServer answers /keys/query with what answer holds.
type keyQueryServer struct {
	*httptest.Server
	mu     sync.Mutex
	answer mautrix.RespQueryKeys
}

func newKeyQueryServer(t *testing.T) *keyQueryServer {
	t.Helper()
	ks := &keyQueryServer{}
	ks.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ks.mu.Lock()
		defer ks.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path != "/_matrix/client/v3/keys/query" {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errcode":"M_UNRECOGNIZED","error":"not in this test"}`))
			return
		}
		_ = json.NewEncoder(w).Encode(ks.answer)
	}))
	t.Cleanup(ks.Close)
	return ks
}

func (ks *keyQueryServer) set(answer mautrix.RespQueryKeys) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.answer = answer
}

// A bundle goes only to the invitee's devices that the invitee's cross-signing identity signs,
// and only while that identity is the one heirloom first saw: after a reset, nobody gets one, and
// the reason says why (MSC4268's red flag). Without an identity, nobody gets one either.
func TestBundleRecipientsAreTheFirstIdentitysSignedDevices(t *testing.T) {
	env := newBenchEnv(t)
	ks := newKeyQueryServer(t)
	p := pointPuppetAt(t, env, ks.URL)
	ctx := context.Background()
	bob := newCrossSigner(t, "@bob:localhost")
	bob.addDevice("PHONE", true)
	bob.addDevice("LAPTOP", false)

	ks.set(bob.query(t, true))
	targets, reason, err := env.svc.recipients(ctx, p, bob.user)
	require.NoError(t, err)
	require.Empty(t, reason)
	require.ElementsMatch(t, []database.Delivery{
		{UserID: bob.user, DeviceID: "PHONE"},
		{UserID: bob.user, DeviceID: "LAPTOP", Reason: ReasonNotCrossSigned},
	}, targets, "only the cross-signed device may get the bundle")

	// A new identity, signing the phone again: heirloom first saw another one.
	bob.resetIdentity(t)
	ks.set(bob.query(t, true))
	targets, reason, err = env.svc.recipients(ctx, p, bob.user)
	require.NoError(t, err)
	require.Equal(t, ReasonIdentityChanged, reason)
	require.Empty(t, targets)

	// An identity that signs none of the user's devices: nobody.
	dave := newCrossSigner(t, "@dave:localhost")
	dave.addDevice("PHONE", false)
	ks.set(dave.query(t, true))
	targets, reason, err = env.svc.recipients(ctx, p, dave.user)
	require.NoError(t, err)
	require.Equal(t, ReasonNoDevices, reason)
	require.Equal(t, []database.Delivery{{UserID: dave.user, DeviceID: "PHONE", Reason: ReasonNotCrossSigned}}, targets)

	// A user without cross-signing.
	carol := newCrossSigner(t, "@carol:localhost")
	carol.addDevice("PHONE", true)
	ks.set(carol.query(t, false))
	_, reason, err = env.svc.recipients(ctx, p, carol.user)
	require.NoError(t, err)
	require.Equal(t, ReasonNoCrossSigning, reason)
}
