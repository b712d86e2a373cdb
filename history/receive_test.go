package history

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
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
	return deviceSender(t, user, "SENDERDEVICE", crypto.NewOlmAccount())
}

// deviceSender is the device's account sending bundles.
func deviceSender(t *testing.T, user id.UserID, deviceID id.DeviceID, account *crypto.OlmAccount) *bundleSender {
	t.Helper()
	keys := &mautrix.DeviceKeys{UserID: user, DeviceID: deviceID,
		Algorithms: []id.Algorithm{id.AlgorithmMegolmV1, id.AlgorithmOlmV1},
		Keys: mautrix.KeyMap{
			id.NewDeviceKeyID(id.KeyAlgorithmCurve25519, deviceID): string(account.IdentityKey()),
			id.NewDeviceKeyID(id.KeyAlgorithmEd25519, deviceID):    string(account.SigningKey()),
		}}
	sig, err := account.SignJSON(keys)
	require.NoError(t, err)
	keys.Signatures = signatures.NewSingleSignature(user, id.KeyAlgorithmEd25519, deviceID.String(), sig)
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

// receiveRoom is a provisioned puppet invited to benchRoom by alice, an Element user whose phone
// her cross-signing identity signs, on the room's homeserver; her bundles are encrypted files on
// it, offered over Olm (sent arrives as the Olm machine hands them over).
type receiveRoom struct {
	env    *benchEnv
	hs     *deliveryHomeserver
	dst    *e2ee.Puppet
	alice  *crossSigner
	sender *bundleSender
	source *e2ee.Puppet // holds the sessions alice's bundles carry
}

const alice id.UserID = "@alice:localhost"

func newReceiveRoom(t *testing.T, dbCfg config.Database) *receiveRoom {
	t.Helper()
	hs := newDeliveryHomeserver(t)
	env := newBenchEnvAt(t, dbCfg, hs.URL)
	r := &receiveRoom{env: env, hs: hs, alice: newCrossSigner(t, alice)}
	r.alice.addDevice("PHONE", true)
	hs.publish(t, r.alice, true)
	r.sender = deviceSender(t, alice, "PHONE", r.alice.devices["PHONE"])
	r.dst = provisioned(t, env, "dst")
	r.source = env.puppet(t, "source")
	sharedRoom(t, env, hs, event.HistoryVisibilityShared, alice)
	return r
}

// invited has inviter invite the puppet, as the transaction stream reports it.
func (r *receiveRoom) invited(t *testing.T, inviter id.UserID) {
	t.Helper()
	r.hs.do(func(hs *deliveryHomeserver) { hs.setMembership(r.dst.UserID, inviter, event.MembershipInvite) })
	r.env.svc.TrackMembership(context.Background(), inviteMember(t, r.hs, r.dst.UserID))
}

// offer seals a bundle of n fresh sessions of the room (9 in 10 shared), puts it on the
// homeserver and returns the m.room_key_bundle naming it.
func (r *receiveRoom) offer(t *testing.T, n int) *e2ee.BundleContent {
	t.Helper()
	_, err := r.env.db.Raw.Exec(context.Background(), `DELETE FROM crypto_megolm_inbound_session WHERE account_id=$1`, r.source.UserID)
	require.NoError(t, err)
	fillSessions(t, r.env, r.source, n)
	sealed, err := keybundle.Seal(r.env.dir, 1<<20, func(w io.Writer) (keybundle.Counts, error) {
		return r.env.svc.writeBundle(context.Background(), r.source, benchRoom, w)
	})
	require.NoError(t, err)
	defer sealed.Close()
	body, err := io.ReadAll(sealed.File)
	require.NoError(t, err)
	var mediaID string
	r.hs.do(func(hs *deliveryHomeserver) {
		mediaID = fmt.Sprintf("bundle%d", len(hs.media))
		hs.media[mediaID] = body
	})
	sealed.Info.URL = id.ContentURIString("mxc://localhost/" + mediaID)
	return &e2ee.BundleContent{RoomKeyBundleEventContent: event.RoomKeyBundleEventContent{RoomID: benchRoom, File: *sealed.Info},
		Type: event.ToDeviceRoomKeyBundle}
}

// arrive hands the puppet a bundle from the sender, as its Olm machine does.
func (r *receiveRoom) arrive(s *bundleSender, content *e2ee.BundleContent) {
	r.env.svc.ReceiveBundle(context.Background(), r.dst, s.envelope(s.keys), content)
}

func (r *receiveRoom) stored(t *testing.T, sender id.UserID) *database.ReceivedBundle {
	t.Helper()
	b, err := r.env.db.GetReceivedBundle(context.Background(), r.dst.UserID, benchRoom, sender)
	require.NoError(t, err)
	return b
}

// What becomes of a bundle that waited for the join, rule by rule: it is imported only from the
// inviter's signed device, within the window, whole; otherwise it is refused, and the join's
// report and GET …/bundles say why, with nothing of it stored.
func TestReceivedBundleAtTheJoin(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, r *receiveRoom, content *e2ee.BundleContent) *bundleSender
		state   string
		error   string
		history string
	}{
		{name: "from the inviter", state: database.ReceivedImported, history: "imported 18 keys shared by @alice:localhost",
			prepare: func(t *testing.T, r *receiveRoom, _ *e2ee.BundleContent) *bundleSender { return r.sender }},
		{name: "accepted after the window", state: database.ReceivedExpired, error: "invite accepted more than",
			prepare: func(t *testing.T, r *receiveRoom, _ *e2ee.BundleContent) *bundleSender {
				r.env.svc.cfg.HistorySharing.AcceptWindow = time.Nanosecond
				return r.sender
			}},
		{name: "whose file does not hash to what the message says", state: database.ReceivedFailed, error: errHashMismatch.Error(),
			prepare: func(t *testing.T, r *receiveRoom, content *e2ee.BundleContent) *bundleSender {
				other := sha256.Sum256([]byte("another file"))
				content.File.Hashes.SHA256 = base64.RawStdEncoding.EncodeToString(other[:])
				return r.sender
			}},
		{name: "whose media is gone", state: database.ReceivedExpired, error: "media is gone",
			prepare: func(t *testing.T, r *receiveRoom, _ *e2ee.BundleContent) *bundleSender {
				r.hs.do(func(hs *deliveryHomeserver) { clear(hs.media) })
				return r.sender
			}},
		{name: "over history_sharing.max_bundle_size", state: database.ReceivedFailed, error: keybundle.ErrBundleTooLarge.Error(),
			prepare: func(t *testing.T, r *receiveRoom, _ *e2ee.BundleContent) *bundleSender {
				r.env.svc.cfg.HistorySharing.MaxBundleSize = 1024
				return r.sender
			}},
		{name: "from a device its owner never signed", state: database.ReceivedRejected, error: "not cross-signed",
			prepare: func(t *testing.T, r *receiveRoom, _ *e2ee.BundleContent) *bundleSender {
				r.alice.addDevice("LAPTOP", false)
				r.hs.publish(t, r.alice, true)
				return deviceSender(t, alice, "LAPTOP", r.alice.devices["LAPTOP"])
			}},
		{name: "from a sender whose identity changed", state: database.ReceivedRejected, error: "cross-signing identity changed",
			prepare: func(t *testing.T, r *receiveRoom, _ *e2ee.BundleContent) *bundleSender {
				_, err := r.dst.FetchDevices(ctx, []id.UserID{alice}) // heirloom first sees her identity
				require.NoError(t, err)
				r.alice.resetIdentity(t)
				r.hs.publish(t, r.alice, true)
				return r.sender
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newReceiveRoom(t, testdb.SQLite(t))
			r.invited(t, alice)
			content := r.offer(t, 20)
			r.arrive(tc.prepare(t, r, content), content)
			require.Equal(t, database.ReceivedPending, r.stored(t, alice).State, "it waits for the join")
			res, err := r.env.svc.Join(ctx, r.dst, benchRoom)
			require.NoError(t, err)
			require.NotNil(t, res.Bundle)
			require.Equal(t, tc.state, res.Bundle.State, res.Bundle.Error)
			require.Contains(t, res.Bundle.Error, tc.error)
			require.Contains(t, res.History, tc.history)
			listed, err := r.env.svc.Bundles(ctx, r.dst.UserID)
			require.NoError(t, err)
			require.Equal(t, []*ReceivedReport{res.Bundle}, listed.Received)
			if tc.state != database.ReceivedImported {
				require.Zero(t, heldSessionCount(t, r.env, r.dst), "nothing of the bundle is stored")
				require.Zero(t, res.Bundle.Imported)
			} else {
				require.Equal(t, 18, heldSessionCount(t, r.env, r.dst)-2, "18 keys and 2 withheld entries")
			}
		})
	}
}

