package history

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// In gateway mode the bridge is one principal: a bundle one of its users builds carries what any
// of the bridge's users in the room holds, once per session, each at its best copy, and nothing
// of anyone else's store.

const (
	bridgeBot id.UserID = "@bridgebot:localhost"
	ghost     id.UserID = "@irc_ghost:localhost"
	ghost2    id.UserID = "@irc_ghost2:localhost"
)

// newBridgeEnv is a bench environment in gateway mode, in front of a bridge whose bot is
// bridgeBot and whose users are those usersRegex matches.
func newBridgeEnv(t *testing.T, usersRegex string) *benchEnv {
	t.Helper()
	return newBridgeEnvOn(t, testdb.SQLite(t), usersRegex)
}

// newBridgeEnvOn is newBridgeEnv on the given database (see internal/testdb).
func newBridgeEnvOn(t *testing.T, dbCfg config.Database, usersRegex string) *benchEnv {
	t.Helper()
	env := newBenchEnvOn(t, dbCfg)
	reg := filepath.Join(t.TempDir(), "bridge.yaml")
	require.NoError(t, os.WriteFile(reg, []byte(`id: testbridge
url: http://127.0.0.1:1
as_token: bridge-as-token-0123456789
hs_token: bridge-hs-token-0123456789
sender_localpart: bridgebot
namespaces:
  users:
  - regex: '`+usersRegex+`'
    exclusive: true
`), 0o600))
	env.svc.cfg.Gateway.Registration = reg
	bridge, err := env.svc.cfg.LoadBridge()
	require.NoError(t, err)
	env.svc.cfg.Bridge = bridge
	return env
}

// user loads (or creates) a device of any user, bridge user or heirloom's own.
func (b *benchEnv) user(t *testing.T, userID id.UserID) *e2ee.Puppet {
	t.Helper()
	p, err := b.mgr.LocalPuppet(context.Background(), userID, id.DeviceID("DEV"+userID.Localpart()))
	require.NoError(t, err)
	return p
}

// member records the user's membership of the room, as the state store learns it.
func (b *benchEnv) member(t *testing.T, roomID id.RoomID, userID id.UserID, membership event.Membership) {
	t.Helper()
	require.NoError(t, b.db.StateStore.SetMembership(context.Background(), roomID, userID, membership))
}

// holdAt stores the session for p from index on, as a key its creator sent (signed by validEd,
// from validCurve) would be held: direct unless imported.
func holdAt(t *testing.T, p *e2ee.Puppet, m *megolmKey, roomID id.RoomID, index uint32, shared, imported bool) {
	t.Helper()
	holdExport(t, p, m.out.ID(), m.export(t, index), roomID, shared, imported)
}

// holdExport stores an exported session key (genuine or not) for p under sessionID.
func holdExport(t *testing.T, p *e2ee.Puppet, sessionID id.SessionID, exported string, roomID id.RoomID, shared, imported bool) {
	t.Helper()
	holdClaimed(t, p, sessionID, exported, roomID, shared, imported, validCurve, validEd)
}

// holdClaimed is holdExport of a copy that claims the given sender.
func holdClaimed(t *testing.T, p *e2ee.Puppet, sessionID id.SessionID, exported string, roomID id.RoomID, shared, imported bool,
	senderKey id.SenderKey, signingKey id.Ed25519) {
	t.Helper()
	internal, err := olm.InboundGroupSessionImport([]byte(exported))
	require.NoError(t, err)
	require.Equal(t, sessionID, internal.ID())
	igs := &crypto.InboundGroupSession{Internal: internal, SenderKey: senderKey, SigningKey: signingKey, RoomID: roomID,
		SharedHistory: &shared, KeySource: id.KeySourceDirect, ForwardingChains: []string{}}
	if imported {
		igs.KeySource, igs.SourceUser = id.KeySourceForward, "@inviter:localhost"
	}
	require.NoError(t, p.Store.PutGroupSession(context.Background(), igs))
}

