package e2ee_test

import (
	"encoding/base64"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/e2ee/cryptostore"
)

const (
	testRoom    id.RoomID     = "!room:example.org"
	aliceKey    id.SenderKey  = "aliceCurve"
	aliceSign   id.Ed25519    = "aliceEd"
	malloryKey  id.SenderKey  = "malloryCurve"
	mallorySign id.Ed25519    = "malloryEd"
	inviter     id.UserID     = "@inviter:example.org"
	alice       id.UserID     = "@alice:example.org"
	sessionAge  time.Duration = time.Hour
)

// ratchet is one megolm session as its creator holds it.
type ratchet struct {
	out olm.OutboundGroupSession
	key string // the creator's signed session key, at index 0
}

func newRatchet(t *testing.T) *ratchet {
	t.Helper()
	out, err := olm.NewOutboundGroupSession()
	require.NoError(t, err)
	return &ratchet{out: out, key: out.Key()}
}

// direct is the copy an m.room_key from the creator's device gives, at the ratchet's index now.
func (r *ratchet) direct(t *testing.T, sender id.SenderKey, signing id.Ed25519, shared bool, advance int) *crypto.InboundGroupSession {
	t.Helper()
	for range advance {
		_, err := r.out.Encrypt([]byte("x"))
		require.NoError(t, err)
	}
	igs, err := crypto.NewInboundGroupSession(sender, signing, testRoom, r.out.Key(), sessionAge, 100, &shared, false)
	require.NoError(t, err)
	igs.SourceUser = alice
	igs.ReceivedAt = time.Unix(2000, 0)
	return igs
}

// imported is the copy a bundle gives: the session exported at index, on the inviter's word.
func (r *ratchet) imported(t *testing.T, index uint32, sender id.SenderKey, signing id.Ed25519, shared bool) *crypto.InboundGroupSession {
	t.Helper()
	full, err := crypto.NewInboundGroupSession(sender, signing, testRoom, r.key, sessionAge, 100, &shared, false)
	require.NoError(t, err)
	exported, err := full.Internal.Export(index)
	require.NoError(t, err)
	return importedFrom(t, string(exported), sender, signing, shared)
}

func importedFrom(t *testing.T, exported string, sender id.SenderKey, signing id.Ed25519, shared bool) *crypto.InboundGroupSession {
	t.Helper()
	internal, err := olm.InboundGroupSessionImport([]byte(exported))
	require.NoError(t, err)
	return &crypto.InboundGroupSession{
		Internal: internal, SenderKey: sender, SigningKey: signing, RoomID: testRoom,
		ForwardingChains: []string{"inviterCurve"}, SharedHistory: &shared, KeySource: id.KeySourceForward,
		SourceUser: inviter, MaxAge: (7 * 24 * time.Hour).Milliseconds(), MaxMessages: 100, ReceivedAt: time.Unix(1000, 0),
	}
}

// forged is a copy with the ratchet's public key (so its session ID) and another ratchet.
func (r *ratchet) forged(t *testing.T, index uint32) *crypto.InboundGroupSession {
	t.Helper()
	genuine := r.imported(t, index, aliceKey, aliceSign, true)
	exported, err := genuine.Internal.Export(index)
	require.NoError(t, err)
	raw, err := base64.RawStdEncoding.DecodeString(string(exported))
	require.NoError(t, err)
	for i := 5; i < 5+128; i++ { // version (1) and index (4), then the ratchet
		raw[i] ^= 0x5a
	}
	return importedFrom(t, base64.RawStdEncoding.EncodeToString(raw), aliceKey, aliceSign, true)
}

// outcome is what a merge must leave in the store, field by field.
type outcome struct {
	replaced   bool // false: the held row stays as it is (reason set)
	reason     string
	index      uint32
	shared     bool
	source     id.KeySource
	sourceUser id.UserID
	senderKey  id.SenderKey
	maxAge     int64
}

