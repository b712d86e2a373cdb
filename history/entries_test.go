package history

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"filippo.io/edwards25519"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// What enters the store from a bundle, and what leaves it in the puppet's own bundles: keys that
// rust-sdk parses, text that SQLite and PostgreSQL store alike.

// notAPointEd is 32 bytes in unpadded base64 that decode to no point on edwards25519 (y = 2).
const notAPointEd = id.Ed25519("AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")

// F3b: a bundle entry's sender_claimed_keys.ed25519 becomes the session's signing key and goes out
// in the puppet's own bundles: one that is not a valid Ed25519 point is skipped at import.
func TestBundleKeyWithAnInvalidClaimedKeyIsSkipped(t *testing.T) {
	env := newBenchEnv(t)
	p := env.puppet(t, "dst")
	bad, good := newMegolmKey(t), newMegolmKey(t)
	badEntry := bad.entry(t, benchRoom, 0)
	badEntry.SenderClaimedKeys.Ed25519 = notAPointEd
	res, err := importPlain(t, env, p, bundleOf(t, []keybundle.RoomKey{badEntry, good.entry(t, benchRoom, 0)}, nil))
	require.NoError(t, err)
	require.Equal(t, importResult{imported: 1, skipped: 1}, res)
	require.Nil(t, roomRowOf(t, env, p, benchRoom, bad.out.ID()), "the entry rust-sdk would refuse is not stored")
}

// requireElementParses fails unless every entry of the bundle has keys rust-sdk parses: a
// sender_key of 32 bytes and (room keys) a sender_claimed_keys.ed25519 that is an Ed25519 point.
// rust-sdk refuses the whole bundle over one such entry ("The signature was invalid").
func requireElementParses(t *testing.T, plaintext []byte) (keys, withheld int) {
	t.Helper()
	var wire struct {
		RoomKeys []keybundle.RoomKey  `json:"room_keys"`
		Withheld []keybundle.Withheld `json:"withheld"`
	}
	require.NoError(t, json.Unmarshal(plaintext, &wire))
	for _, k := range wire.RoomKeys {
		require.True(t, keybundle.ValidKey(string(k.SenderKey)), "room key %s: sender_key %q", k.SessionID, k.SenderKey)
		raw, err := base64.RawStdEncoding.DecodeString(string(k.SenderClaimedKeys.Ed25519))
		require.NoError(t, err, "room key %s", k.SessionID)
		_, err = new(edwards25519.Point).SetBytes(raw)
		require.NoError(t, err, "room key %s carries ed25519 %q, which rust-sdk cannot parse: Element refuses the whole bundle",
			k.SessionID, k.SenderClaimedKeys.Ed25519)
	}
	for _, w := range wire.Withheld {
		require.True(t, keybundle.ValidKey(string(w.SenderKey)), "withheld %s: sender_key %q", w.SessionID, w.SenderKey)
	}
	return len(wire.RoomKeys), len(wire.Withheld)
}

// Rows stored before claimed keys were checked may carry keys rust-sdk cannot parse: the builder
// never writes such an entry, and the rest of the bundle goes out.
func TestBundleNeverCarriesAnEntryElementRefuses(t *testing.T) {
	env := newBenchEnv(t)
	p := env.puppet(t, "src")
	ctx := context.Background()
	good, junkEd, offCurve, junkSenderShared, junkSenderUnshared := newMegolmKey(t), newMegolmKey(t), newMegolmKey(t), newMegolmKey(t), newMegolmKey(t)
	holdDirect(t, p, good, benchRoom, true)
	for _, m := range []*megolmKey{junkEd, offCurve, junkSenderShared} {
		holdDirect(t, p, m, benchRoom, true)
	}
	holdDirect(t, p, junkSenderUnshared, benchRoom, false)
	set := func(m *megolmKey, column, value string) {
		_, err := env.db.Raw.Exec(ctx, `UPDATE crypto_megolm_inbound_session SET `+column+`=$1 WHERE account_id=$2 AND session_id=$3`,
			value, p.UserID.String(), m.out.ID())
		require.NoError(t, err)
	}
	set(junkEd, "signing_key", "!!!! not an ed25519 key, 43 characters !!!!")
	set(offCurve, "signing_key", string(notAPointEd))
	set(junkSenderShared, "sender_key", "!!!! not a curve25519 key, 43 characters !")
	set(junkSenderUnshared, "sender_key", "!!!! not a curve25519 key, 43 characters !")

	var out bytes.Buffer
	_, err := env.svc.writeBundle(ctx, p, benchRoom, &out)
	require.NoError(t, err)
	keys, withheld := requireElementParses(t, out.Bytes())
	require.Equal(t, 1, keys, "the good session goes out")
	require.Zero(t, withheld)
}

// hostileText is what one run of hostile bundle text leaves in a store: the import's counts (or
// error) and every withheld row, in order.
type hostileText struct {
	Result importResult
	Err    string
	Rows   []string
}