// A bundle from anyone but the inviter is refused once the puppet joins from the invite; the
// inviter's own bundle is imported.
func TestBundleFromSomeoneElseThanTheInviterIsRefused(t *testing.T) {
	ctx := context.Background()
	r := newReceiveRoom(t, testdb.SQLite(t))
	mallory := newCrossSigner(t, "@mallory:localhost")
	mallory.addDevice("PHONE", true)
	r.hs.publish(t, mallory, true)
	r.invited(t, alice)
	r.arrive(deviceSender(t, mallory.user, "PHONE", mallory.devices["PHONE"]), r.offer(t, 5))
	r.arrive(r.sender, r.offer(t, 20))
	res, err := r.env.svc.Join(ctx, r.dst, benchRoom)
	require.NoError(t, err)
	require.Equal(t, database.ReceivedImported, res.Bundle.State)
	require.Equal(t, alice, res.Bundle.Sender)
	refused := r.stored(t, mallory.user)
	require.Equal(t, database.ReceivedRejected, refused.State)
	require.Contains(t, refused.Error, "is not the inviter @alice:localhost")
	room, err := r.env.svc.RoomBundles(ctx, benchRoom)
	require.NoError(t, err)
	require.Len(t, room.Received, 2, "the room's report lists both")
}

// A bundle that arrives after the join from the sender's invite is imported on arrival; a second
// one from the same sender for the same join is dropped, and the first import stands.
func TestBundleArrivingAfterTheJoinIsImportedOnce(t *testing.T) {
	ctx := context.Background()
	r := newReceiveRoom(t, testdb.SQLite(t))
	r.invited(t, alice)
	res, err := r.env.svc.Join(ctx, r.dst, benchRoom)
	require.NoError(t, err)
	require.Nil(t, res.Bundle)
	require.Contains(t, res.History, "no key bundle from @alice:localhost (yet)")
	r.arrive(r.sender, r.offer(t, 20))
	waitForBackground(t, r.env.svc)
	first := r.stored(t, alice)
	require.Equal(t, database.ReceivedImported, first.State, first.Error)
	require.Equal(t, 18, first.Imported)

	r.arrive(r.sender, r.offer(t, 10))
	again := r.stored(t, alice)
	require.Equal(t, first.Imported, again.Imported, "the second bundle was dropped")
	require.Equal(t, first.UpdatedAt, again.UpdatedAt)
}