// bundleWire is a built bundle's plaintext, keyed by session ID.
type bundleWire struct {
	keys     map[id.SessionID]keybundle.RoomKey
	withheld map[id.SessionID]keybundle.Withheld
	counts   keybundle.Counts
}

// buildFor builds the bundle p would send for the room, and reads it back as an invitee would.
func buildFor(t *testing.T, env *benchEnv, p *e2ee.Puppet, roomID id.RoomID) bundleWire {
	t.Helper()
	var out bytes.Buffer
	counts, err := env.svc.writeBundle(context.Background(), p, roomID, &out)
	require.NoError(t, err)
	requireElementParses(t, out.Bytes())
	var wire struct {
		RoomKeys []keybundle.RoomKey  `json:"room_keys"`
		Withheld []keybundle.Withheld `json:"withheld"`
	}
	require.NoError(t, json.Unmarshal(out.Bytes(), &wire))
	got := bundleWire{keys: map[id.SessionID]keybundle.RoomKey{}, withheld: map[id.SessionID]keybundle.Withheld{}, counts: counts}
	for _, k := range wire.RoomKeys {
		require.NotContains(t, got.keys, k.SessionID, "one entry per session")
		got.keys[k.SessionID] = k
	}
	for _, w := range wire.Withheld {
		require.NotContains(t, got.withheld, w.SessionID, "one entry per session")
		require.NotContains(t, got.keys, w.SessionID, "a session is a key or withheld, not both")
		got.withheld[w.SessionID] = w
	}
	require.Equal(t, keybundle.Counts{Sessions: len(got.keys), Withheld: len(got.withheld)}, counts)
	return got
}