func TestMergeSessions(t *testing.T) {
	direct := id.KeySourceDirect
	forward := id.KeySourceForward
	for _, tc := range []struct {
		name     string
		build    func(t *testing.T, r *ratchet) (held, incoming *crypto.InboundGroupSession)
		want     outcome
		explains string
	}{{
		name: "honest earlier-index bundle copy into a direct key: index and provenance of the bundle",
		build: func(t *testing.T, r *ratchet) (*crypto.InboundGroupSession, *crypto.InboundGroupSession) {
			held := r.direct(t, aliceKey, aliceSign, true, 5)
			return held, r.imported(t, 0, aliceKey, aliceSign, true)
		},
		want:     outcome{replaced: true, index: 0, shared: true, source: forward, sourceUser: inviter, senderKey: aliceKey, maxAge: sessionAge.Milliseconds()},
		explains: "messages 0-4 rest on the inviter's word: keys_shared_by must name them; limits stay the sender's",
	}, {
		name: "bundle copy at a later index than the direct key: nothing changes",
		build: func(t *testing.T, r *ratchet) (*crypto.InboundGroupSession, *crypto.InboundGroupSession) {
			held := r.direct(t, aliceKey, aliceSign, true, 0)
			return held, r.imported(t, 3, aliceKey, aliceSign, true)
		},
		want: outcome{reason: e2ee.ReasonHeldNoBetter},
	}, {
		name: "bundle copy at the same index: the direct provenance stays",
		build: func(t *testing.T, r *ratchet) (*crypto.InboundGroupSession, *crypto.InboundGroupSession) {
			held := r.direct(t, aliceKey, aliceSign, true, 0)
			return held, r.imported(t, 0, aliceKey, aliceSign, true)
		},
		want: outcome{reason: e2ee.ReasonHeldNoBetter},
	}, {
		name: "earlier bundle copy cannot make a non-shareable session shareable",
		build: func(t *testing.T, r *ratchet) (*crypto.InboundGroupSession, *crypto.InboundGroupSession) {
			held := r.direct(t, aliceKey, aliceSign, false, 5)
			return held, r.imported(t, 0, aliceKey, aliceSign, true)
		},
		want:     outcome{replaced: true, index: 0, shared: false, source: forward, sourceUser: inviter, senderKey: aliceKey, maxAge: sessionAge.Milliseconds()},
		explains: "an inviter holding a session at index 0 must not turn the puppet's copy shareable",
	}, {
		name: "direct key after a bundle copy, later index: the bundle's index, the sender's word on the rest",
		build: func(t *testing.T, r *ratchet) (*crypto.InboundGroupSession, *crypto.InboundGroupSession) {
			held := r.imported(t, 0, aliceKey, aliceSign, true)
			return held, r.direct(t, aliceKey, aliceSign, true, 4)
		},
		want: outcome{replaced: true, index: 0, shared: true, source: forward, sourceUser: inviter, senderKey: aliceKey, maxAge: sessionAge.Milliseconds()},
	}, {
		name: "direct key saying not shared after a shared bundle copy: not shared from now on",
		build: func(t *testing.T, r *ratchet) (*crypto.InboundGroupSession, *crypto.InboundGroupSession) {
			held := r.imported(t, 0, aliceKey, aliceSign, true)
			return held, r.direct(t, aliceKey, aliceSign, false, 0)
		},
		want: outcome{replaced: true, index: 0, shared: false, source: direct, sourceUser: alice, senderKey: aliceKey, maxAge: sessionAge.Milliseconds()},
	}, {
		name: "bundle copy claiming another sender than the bundle copy held: refused",
		build: func(t *testing.T, r *ratchet) (*crypto.InboundGroupSession, *crypto.InboundGroupSession) {
			held := r.imported(t, 2, aliceKey, aliceSign, true)
			return held, r.imported(t, 0, malloryKey, mallorySign, true)
		},
		want: outcome{reason: e2ee.ReasonOtherSender},
	}, {
		name: "bundle copy relabelling the sender of a direct key, at an earlier index: refused",
		build: func(t *testing.T, r *ratchet) (*crypto.InboundGroupSession, *crypto.InboundGroupSession) {
			held := r.direct(t, aliceKey, aliceSign, true, 3)
			return held, r.imported(t, 0, malloryKey, mallorySign, true)
		},
		want:     outcome{reason: e2ee.ReasonOtherSender},
		explains: "the held claims and provenance stay whenever the claims differ",
	}, {
		name: "a member relaying an imported session as his own room key: refused",
		build: func(t *testing.T, r *ratchet) (*crypto.InboundGroupSession, *crypto.InboundGroupSession) {
			held := r.imported(t, 0, aliceKey, aliceSign, true)
			return held, r.direct(t, malloryKey, mallorySign, true, 0)
		},
		want:     outcome{reason: e2ee.ReasonOtherSender},
		explains: "Olm authenticates the relayer, not the creator: he must not become the sender, nor erase keys_shared_by",
	}, {
		name: "a member relaying an imported session at an earlier index: refused",
		build: func(t *testing.T, r *ratchet) (*crypto.InboundGroupSession, *crypto.InboundGroupSession) {
			held := r.imported(t, 3, aliceKey, aliceSign, true)
			return held, r.direct(t, malloryKey, mallorySign, true, 0)
		},
		want: outcome{reason: e2ee.ReasonOtherSender},
	}, {
		name: "a member relaying an imported session, saying not shared: not shared, the held claims stay",
		build: func(t *testing.T, r *ratchet) (*crypto.InboundGroupSession, *crypto.InboundGroupSession) {
			held := r.imported(t, 0, aliceKey, aliceSign, true)
			return held, r.direct(t, malloryKey, mallorySign, false, 0)
		},
		want: outcome{replaced: true, index: 0, shared: false, source: forward, sourceUser: inviter, senderKey: aliceKey, maxAge: (7 * 24 * time.Hour).Milliseconds()},
	}, {
		name: "direct key replayed by another device: refused",
		build: func(t *testing.T, r *ratchet) (*crypto.InboundGroupSession, *crypto.InboundGroupSession) {
			held := r.direct(t, aliceKey, aliceSign, true, 0)
			return held, r.direct(t, malloryKey, mallorySign, true, 0)
		},
		want: outcome{reason: e2ee.ReasonOtherSender},
	}, {
		name: "forged ratchet in a bundle against a direct key: refused",
		build: func(t *testing.T, r *ratchet) (*crypto.InboundGroupSession, *crypto.InboundGroupSession) {
			held := r.direct(t, aliceKey, aliceSign, true, 5)
			return held, r.forged(t, 0)
		},
		want: outcome{reason: e2ee.ReasonContradicts},
	}, {
		name: "forged ratchet in a bundle against another bundle's copy: refused",
		build: func(t *testing.T, r *ratchet) (*crypto.InboundGroupSession, *crypto.InboundGroupSession) {
			held := r.imported(t, 5, aliceKey, aliceSign, true)
			return held, r.forged(t, 0)
		},
		want: outcome{reason: e2ee.ReasonContradicts},
	}, {
		name: "direct key against a forged bundle copy: the direct key replaces it",
		build: func(t *testing.T, r *ratchet) (*crypto.InboundGroupSession, *crypto.InboundGroupSession) {
			held := r.forged(t, 0)
			return held, r.direct(t, aliceKey, aliceSign, true, 2)
		},
		want: outcome{replaced: true, index: 2, shared: true, source: direct, sourceUser: alice, senderKey: aliceKey, maxAge: sessionAge.Milliseconds()},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			held, incoming := tc.build(t, newRatchet(t))
			heldIndex, heldShared := held.Internal.FirstKnownIndex(), *held.SharedHistory
			got, reason := e2ee.MergeSessions(held, incoming)
			require.Equal(t, heldIndex, held.Internal.FirstKnownIndex(), "the held copy is not modified")
			require.Equal(t, heldShared, *held.SharedHistory, "the held copy is not modified")
			if !tc.want.replaced {
				require.Nil(t, got)
				require.Equal(t, tc.want.reason, reason)
				return
			}
			require.NotNil(t, got, "reason: %s", reason)
			require.Equal(t, tc.want.index, got.Internal.FirstKnownIndex(), tc.explains)
			require.Equal(t, tc.want.shared, *got.SharedHistory, tc.explains)
			require.Equal(t, tc.want.source, got.KeySource, tc.explains)
			require.Equal(t, tc.want.sourceUser, got.SourceUser, tc.explains)
			require.Equal(t, tc.want.senderKey, got.SenderKey, tc.explains)
			require.Equal(t, tc.want.maxAge, got.MaxAge, tc.explains)
			require.Equal(t, held.ID(), got.ID())
			require.True(t, cryptostore.SameRatchet(got.Internal, incoming.Internal) || cryptostore.SameRatchet(got.Internal, held.Internal))
			earliest := held.ReceivedAt
			if incoming.ReceivedAt.Before(earliest) {
				earliest = incoming.ReceivedAt
			}
			require.Equal(t, earliest, got.ReceivedAt)
		})
	}
}

func TestTrustName(t *testing.T) {
	for _, tc := range []struct {
		state     id.TrustState
		forwarded bool
		want      string
	}{
		{id.TrustStateVerified, false, e2ee.TrustVerified},
		{id.TrustStateCrossSignedVerified, false, e2ee.TrustVerified},
		{id.TrustStateCrossSignedTOFU, false, e2ee.TrustCrossSigned},
		{id.TrustStateCrossSignedTOFU, true, e2ee.TrustForwarded},
		{id.TrustStateCrossSignedUntrusted, false, e2ee.TrustIdentityChanged},
		{id.TrustStateUnset, false, e2ee.TrustUnsigned},
		{id.TrustStateUnknownDevice, false, e2ee.TrustUnknownDevice},
		{id.TrustStateForwarded, false, e2ee.TrustForwarded},
		{id.TrustStateBackup, false, e2ee.TrustForwarded},
		{id.TrustStateDeviceKeyMismatch, false, e2ee.TrustKeyMismatch},
		{id.TrustStateBlacklisted, false, e2ee.TrustBlacklisted},
	} {
		require.Equal(t, tc.want, e2ee.TrustName(tc.state, tc.forwarded), "%s forwarded=%v", tc.state, tc.forwarded)
	}
}