// F4: the same bytes get the same answer on every database. Text from outside (a bundle's withheld
// code and reason, room IDs) with a NUL byte, invalid UTF-8 or an excessive length is skipped and
// counted, never stored by one database while the other fails the whole import.
func TestHostileTextGetsTheSameAnswerOnEveryBackend(t *testing.T) {
	ids := make([]id.SessionID, 8)
	for i := range ids {
		ids[i] = newMegolmKey(t).out.ID()
	}
	withheld := func(i int, code, reason string, roomID id.RoomID) keybundle.Withheld {
		return keybundle.Withheld{Algorithm: id.AlgorithmMegolmV1, Code: code, Reason: reason, RoomID: roomID,
			SenderKey: validCurve, SessionID: ids[i]}
	}
	long := string(bytes.Repeat([]byte("x"), 1025))
	entries := []keybundle.Withheld{
		withheld(0, keybundle.CodeHistoryNotShared, "fine", benchRoom),
		withheld(1, keybundle.CodeHistoryNotShared, "a NUL\x00inside", benchRoom),
		withheld(2, "m.history\x00not_shared", "", benchRoom),
		withheld(3, keybundle.CodeHistoryNotShared, long, benchRoom),
		withheld(4, keybundle.CodeHistoryNotShared, "invalid \xff\xfe UTF-8", benchRoom),
		withheld(5, keybundle.CodeHistoryNotShared, "room with a NUL", benchRoom+"\x00"),
		withheld(6, keybundle.CodeHistoryNotShared, "also fine", benchRoom),
	}
	// The invalid UTF-8 goes out raw: encoding/json would replace it on the way in.
	plaintext := bytes.ReplaceAll(bundleOf(t, nil, entries), []byte(`invalid \ufffd\ufffd UTF-8`), []byte("invalid \xff\xfe UTF-8"))
	var answers []hostileText
	for _, backend := range testdb.Backends() {
		t.Run(backend.Name, func(t *testing.T) {
			env := newBenchEnvOn(t, backend.Open(t))
			p := env.puppet(t, "dst")
			var got hostileText
			var err error
			got.Result, err = importPlain(t, env, p, plaintext)
			if err != nil {
				got.Err = err.Error()
			}
			rows, err := env.db.Raw.Query(context.Background(), `SELECT session_id, withheld_code, withheld_reason
				FROM crypto_megolm_inbound_session WHERE account_id=$1 ORDER BY session_id`, p.UserID.String())
			require.NoError(t, err)
			for rows.Next() {
				var sid, code, reason string
				require.NoError(t, rows.Scan(&sid, &code, &reason))
				got.Rows = append(got.Rows, sid+" "+code+" "+reason)
			}
			require.NoError(t, rows.Err())
			require.Empty(t, got.Err, "hostile entries are skipped, never the import failed")
			// The invalid UTF-8 is replaced as it is decoded (as encoding/json does): that entry is kept.
			require.Equal(t, importResult{withheld: 3, skipped: 4}, got.Result)
			answers = append(answers, got)
		})
	}
	if len(answers) == 2 {
		require.Equal(t, answers[0], answers[1], "SQLite and PostgreSQL give the same answer")
	}
}