func sessionIDs[V any](m map[id.SessionID]V) []id.SessionID {
	out := make([]id.SessionID, 0, len(m))
	for sid := range m {
		out = append(out, sid)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func sorted(ids ...id.SessionID) []id.SessionID {
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// firstIndex is the first index a bundle's exported key reads from.
func firstIndex(t *testing.T, k keybundle.RoomKey) uint32 {
	t.Helper()
	internal, err := olm.InboundGroupSessionImport([]byte(k.SessionKey))
	require.NoError(t, err)
	return internal.FirstKnownIndex()
}

// A ghost that joined without history invites someone: the bundle carries what the bridge's bot
// and the room's other bridge users hold for the room (shared sessions as keys, the rest and the
// bundle withheld entries as m.history_not_shared), built and signed by the ghost's own device.
// Nothing of a user who is not the bridge's (heirloom's own puppet and bot, another bridge's ghost,
// a user of another server that the namespace's regex matches), of a bridge user no longer in the
// room, nor of another room.
func TestBridgeBundleCarriesWhatEveryBridgeUserHolds(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, dbCfg config.Database) { bridgeBundleCarriesWhatEveryBridgeUserHolds(t, dbCfg) })
}

func bridgeBundleCarriesWhatEveryBridgeUserHolds(t *testing.T, dbCfg config.Database) {
	env := newBridgeEnvOn(t, dbCfg, "@irc_.*")
	ctx := context.Background()
	inviter, bot, invited := env.user(t, ghost), env.user(t, bridgeBot), env.user(t, ghost2)
	left := env.user(t, "@irc_gone:localhost")
	apiPuppet, heirloomBot := env.puppet(t, "api"), env.user(t, "@bot:localhost")
	// Users of the room outside the bridge's namespace: another bridge's ghost, and a user of
	// another server whose localpart the namespace's regex matches.
	otherBridge, remote := env.user(t, "@slack_ghost:localhost"), env.user(t, "@irc_ghost:remote")
	for u, membership := range map[id.UserID]event.Membership{ghost: event.MembershipJoin, bridgeBot: event.MembershipJoin,
		ghost2: event.MembershipInvite, left.UserID: event.MembershipLeave, apiPuppet.UserID: event.MembershipJoin,
		heirloomBot.UserID: event.MembershipJoin, "@alice:remote": event.MembershipJoin, otherBridge.UserID: event.MembershipJoin,
		remote.UserID: event.MembershipJoin} {
		env.member(t, benchRoom, u, membership)
	}

	botShared, botUnshared, botWithheld := newMegolmKey(t), newMegolmKey(t), newMegolmKey(t)
	holdDirect(t, bot, botShared, benchRoom, true)
	holdDirect(t, bot, botUnshared, benchRoom, false)
	require.NoError(t, bot.InsertBundleWithheld(ctx, []keybundle.Withheld{{Algorithm: id.AlgorithmMegolmV1,
		Code: keybundle.CodeHistoryNotShared, Reason: "not shared", RoomID: benchRoom, SenderKey: validCurve,
		SessionID: botWithheld.out.ID()}}, "@alice:remote", time.Now()))
	botToDevice := newMegolmKey(t) // a withheld message over to-device is never passed on
	require.NoError(t, bot.Store.PutWithheldGroupSession(ctx, event.RoomKeyWithheldEventContent{RoomID: benchRoom,
		Algorithm: id.AlgorithmMegolmV1, SessionID: botToDevice.out.ID(), SenderKey: validCurve, Code: keybundle.CodeHistoryNotShared}))
	own, invitedShared := newMegolmKey(t), newMegolmKey(t)
	holdDirect(t, inviter, own, benchRoom, true)
	holdDirect(t, invited, invitedShared, benchRoom, true)

	leftShared, apiShared, heirloomBotShared, botOtherRoom := newMegolmKey(t), newMegolmKey(t), newMegolmKey(t), newMegolmKey(t)
	holdDirect(t, left, leftShared, benchRoom, true)
	holdDirect(t, apiPuppet, apiShared, benchRoom, true)
	holdDirect(t, heirloomBot, heirloomBotShared, benchRoom, true)
	holdDirect(t, bot, botOtherRoom, otherBenchRoom, true)
	otherBridgeShared, remoteShared := newMegolmKey(t), newMegolmKey(t)
	holdDirect(t, otherBridge, otherBridgeShared, benchRoom, true)
	holdDirect(t, remote, remoteShared, benchRoom, true)

	got := buildFor(t, env, inviter, benchRoom)
	require.Equal(t, sorted(botShared.out.ID(), own.out.ID(), invitedShared.out.ID()), sessionIDs(got.keys))
	require.Equal(t, sorted(botUnshared.out.ID(), botWithheld.out.ID()), sessionIDs(got.withheld))
	for _, k := range got.keys {
		require.Equal(t, benchRoom, k.RoomID)
		require.Zero(t, firstIndex(t, k))
	}
	require.Equal(t, inviter.DeviceID, got.withheld[botUnshared.out.ID()].FromDevice, "the inviter's device built the bundle")

	// The bot's own bundle for the room is built the same way, from the same users.
	require.Equal(t, sorted(botShared.out.ID(), own.out.ID(), invitedShared.out.ID()), sessionIDs(buildFor(t, env, bot, benchRoom).keys))
}

// heirloom's own puppets and bot are never the bridge's users, whatever its namespace says: a
// bridge whose namespace matches every local user pools nothing of theirs into its bundles, and
// an API-mode puppet's bundle holds its own sessions only, whoever else is in the room.
func TestBridgeBundleNeverPoolsHeirloomsOwnUsers(t *testing.T) {
	env := newBridgeEnv(t, "@.*")
	inviter, bot := env.user(t, ghost), env.user(t, bridgeBot)
	apiPuppet, heirloomBot := env.puppet(t, "api"), env.user(t, "@bot:localhost")
	for _, u := range []id.UserID{ghost, bridgeBot, apiPuppet.UserID, heirloomBot.UserID} {
		env.member(t, benchRoom, u, event.MembershipJoin)
	}
	own, botShared, apiShared, heirloomBotShared := newMegolmKey(t), newMegolmKey(t), newMegolmKey(t), newMegolmKey(t)
	holdDirect(t, inviter, own, benchRoom, true)
	holdDirect(t, bot, botShared, benchRoom, true)
	holdDirect(t, apiPuppet, apiShared, benchRoom, true)
	holdDirect(t, heirloomBot, heirloomBotShared, benchRoom, true)

	require.Equal(t, sorted(own.out.ID(), botShared.out.ID()), sessionIDs(buildFor(t, env, inviter, benchRoom).keys))
	require.Equal(t, []id.SessionID{apiShared.out.ID()}, sessionIDs(buildFor(t, env, apiPuppet, benchRoom).keys),
		"an API-mode puppet is a principal of its own")
	require.Equal(t, []id.SessionID{heirloomBotShared.out.ID()}, sessionIDs(buildFor(t, env, heirloomBot, benchRoom).keys),
		"so is heirloom's bot")
}

// When several bridge users hold a session, the bundle carries it once, at the earliest index any
// of them holds it from.
func TestBridgeBundleCarriesEachSessionOnceAtItsEarliestIndex(t *testing.T) {
	env := newBridgeEnv(t, "@irc_.*")
	inviter, bot, other := env.user(t, ghost), env.user(t, bridgeBot), env.user(t, ghost2)
	for _, u := range []id.UserID{ghost, bridgeBot, ghost2} {
		env.member(t, benchRoom, u, event.MembershipJoin)
	}
	botEarlier, inviterEarlier, third := newMegolmKey(t), newMegolmKey(t), newMegolmKey(t)
	holdAt(t, bot, botEarlier, benchRoom, 0, true, false)
	holdAt(t, inviter, botEarlier, benchRoom, 3, true, false)
	holdAt(t, inviter, inviterEarlier, benchRoom, 0, true, false)
	holdAt(t, bot, inviterEarlier, benchRoom, 4, true, true)
	holdAt(t, inviter, third, benchRoom, 2, true, false)
	holdAt(t, bot, third, benchRoom, 1, true, true)
	holdAt(t, other, third, benchRoom, 5, true, false)

	got := buildFor(t, env, inviter, benchRoom)
	require.Equal(t, sorted(botEarlier.out.ID(), inviterEarlier.out.ID(), third.out.ID()), sessionIDs(got.keys))
	require.Empty(t, got.withheld)
	require.Zero(t, firstIndex(t, got.keys[botEarlier.out.ID()]))
	require.Zero(t, firstIndex(t, got.keys[inviterEarlier.out.ID()]))
	require.EqualValues(t, 1, firstIndex(t, got.keys[third.out.ID()]))
	require.Equal(t, third.export(t, 1), got.keys[third.out.ID()].SessionKey, "the genuine key, from index 1")
}

// shared_history stays false once any copy said false, across the bridge's users too: a session
// any of them holds as not shared goes as m.history_not_shared, never as a key, whoever holds the
// shareable copy. A withheld entry (anyone's word, in a bundle) never blocks a key, as in one store.
func TestBridgeBundleSharesNoSessionAnyCopySaysIsNotShared(t *testing.T) {
	env := newBridgeEnv(t, "@irc_.*")
	ctx := context.Background()
	inviter, bot, other := env.user(t, ghost), env.user(t, bridgeBot), env.user(t, ghost2)
	for _, u := range []id.UserID{ghost, bridgeBot, ghost2} {
		env.member(t, benchRoom, u, event.MembershipJoin)
	}
	withheldFor := func(p *e2ee.Puppet, m *megolmKey) {
		require.NoError(t, p.InsertBundleWithheld(ctx, []keybundle.Withheld{{Algorithm: id.AlgorithmMegolmV1,
			Code: keybundle.CodeHistoryNotShared, Reason: "not shared", RoomID: benchRoom, SenderKey: validCurve,
			SessionID: m.out.ID()}}, "@alice:remote", time.Now()))
	}
	otherSaysNo, inviterSaysNo, botSaysNoLater, onlyWithheldBlocks, unsharedAndWithheld :=
		newMegolmKey(t), newMegolmKey(t), newMegolmKey(t), newMegolmKey(t), newMegolmKey(t)
	holdAt(t, inviter, otherSaysNo, benchRoom, 0, true, false)
	holdAt(t, other, otherSaysNo, benchRoom, 2, false, false)
	holdAt(t, inviter, inviterSaysNo, benchRoom, 3, false, false)
	holdAt(t, bot, inviterSaysNo, benchRoom, 0, true, false)
	holdAt(t, bot, botSaysNoLater, benchRoom, 0, true, false)
	holdAt(t, other, botSaysNoLater, benchRoom, 0, true, false)
	holdAt(t, inviter, botSaysNoLater, benchRoom, 1, false, true)
	holdAt(t, bot, onlyWithheldBlocks, benchRoom, 0, true, false)
	withheldFor(inviter, onlyWithheldBlocks)
	withheldFor(other, onlyWithheldBlocks)
	holdAt(t, bot, unsharedAndWithheld, benchRoom, 0, false, false)
	withheldFor(inviter, unsharedAndWithheld)
	// A copy stored before heirloom checked keys, whose sender key rust-sdk could not parse: it is
	// written nowhere, and still says "not shared".
	unparsableSaysNo := newMegolmKey(t)
	holdAt(t, bot, unparsableSaysNo, benchRoom, 0, true, false)
	holdAt(t, other, unparsableSaysNo, benchRoom, 0, false, false)
	_, err := env.db.Raw.Exec(ctx, `UPDATE crypto_megolm_inbound_session SET sender_key=$1 WHERE account_id=$2 AND session_id=$3`,
		"!!!! not a curve25519 key, 43 characters !", other.UserID.String(), unparsableSaysNo.out.ID())
	require.NoError(t, err)

	got := buildFor(t, env, inviter, benchRoom)
	require.Equal(t, []id.SessionID{onlyWithheldBlocks.out.ID()}, sessionIDs(got.keys))
	require.Equal(t, sorted(otherSaysNo.out.ID(), inviterSaysNo.out.ID(), botSaysNoLater.out.ID(), unsharedAndWithheld.out.ID()),
		sessionIDs(got.withheld))
	for _, w := range got.withheld {
		require.Equal(t, keybundle.CodeHistoryNotShared, w.Code)
	}
}

// Copies of a session in several bridge users' stores merge by the rules of one store
// (e2ee.MergeSessions), the inviter's first: a forged ratchet under the session's ID, imported
// from someone's bundle, never wins over a copy the session's device sent, whoever holds which and
// whatever index the forgery claims.
func TestBridgeBundleNeverTakesAForgedCopyOverADirectOne(t *testing.T) {
	env := newBridgeEnv(t, "@irc_.*")
	inviter, bot := env.user(t, ghost), env.user(t, bridgeBot)
	for _, u := range []id.UserID{ghost, bridgeBot} {
		env.member(t, benchRoom, u, event.MembershipJoin)
	}
	forgedAtInviter, forgedAtBot := newMegolmKey(t), newMegolmKey(t)
	holdExport(t, inviter, forgedAtInviter.out.ID(), forge(t, forgedAtInviter.export(t, 0)), benchRoom, true, true)
	holdAt(t, bot, forgedAtInviter, benchRoom, 2, true, false)
	holdAt(t, inviter, forgedAtBot, benchRoom, 2, true, false)
	holdExport(t, bot, forgedAtBot.out.ID(), forge(t, forgedAtBot.export(t, 0)), benchRoom, true, true)

	got := buildFor(t, env, inviter, benchRoom)
	require.Equal(t, sorted(forgedAtInviter.out.ID(), forgedAtBot.out.ID()), sessionIDs(got.keys))
	for _, m := range []*megolmKey{forgedAtInviter, forgedAtBot} {
		require.Equal(t, m.export(t, 2), got.keys[m.out.ID()].SessionKey, "the genuine ratchet, from the direct copy's index")
	}
}

// Another sender's claims on a session (a member who relayed it to one of the bridge's users) never
// replace those of the first copy in merge order, the inviter's: not when the copies are the very
// same state, nor when the relayed copy starts earlier (it lends no index either, as in one store).
func TestBridgeBundleKeepsTheFirstCopysClaims(t *testing.T) {
	env := newBridgeEnv(t, "@irc_.*")
	inviter, bot := env.user(t, ghost), env.user(t, bridgeBot)
	for _, u := range []id.UserID{ghost, bridgeBot} {
		env.member(t, benchRoom, u, event.MembershipJoin)
	}
	relayer := newOlmIdentity(t)
	sameState, relayedEarlier := newMegolmKey(t), newMegolmKey(t)
	holdAt(t, inviter, sameState, benchRoom, 0, true, false)
	holdClaimed(t, bot, sameState.out.ID(), sameState.export(t, 0), benchRoom, true, false, relayer.curve, relayer.ed)
	holdAt(t, inviter, relayedEarlier, benchRoom, 2, true, false)
	holdClaimed(t, bot, relayedEarlier.out.ID(), relayedEarlier.export(t, 0), benchRoom, true, false, relayer.curve, relayer.ed)

	got := buildFor(t, env, inviter, benchRoom)
	for _, m := range []*megolmKey{sameState, relayedEarlier} {
		k := got.keys[m.out.ID()]
		require.Equal(t, id.SenderKey(validCurve), k.SenderKey)
		require.Equal(t, id.Ed25519(validEd), k.SenderClaimedKeys.Ed25519)
	}
	require.Zero(t, firstIndex(t, got.keys[sameState.out.ID()]))
	require.EqualValues(t, 2, firstIndex(t, got.keys[relayedEarlier.out.ID()]))

	// The bot's own bundle merges the other way round: its copies' claims stay.
	got = buildFor(t, env, bot, benchRoom)
	require.Equal(t, relayer.curve, got.keys[relayedEarlier.out.ID()].SenderKey)
	require.Zero(t, firstIndex(t, got.keys[relayedEarlier.out.ID()]))
}

// olmIdentity is a device's keys as a session's claims name them.
type olmIdentity struct {
	curve id.SenderKey
	ed    id.Ed25519
}

func newOlmIdentity(t *testing.T) olmIdentity {
	t.Helper()
	curve := make([]byte, 32)
	_, err := rand.Read(curve)
	require.NoError(t, err)
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	return olmIdentity{curve: id.SenderKey(base64.RawStdEncoding.EncodeToString(curve)), ed: id.Ed25519(base64.RawStdEncoding.EncodeToString(pub))}
}

// A ghost that holds nothing for the room (it joined without history and has not heard anyone
// yet) shares what the one bridge user holding rows for it holds: the bot's keys and withheld
// entries, under the ghost's device; nothing the bot holds for another room, nor what a ghost
// holds that left the room.
func TestBridgeBundleOfAGhostHoldingNothingIsTheBots(t *testing.T) {
	env := newBridgeEnv(t, "@irc_.*")
	ctx := context.Background()
	inviter, bot, left := env.user(t, ghost), env.user(t, bridgeBot), env.user(t, ghost2)
	env.member(t, benchRoom, ghost, event.MembershipJoin)
	env.member(t, benchRoom, bridgeBot, event.MembershipJoin)
	env.member(t, benchRoom, ghost2, event.MembershipLeave)
	shared, unshared, otherRoom, leftShared := newMegolmKey(t), newMegolmKey(t), newMegolmKey(t), newMegolmKey(t)
	holdDirect(t, bot, shared, benchRoom, true)
	holdDirect(t, bot, unshared, benchRoom, false)
	holdDirect(t, bot, otherRoom, otherBenchRoom, true)
	holdDirect(t, left, leftShared, benchRoom, true)
	holdDirect(t, inviter, newMegolmKey(t), otherBenchRoom, true) // the inviter's rows of another room make it no holder

	accounts, err := env.svc.bundleAccounts(ctx, inviter, benchRoom)
	require.NoError(t, err)
	require.Equal(t, []string{bridgeBot.String()}, accounts, "the bot alone holds rows for the room")
	got := buildFor(t, env, inviter, benchRoom)
	require.Equal(t, []id.SessionID{shared.out.ID()}, sessionIDs(got.keys))
	require.Equal(t, []id.SessionID{unshared.out.ID()}, sessionIDs(got.withheld))
	require.Equal(t, inviter.DeviceID, got.withheld[unshared.out.ID()].FromDevice, "the ghost's device built the bundle")
}
