package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/synapseadmin"

	"github.com/heirloom-matrix/heirloom/e2ee"
)

// attacker is a member turned hostile: a real Synapse user with a real device, written in Go. Its
// device is mautrix's Olm machine (goolm) for what an honest client does (publishing its keys,
// decrypting the room keys other members send it, sending Olm messages under its own keys), and
// goolm directly for what no honest client sends: an Olm payload whose claimed signing key is not
// its device's. js-sdk's Rust crypto can do neither of the hostile things: it neither hands out a
// room key as its creator signed it, nor lets its caller choose the claimed keys.
type attacker struct {
	UserID   id.UserID
	DeviceID id.DeviceID
	cli      *mautrix.Client
	mach     *crypto.OlmMachine
	since    string
	// keys are the m.room_key contents other members' devices sent it, by session: each session
	// key as its creator signed it, which a replay needs.
	keys map[id.SessionID]*e2ee.RoomKeyContent
}

// newAttacker registers a user with a device, and publishes the device's keys.
func newAttacker(t *testing.T) *attacker {
	t.Helper()
	ctx := context.Background()
	base, err := url.Parse(e.hsURL)
	if err != nil {
		t.Fatal(err)
	}
	admin := synapseadmin.Client{Client: &mautrix.Client{HomeserverURL: base, Client: http.DefaultClient}}
	resp, err := admin.SharedSecretRegister(ctx, sharedSecret, synapseadmin.ReqSharedSecretRegister{
		Username: name("mallory_"), Password: "mallory-password-0123456789"})
	if err != nil {
		t.Fatalf("registering the attacker: %v", err)
	}
	cli, err := mautrix.NewClient(e.hsURL, resp.UserID, resp.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	cli.DeviceID, cli.Client = resp.DeviceID, http.DefaultClient
	log := zerolog.Nop()
	states := mautrix.NewMemoryStateStore().(*mautrix.MemoryStateStore)
	a := &attacker{UserID: resp.UserID, DeviceID: resp.DeviceID, cli: cli,
		mach: crypto.NewOlmMachine(cli, &log, crypto.NewMemoryStore(nil), states), keys: map[id.SessionID]*e2ee.RoomKeyContent{}}
	if err = a.mach.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if err = a.mach.ShareKeys(ctx, -1); err != nil {
		t.Fatalf("publishing the attacker's device keys: %v", err)
	}
	return a
}

func (a *attacker) join(t *testing.T, roomID string) {
	t.Helper()
	if _, err := a.cli.JoinRoomByID(context.Background(), id.RoomID(roomID)); err != nil {
		t.Fatalf("%s joining %s: %v", a.UserID, roomID, err)
	}
}

func (a *attacker) leave(t *testing.T, roomID string) {
	t.Helper()
	if _, err := a.cli.LeaveRoom(context.Background(), id.RoomID(roomID)); err != nil {
		t.Fatalf("%s leaving %s: %v", a.UserID, roomID, err)
	}
}

// waitRoomKey syncs the device's to-device inbox until a room key of the room has arrived, and
// returns it (as its creator's device sent it).
func (a *attacker) waitRoomKey(t *testing.T, roomID string) *e2ee.RoomKeyContent {
	t.Helper()
	ctx := context.Background()
	var found *e2ee.RoomKeyContent
	eventually(t, 60*time.Second, "the attacker's device to receive a room key of "+roomID, func() (bool, string) {
		resp, err := a.cli.SyncRequest(ctx, 1000, a.since, `{"room":{"rooms":[]}}`, false, event.PresenceOffline)
		if err != nil {
			return false, err.Error()
		}
		a.since = resp.NextBatch
		for _, evt := range resp.ToDevice.Events {
			evt.Type.Class = event.ToDeviceEventType
			if evt.Type != event.ToDeviceEncrypted {
				continue
			}
			if err = evt.Content.ParseRaw(evt.Type); err != nil && !errors.Is(err, event.ErrContentAlreadyParsed) {
				continue
			}
			if decrypted := a.mach.HandleEncryptedEvent(ctx, evt); decrypted != nil {
				if key, ok := decrypted.Content.Parsed.(*e2ee.RoomKeyContent); ok {
					a.keys[key.SessionID] = key
				}
			}
		}
		for _, key := range a.keys {
			if key.RoomID == id.RoomID(roomID) {
				found = key
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d room keys so far, none of the room", len(a.keys))
	})
	return found
}

// sendRoomKey sends the device an m.room_key over Olm from the attacker's own device: its own
// keys, its sender_device_keys, whatever content it likes (a replay names any room).
func (a *attacker) sendRoomKey(t *testing.T, target puppetIdentity, content map[string]any) {
	t.Helper()
	ctx := context.Background()
	req := &mautrix.ReqSendToDevice{Messages: map[id.UserID]map[id.DeviceID]*event.Content{
		id.UserID(target.UserID): {id.DeviceID(target.DeviceID): {Raw: content}}}}
	encrypted, err := a.mach.EncryptToDevices(ctx, event.ToDeviceRoomKey, req)
	if err != nil {
		t.Fatalf("encrypting the room key: %v", err)
	}
	if _, err = a.cli.SendToDevice(ctx, event.ToDeviceEncrypted, encrypted); err != nil {
		t.Fatalf("sending the room key: %v", err)
	}
}

// sendForgedRoomKey sends the device an m.room_key over Olm whose payload claims claimedEd25519
// as the sender's signing key: from a second Olm account of the attacker's, whose keys no device
// publishes, and with no sender_device_keys, so that nothing the receiver knows contradicts it.
func (a *attacker) sendForgedRoomKey(t *testing.T, target puppetIdentity, claimedEd25519 string, content map[string]any) {
	t.Helper()
	ctx := context.Background()
	user, device := id.UserID(target.UserID), id.DeviceID(target.DeviceID)
	otk := a.claimOneTimeKey(t, user, device)
	account := crypto.NewOlmAccount()
	session, err := account.Internal.NewOutboundSession(id.Curve25519(target.Curve25519), otk)
	if err != nil {
		t.Fatal(err)
	}
	plaintext, err := json.Marshal(map[string]any{
		"sender": a.UserID, "recipient": target.UserID, "recipient_keys": map[string]string{"ed25519": target.Ed25519},
		"keys": map[string]string{"ed25519": claimedEd25519}, "type": event.ToDeviceRoomKey.Type, "content": content,
	})
	if err != nil {
		t.Fatal(err)
	}
	msgType, ciphertext, err := session.Encrypt(plaintext)
	if err != nil {
		t.Fatal(err)
	}
	encrypted := &event.EncryptedEventContent{Algorithm: id.AlgorithmOlmV1, SenderKey: account.IdentityKey(),
		OlmCiphertext: event.OlmCiphertexts{id.Curve25519(target.Curve25519): {Type: msgType, Body: string(ciphertext)}}}
	_, err = a.cli.SendToDevice(ctx, event.ToDeviceEncrypted, &mautrix.ReqSendToDevice{Messages: map[id.UserID]map[id.DeviceID]*event.Content{
		user: {device: {Parsed: encrypted}}}})
	if err != nil {
		t.Fatalf("sending the forged room key: %v", err)
	}
}

// claimOneTimeKey claims a one-time key of the device, as the attacker.
func (a *attacker) claimOneTimeKey(t *testing.T, user id.UserID, device id.DeviceID) id.Curve25519 {
	t.Helper()
	return a.claimKey(t, user, device).Key
}

// claimKey claims a key of the device as /keys/claim hands it out: a one-time key, or the
// device's fallback key once none is left.
func (a *attacker) claimKey(t *testing.T, user id.UserID, device id.DeviceID) mautrix.OneTimeKey {
	t.Helper()
	claimed, err := a.cli.ClaimKeys(context.Background(), &mautrix.ReqClaimKeys{OneTimeKeys: mautrix.OneTimeKeysRequest{
		user: {device: id.KeyAlgorithmSignedCurve25519}}})
	if err != nil {
		t.Fatalf("claiming a one-time key of %s's device %s: %v", user, device, err)
	}
	for _, key := range claimed.OneTimeKeys[user][device] {
		return key
	}
	t.Fatalf("%s's device %s has no one-time key: %+v", user, device, claimed)
	return mautrix.OneTimeKey{}
}

// exportedJunkSession is a fresh megolm session nobody sends with: its ID and its export from
// index 0, for a bundle entry that names it.
func exportedJunkSession(t *testing.T) (id.SessionID, []byte) {
	t.Helper()
	junk, err := olm.NewOutboundGroupSession()
	if err != nil {
		t.Fatal(err)
	}
	in, err := olm.NewInboundGroupSession([]byte(junk.Key()))
	if err != nil {
		t.Fatal(err)
	}
	exported, err := in.Export(0)
	if err != nil {
		t.Fatal(err)
	}
	return junk.ID(), exported
}