// A bundle the puppet could never use is dropped on arrival, and nothing is stored: one for a user
// heirloom does not manage, one naming no valid room or no file, one whose file is not of the
// version MSC4268 uses.
func TestUnusableBundlesAreDroppedOnArrival(t *testing.T) {
	ctx := context.Background()
	r := newReceiveRoom(t, testdb.SQLite(t))
	stranger, err := r.env.mgr.LocalPuppet(ctx, "@stranger:localhost", "STRANGERDEV")
	require.NoError(t, err)
	r.env.svc.ReceiveBundle(ctx, stranger, r.sender.envelope(r.sender.keys), r.offer(t, 5))
	for _, spoil := range []func(c *e2ee.BundleContent){
		func(c *e2ee.BundleContent) { c.RoomID = "not a room" },
		func(c *e2ee.BundleContent) { c.File.URL = "" },
		func(c *e2ee.BundleContent) { c.File.Version = "v1" },
	} {
		content := r.offer(t, 5)
		spoil(content)
		r.arrive(r.sender, content)
	}
	waitForBackground(t, r.env.svc)
	var n int
	require.NoError(t, r.env.db.Raw.QueryRow(ctx, `SELECT COUNT(*) FROM bundle_received`).Scan(&n))
	require.Zero(t, n)
}
