package history

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// The rule of a puppet's inbound sessions, at the bundle's level: a bundle for room B (its keys,
// forged or genuine, and its withheld entries) never changes, moves, shadows or blocks what the
// puppet holds for room A, in whatever order the bundles come.

const otherBenchRoom id.RoomID = "!other:localhost"

// importFor imports a plaintext bundle for the room from sender, as an accepted bundle is.
func importFor(t *testing.T, env *benchEnv, p *e2ee.Puppet, roomID id.RoomID, sender id.UserID, plaintext []byte) importResult {
	t.Helper()
	rb := &database.ReceivedBundle{Puppet: p.UserID, RoomID: roomID, Sender: sender, SenderDevice: "SENDERDEV",
		SenderKey: "senderkey", State: database.ReceivedPending}
	require.NoError(t, env.db.PutReceivedBundle(context.Background(), rb))
	res, err := env.svc.importBundle(context.Background(), p, rb, io.NopCloser(bytes.NewReader(plaintext)), int64(len(plaintext)))
	require.NoError(t, err)
	return res
}

// forgedEntry is the session's entry for the room with another ratchet under its public key.
func forgedEntry(t *testing.T, m *megolmKey, roomID id.RoomID) keybundle.RoomKey {
	t.Helper()
	e := m.entry(t, roomID, 0)
	e.SessionKey = forge(t, e.SessionKey)
	return e
}

// roomRowOf returns the puppet's row for the session in the room (nil if none).
func roomRowOf(t *testing.T, env *benchEnv, p *e2ee.Puppet, roomID id.RoomID, sessionID id.SessionID) *rowOf {
	t.Helper()
	var r rowOf
	err := env.db.Raw.QueryRow(context.Background(), `SELECT room_id, session, shared_history, key_source, source_user
		FROM crypto_megolm_inbound_session WHERE account_id=$1 AND room_id=$2 AND session_id=$3`, p.UserID.String(), roomID, sessionID).
		Scan(&r.Room, &r.Pickle, &r.Shared, &r.KeySource, &r.SourceUser)
	if err != nil {
		return nil
	}
	return &r
}

// F1c: an inviter needs only a session's ID (it is in every event of its room) to list it, with a
// junk ratchet, in a bundle for his own room. A genuine bundle for the session's room must still
// import it.
func TestInviterParkingASessionIDInHisOwnBundleBlocksNothing(t *testing.T) {
	env := newBenchEnv(t)
	p := env.puppet(t, "victim")
	m := newMegolmKey(t)
	res := importFor(t, env, p, otherBenchRoom, "@mallory:localhost", bundleOf(t, []keybundle.RoomKey{forgedEntry(t, m, otherBenchRoom)}, nil))
	require.Equal(t, 1, res.imported, "his bundle's entry is his room's business")

	res = importFor(t, env, p, benchRoom, "@bob:localhost", bundleOf(t, []keybundle.RoomKey{m.entry(t, benchRoom, 0)}, nil))
	require.Equal(t, importResult{imported: 1}, res, "bob's genuine key for its room must be importable")
	held, err := p.Store.GetGroupSession(context.Background(), benchRoom, m.out.ID())
	require.NoError(t, err)
	require.NotNil(t, held)
	require.Equal(t, id.UserID("@bob:localhost"), held.SourceUser)
	exported, err := held.Internal.Export(0)
	require.NoError(t, err)
	require.Equal(t, m.export(t, 0), string(exported), "the genuine ratchet, not the forged one")
}

// Two bundles naming the same session ID for two rooms, in either order and whatever each carries
// (the genuine key, a forged one, a withheld entry): the first room's row stays as it was.
func TestBundlesOfTwoRoomsNamingOneSessionInEitherOrder(t *testing.T) {
	kinds := []struct {
		name  string
		build func(t *testing.T, m *megolmKey, roomID id.RoomID) []byte
	}{
		{"the genuine key", func(t *testing.T, m *megolmKey, roomID id.RoomID) []byte {
			return bundleOf(t, []keybundle.RoomKey{m.entry(t, roomID, 0)}, nil)
		}},
		{"a forged key", func(t *testing.T, m *megolmKey, roomID id.RoomID) []byte {
			return bundleOf(t, []keybundle.RoomKey{forgedEntry(t, m, roomID)}, nil)
		}},
		{"a withheld entry", func(t *testing.T, m *megolmKey, roomID id.RoomID) []byte {
			return bundleOf(t, nil, []keybundle.Withheld{{Algorithm: id.AlgorithmMegolmV1, Code: keybundle.CodeHistoryNotShared,
				RoomID: roomID, SenderKey: validCurve, SessionID: m.out.ID(), Reason: "not shared"}})
		}},
	}
	for _, first := range kinds {
		for _, second := range kinds {
			for _, firstRoom := range []id.RoomID{benchRoom, otherBenchRoom} {
				then := otherBenchRoom
				if firstRoom == otherBenchRoom {
					then = benchRoom
				}
				t.Run(first.name+" for "+string(firstRoom)+", then "+second.name+" for "+string(then), func(t *testing.T) {
					env := newBenchEnv(t)
					p := env.puppet(t, "victim")
					m := newMegolmKey(t)
					importFor(t, env, p, firstRoom, "@alice:localhost", first.build(t, m, firstRoom))
					before := roomRowOf(t, env, p, firstRoom, m.out.ID())
					require.NotNil(t, before)
					importFor(t, env, p, then, "@mallory:localhost", second.build(t, m, then))
					require.Equal(t, before, roomRowOf(t, env, p, firstRoom, m.out.ID()), "the first room's row is untouched")
				})
			}
		}
	}
}