// The streaming reads of a bundle (cryptostore.EachWithheldEntry and EachSharedSession, through
// writeBundle) put into it exactly what keybundle.Place says of every row the puppet holds: a
// table of rows of every kind, of the room and of another, read back whole and placed one by one.
func TestBundleIsWhatPlaceSaysOfEveryRow(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, dbCfg config.Database) {
		env := newBenchEnvOn(t, dbCfg)
		p := env.puppet(t, "src")
		other := env.puppet(t, "other")
		ctx := context.Background()
		set := func(m *megolmKey, roomID id.RoomID, column, value string) {
			_, err := env.db.Raw.Exec(ctx, `UPDATE crypto_megolm_inbound_session SET `+column+`=$1
				WHERE account_id=$2 AND room_id=$3 AND session_id=$4`, value, p.UserID.String(), roomID, m.out.ID())
			require.NoError(t, err)
		}
		withheld := func(m *megolmKey, roomID id.RoomID, code, reason string) keybundle.Withheld {
			return keybundle.Withheld{Algorithm: id.AlgorithmMegolmV1, Code: code, Reason: reason, RoomID: roomID, SenderKey: validCurve,
				SessionID: m.out.ID()}
		}
		for _, row := range []struct {
			name string
			make func(m *megolmKey)
		}{
			{"shared key", func(m *megolmKey) { holdDirect(t, p, m, benchRoom, true) }},
			{"unshared key", func(m *megolmKey) { holdDirect(t, p, m, benchRoom, false) }},
			{"shared key of another room", func(m *megolmKey) { holdDirect(t, p, m, otherBenchRoom, true) }},
			{"shared key of another puppet", func(m *megolmKey) { holdDirect(t, other, m, benchRoom, true) }},
			{"shared key whose claimed key is junk", func(m *megolmKey) {
				holdDirect(t, p, m, benchRoom, true)
				set(m, benchRoom, "signing_key", "!!!! not an ed25519 key, 43 characters !!!!")
			}},
			{"shared key whose claimed key is no point", func(m *megolmKey) {
				holdDirect(t, p, m, benchRoom, true)
				set(m, benchRoom, "signing_key", string(notAPointEd))
			}},
			{"unshared key whose sender key is junk", func(m *megolmKey) {
				holdDirect(t, p, m, benchRoom, false)
				set(m, benchRoom, "sender_key", "!!!! not a curve25519 key, 43 characters !")
			}},
			{"shared key with no recorded flag", func(m *megolmKey) {
				holdDirect(t, p, m, benchRoom, true)
				_, err := env.db.Raw.Exec(ctx, `UPDATE crypto_megolm_inbound_session SET shared_history=NULL
					WHERE account_id=$1 AND session_id=$2`, p.UserID.String(), m.out.ID())
				require.NoError(t, err)
			}},
			{"the same session in two rooms", func(m *megolmKey) {
				holdDirect(t, p, m, benchRoom, true)
				holdDirect(t, p, m, otherBenchRoom, false)
			}},
			{"bundle withheld entry", func(m *megolmKey) {
				require.NoError(t, p.InsertBundleWithheld(ctx, []keybundle.Withheld{withheld(m, benchRoom, keybundle.CodeHistoryNotShared, "no")},
					"@inviter:localhost", time.Now()))
			}},
			{"bundle withheld entry, unstable code", func(m *megolmKey) {
				require.NoError(t, p.InsertBundleWithheld(ctx, []keybundle.Withheld{withheld(m, benchRoom, keybundle.CodeHistoryNotSharedUnstable, "no")},
					"@inviter:localhost", time.Now()))
			}},
			{"bundle withheld entry of another room", func(m *megolmKey) {
				require.NoError(t, p.InsertBundleWithheld(ctx, []keybundle.Withheld{withheld(m, otherBenchRoom, keybundle.CodeHistoryNotShared, "no")},
					"@inviter:localhost", time.Now()))
			}},
			{"to-device withheld message", func(m *megolmKey) {
				require.NoError(t, p.Store.PutWithheldGroupSession(ctx, event.RoomKeyWithheldEventContent{RoomID: benchRoom,
					Algorithm: id.AlgorithmMegolmV1, SessionID: m.out.ID(), SenderKey: validCurve, Code: keybundle.CodeHistoryNotShared}))
			}},
			{"to-device withheld message, another code", func(m *megolmKey) {
				require.NoError(t, p.Store.PutWithheldGroupSession(ctx, event.RoomKeyWithheldEventContent{RoomID: benchRoom,
					Algorithm: id.AlgorithmMegolmV1, SessionID: m.out.ID(), SenderKey: validCurve, Code: event.RoomKeyWithheldUnverified}))
			}},
		} {
			row.make(newMegolmKey(t))
		}

		// Every row of the puppet, whole, as Place sees it.
		rows, err := env.db.Raw.Query(ctx, `SELECT room_id, session_id, sender_key, COALESCE(signing_key, ''), session IS NOT NULL,
			COALESCE(shared_history, false), COALESCE(withheld_code, ''), COALESCE(withheld_reason, ''), source_user <> ''
			FROM crypto_megolm_inbound_session WHERE account_id=$1`, p.UserID.String())
		require.NoError(t, err)
		wantKeys, wantWithheld := map[id.SessionID]bool{}, map[id.SessionID]bool{}
		for rows.Next() {
			var h keybundle.Held
			require.NoError(t, rows.Scan(&h.RoomID, &h.SessionID, &h.SenderKey, &h.SigningKey, &h.HasKey, &h.SharedHistory, &h.Code,
				&h.Reason, &h.FromBundle))
			h.SenderKey, h.SigningKey = id.SenderKey(strings.TrimSpace(string(h.SenderKey))), id.Ed25519(strings.TrimSpace(string(h.SigningKey)))
			switch place, _ := keybundle.Place(benchRoom, h); place {
			case keybundle.AsKey:
				wantKeys[h.SessionID] = true
			case keybundle.AsWithheld:
				wantWithheld[h.SessionID] = true
			}
		}
		require.NoError(t, rows.Err())

		var out bytes.Buffer
		counts, err := env.svc.writeBundle(ctx, p, benchRoom, &out)
		require.NoError(t, err)
		var wire struct {
			RoomKeys []keybundle.RoomKey  `json:"room_keys"`
			Withheld []keybundle.Withheld `json:"withheld"`
		}
		require.NoError(t, json.Unmarshal(out.Bytes(), &wire))
		gotKeys, gotWithheld := map[id.SessionID]bool{}, map[id.SessionID]bool{}
		for _, k := range wire.RoomKeys {
			gotKeys[k.SessionID] = true
		}
		for _, w := range wire.Withheld {
			gotWithheld[w.SessionID] = true
		}
		require.Equal(t, wantKeys, gotKeys)
		require.Equal(t, wantWithheld, gotWithheld)
		require.Equal(t, keybundle.Counts{Sessions: 2, Withheld: 4}, counts,
			"keys: the shared one and the room's copy of the two-room session; withheld: the unshared one, the one with no flag, the two bundle entries")
		requireElementParses(t, out.Bytes())
	})
}
