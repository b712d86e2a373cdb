package keybundle_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/keybundle"
)

// wantKey is the exact room_keys entry rust-sdk expects for a session.
func wantKey(t *testing.T, m *megolm) map[string]any {
	t.Helper()
	return map[string]any{
		"algorithm":           "m.megolm.v1.aes-sha2",
		"room_id":             string(testRoom),
		"sender_key":          string(m.senderKey),
		"session_id":          string(m.id()),
		"session_key":         m.exported(t),
		"sender_claimed_keys": map[string]any{"ed25519": string(m.signingKey)},
	}
}

// wantOwnWithheld is the exact withheld entry the builder writes for a session without shared history.
func wantOwnWithheld(m *megolm) map[string]any {
	return map[string]any{
		"algorithm":   "m.megolm.v1.aes-sha2",
		"code":        "m.history_not_shared",
		"reason":      "The sender disabled sharing encrypted history.",
		"from_device": string(testDevice),
		"room_id":     string(testRoom),
		"sender_key":  string(m.senderKey),
		"session_id":  string(m.id()),
	}
}

func passedOn(m *megolm, roomID id.RoomID, code string) keybundle.Withheld {
	return keybundle.Withheld{
		Code: code, Reason: "not for you", FromDevice: "ORIGINDEV",
		RoomID: roomID, SenderKey: m.senderKey, SessionID: m.id(),
	}
}

// wantPassedOn is a passed-on withheld entry as written: without from_device, which heirloom does
// not store (the device that withheld the key is not the builder's).
func wantPassedOn(m *megolm) map[string]any {
	return map[string]any{
		"algorithm":  "m.megolm.v1.aes-sha2",
		"code":       "m.history_not_shared",
		"reason":     "not for you",
		"room_id":    string(testRoom),
		"sender_key": string(m.senderKey),
		"session_id": string(m.id()),
	}
}

func TestBuilder(t *testing.T) {
	type result struct {
		keys, withheld []map[string]any
		exports        []int // Export calls per session
		counts         keybundle.Counts
	}
	for _, tc := range []struct {
		name  string
		steps func(b *keybundle.Builder, s []*megolm) error
		want  func(t *testing.T, s []*megolm) result
	}{{
		name: "shared session is exported into room_keys",
		steps: func(b *keybundle.Builder, s []*megolm) error {
			return b.AddSession(s[0].session(testRoom, true))
		},
		want: func(t *testing.T, s []*megolm) result {
			return result{keys: []map[string]any{wantKey(t, s[0])}, exports: []int{1, 0, 0}, counts: keybundle.Counts{Sessions: 1}}
		},
	}, {
		name: "unshared session is withheld with m.history_not_shared and never exported",
		steps: func(b *keybundle.Builder, s []*megolm) error {
			return b.AddSession(s[0].session(testRoom, false))
		},
		want: func(t *testing.T, s []*megolm) result {
			return result{withheld: []map[string]any{wantOwnWithheld(s[0])}, exports: []int{0, 0, 0}, counts: keybundle.Counts{Withheld: 1}}
		},
	}, {
		name: "sessions of another room are skipped",
		steps: func(b *keybundle.Builder, s []*megolm) error {
			return errors.Join(b.AddSession(s[0].session(otherRoom, true)), b.AddSession(s[1].session(otherRoom, false)))
		},
		want: func(t *testing.T, s []*megolm) result {
			return result{exports: []int{0, 0, 0}}
		},
	}, {
		name: "session without an ID is skipped",
		steps: func(b *keybundle.Builder, s []*megolm) error {
			sess := s[0].session(testRoom, true)
			sess.SessionID = ""
			return b.AddSession(sess)
		},
		want: func(t *testing.T, s []*megolm) result {
			return result{exports: []int{0, 0, 0}}
		},
	}, {
		name: "duplicate sessions are written once",
		steps: func(b *keybundle.Builder, s []*megolm) error {
			return errors.Join(
				b.AddSession(s[1].session(testRoom, false)), b.AddSession(s[1].session(testRoom, false)),
				b.AddSession(s[0].session(testRoom, true)), b.AddSession(s[0].session(testRoom, true)),
				b.AddSession(s[1].session(testRoom, false)))
		},
		want: func(t *testing.T, s []*megolm) result {
			return result{
				keys: []map[string]any{wantKey(t, s[0])}, withheld: []map[string]any{wantOwnWithheld(s[1])},
				exports: []int{1, 0, 0}, counts: keybundle.Counts{Sessions: 1, Withheld: 1},
			}
		},
	}, {
		name: "key written, then passed-on withheld for the same session: only in room_keys",
		steps: func(b *keybundle.Builder, s []*megolm) error {
			return errors.Join(b.AddSession(s[0].session(testRoom, true)),
				b.AddWithheld(passedOn(s[0], testRoom, keybundle.CodeHistoryNotShared)))
		},
		want: func(t *testing.T, s []*megolm) result {
			return result{keys: []map[string]any{wantKey(t, s[0])}, exports: []int{1, 0, 0}, counts: keybundle.Counts{Sessions: 1}}
		},
	}, {
		name: "own withheld, then passed-on withheld for the same session: once",
		steps: func(b *keybundle.Builder, s []*megolm) error {
			return errors.Join(b.AddSession(s[0].session(testRoom, false)),
				b.AddWithheld(passedOn(s[0], testRoom, keybundle.CodeHistoryNotShared)))
		},
		want: func(t *testing.T, s []*megolm) result {
			return result{withheld: []map[string]any{wantOwnWithheld(s[0])}, exports: []int{0, 0, 0}, counts: keybundle.Counts{Withheld: 1}}
		},
	}, {
		name: "passed-on withheld of another room or with another code is ignored",
		steps: func(b *keybundle.Builder, s []*megolm) error {
			b.AddWithheld(passedOn(s[0], otherRoom, keybundle.CodeHistoryNotShared))
			for _, code := range []string{"m.unverified", "m.blacklisted", "m.unauthorised", "m.unavailable", "m.no_olm", ""} {
				b.AddWithheld(passedOn(s[1], testRoom, code))
			}
			noID := passedOn(s[2], testRoom, keybundle.CodeHistoryNotShared)
			noID.SessionID = ""
			b.AddWithheld(noID)
			return nil
		},
		want: func(t *testing.T, s []*megolm) result {
			return result{exports: []int{0, 0, 0}}
		},
	}, {
		name: "passed-on withheld with the unstable code is sent with the stable one",
		steps: func(b *keybundle.Builder, s []*megolm) error {
			w := passedOn(s[0], testRoom, keybundle.CodeHistoryNotSharedUnstable)
			w.Algorithm = "" // as read back from the crypto store
			b.AddWithheld(w)
			return nil
		},
		want: func(t *testing.T, s []*megolm) result {
			return result{withheld: []map[string]any{wantPassedOn(s[0])}, exports: []int{0, 0, 0}, counts: keybundle.Counts{Withheld: 1}}
		},
	}, {
		name: "mixed bundle keeps every list in order",
		steps: func(b *keybundle.Builder, s []*megolm) error {
			return errors.Join(
				b.AddSession(s[1].session(testRoom, false)),
				b.AddWithheld(passedOn(s[3], testRoom, keybundle.CodeHistoryNotSharedUnstable)),
				b.AddSession(s[0].session(testRoom, true)),
				b.AddSession(s[2].session(testRoom, true)),
				// Already written as a key: not written again as withheld, and no ordering error.
				b.AddWithheld(passedOn(s[2], testRoom, keybundle.CodeHistoryNotShared)))
		},
		want: func(t *testing.T, s []*megolm) result {
			return result{
				keys:     []map[string]any{wantKey(t, s[0]), wantKey(t, s[2])},
				withheld: []map[string]any{wantOwnWithheld(s[1]), wantPassedOn(s[3])},
				exports:  []int{1, 0, 1}, counts: keybundle.Counts{Sessions: 2, Withheld: 2},
			}
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			sessions := []*megolm{newMegolm(t), newMegolm(t), newMegolm(t), newMegolm(t)}
			var buf bytes.Buffer
			b := keybundle.NewBuilder(&buf, testRoom, testDevice)
			require.NoError(t, tc.steps(b, sessions))
			counts, err := b.Close()
			require.NoError(t, err)

			want := tc.want(t, sessions)
			wire := parseWire(t, buf.Bytes())
			if want.keys == nil {
				want.keys = []map[string]any{}
			}
			if want.withheld == nil {
				want.withheld = []map[string]any{}
			}
			require.Equal(t, want.keys, wire.RoomKeys)
			require.Equal(t, want.withheld, wire.Withheld)
			require.Equal(t, want.counts, counts)
			require.Equal(t, len(wire.RoomKeys), counts.Sessions)
			require.Equal(t, len(wire.Withheld), counts.Withheld)
			require.Equal(t, want.counts.Sessions == 0 && want.counts.Withheld == 0, counts.Empty())
			for i, n := range want.exports {
				require.Equal(t, n, sessions[i].exports, "Export calls of session %d", i)
			}
			// Every exported key imports as the session it claims to be.
			for _, key := range wire.RoomKeys {
				imported, err := olm.InboundGroupSessionImport([]byte(key["session_key"].(string)))
				require.NoError(t, err)
				require.EqualValues(t, key["session_id"], imported.ID())
			}
		})
	}
}

func TestBuilderEmptyBundleHasBothArrays(t *testing.T) {
	var buf bytes.Buffer
	b := keybundle.NewBuilder(&buf, testRoom, testDevice)
	// Only things the builder must leave out.
	require.NoError(t, b.AddSession(newMegolm(t).session(otherRoom, true)))
	require.NoError(t, b.AddWithheld(keybundle.Withheld{Code: "m.unverified", RoomID: testRoom, SessionID: "x"}))
	counts, err := b.Close()
	require.NoError(t, err)
	require.True(t, counts.Empty())
	require.Equal(t, `{"withheld":[],"room_keys":[]}`, buf.String())
}

func TestBuilderOnlyWithheldHasEmptyRoomKeys(t *testing.T) {
	var buf bytes.Buffer
	b := keybundle.NewBuilder(&buf, testRoom, testDevice)
	require.NoError(t, b.AddSession(newMegolm(t).session(testRoom, false)))
	_, err := b.Close()
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(buf.String(), `{"withheld":[{`), buf.String())
	require.True(t, strings.HasSuffix(buf.String(), `}],"room_keys":[]}`), buf.String())
}

// The withheld list is written first, so the builder never holds it: one after a key is refused.
func TestBuilderRefusesWithheldAfterKeys(t *testing.T) {
	for name, late := range map[string]func(b *keybundle.Builder, m *megolm) error{
		"session without shared history": func(b *keybundle.Builder, m *megolm) error {
			return b.AddSession(m.session(testRoom, false))
		},
		"passed-on withheld entry": func(b *keybundle.Builder, m *megolm) error {
			return b.AddWithheld(passedOn(m, testRoom, keybundle.CodeHistoryNotShared))
		},
	} {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			b := keybundle.NewBuilder(&buf, testRoom, testDevice)
			require.NoError(t, b.AddSession(newMegolm(t).session(testRoom, true)))
			require.ErrorIs(t, late(b, newMegolm(t)), keybundle.ErrWithheldAfterKeys)
			_, err := b.Close()
			require.ErrorIs(t, err, keybundle.ErrWithheldAfterKeys)
		})
	}
}

func TestBuilderExportErrorPropagates(t *testing.T) {
	boom := errors.New("store is gone")
	good, bad := newMegolm(t), newMegolm(t)
	var buf bytes.Buffer
	b := keybundle.NewBuilder(&buf, testRoom, testDevice)
	require.NoError(t, b.AddSession(good.session(testRoom, true)))
	failing := bad.session(testRoom, true)
	failing.Export = func() (string, error) { return "", boom }
	err := b.AddSession(failing)
	require.ErrorIs(t, err, boom)
	require.Contains(t, err.Error(), bad.id().String(), "the error names the session")
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

func TestBuilderWriteErrorPropagates(t *testing.T) {
	diskFull := errors.New("no space left on device")
	b := keybundle.NewBuilder(failingWriter{diskFull}, testRoom, testDevice)
	require.NoError(t, b.AddSession(newMegolm(t).session(testRoom, true)), "small writes are buffered")
	counts, err := b.Close()
	require.ErrorIs(t, err, diskFull)
	require.Equal(t, 1, counts.Sessions)
}

func TestBuilderLargeBundleIsValidJSON(t *testing.T) {
	// Enough sessions to pass the builder's 64 KiB buffer several times.
	s := newMegolm(t)
	var buf bytes.Buffer
	b := keybundle.NewBuilder(&buf, testRoom, testDevice)
	const n = 1000
	for _, shared := range []bool{false, true} {
		for i := range n {
			if (i%10 != 0) != shared {
				continue
			}
			sess := s.session(testRoom, shared)
			sess.SessionID = id.SessionID(base64.RawStdEncoding.EncodeToString(fmt.Appendf(nil, "session-%04d-%019d", i, 0)))
			require.NoError(t, b.AddSession(sess))
		}
	}
	counts, err := b.Close()
	require.NoError(t, err)
	require.Equal(t, keybundle.Counts{Sessions: 900, Withheld: 100}, counts)
	require.Greater(t, buf.Len(), 3*64<<10)
	wire := parseWire(t, buf.Bytes())
	require.Len(t, wire.RoomKeys, 900)
	require.Len(t, wire.Withheld, 100)
}

func TestDecodeRoundTrip(t *testing.T) {
	s := []*megolm{newMegolm(t), newMegolm(t), newMegolm(t)}
	var buf bytes.Buffer
	b := keybundle.NewBuilder(&buf, testRoom, testDevice)
	require.NoError(t, b.AddSession(s[1].session(testRoom, false)))
	require.NoError(t, b.AddSession(s[0].session(testRoom, true)))
	require.NoError(t, b.AddSession(s[2].session(testRoom, true)))
	_, err := b.Close()
	require.NoError(t, err)

	got, err := decodeAll(t, buf.Bytes())
	require.NoError(t, err)
	require.Zero(t, got.skipped)
	wantKeys := make([]keybundle.RoomKey, 0, 2)
	for _, m := range []*megolm{s[0], s[2]} {
		wantKeys = append(wantKeys, keybundle.RoomKey{
			Algorithm: id.AlgorithmMegolmV1, RoomID: testRoom, SenderKey: m.senderKey, SessionID: m.id(),
			SessionKey: m.exported(t), SenderClaimedKeys: keybundle.SenderClaimedKeys{Ed25519: m.signingKey},
		})
	}
	require.Equal(t, wantKeys, got.keys)
	require.Equal(t, []keybundle.Withheld{{
		Algorithm: id.AlgorithmMegolmV1, Code: keybundle.CodeHistoryNotShared,
		Reason: "The sender disabled sharing encrypted history.", FromDevice: testDevice,
		RoomID: testRoom, SenderKey: s[1].senderKey, SessionID: s[1].id(),
	}}, got.withheld)
}

// rustBundle is a bundle shaped as matrix-rust-sdk writes it, with one of each entry: both arrays
// present, a room key with its sender_claimed_keys, a withheld entry with m.history_not_shared.
const rustBundle = `{"room_keys":[{"algorithm":"m.megolm.v1.aes-sha2","room_id":"!r:hs","sender_key":"c2VuZGVy",` +
	`"session_id":"c2Vzc2lvbg","session_key":"AQAAAAAA","sender_claimed_keys":{"ed25519":"ZWQ"}}],` +
	`"withheld":[{"algorithm":"m.megolm.v1.aes-sha2","code":"m.history_not_shared",` +
	`"reason":"The sender disabled sharing encrypted history.","from_device":"RUSTDEV",` +
	`"room_id":"!r:hs","sender_key":"c2VuZGVy","session_id":"d2l0aGhlbGQ"}]}`

func TestDecode(t *testing.T) {
	nested := func(depth int) string {
		return strings.Repeat(`{"a":[`, depth) + strings.Repeat(`]}`, depth)
	}
	for _, tc := range []struct {
		name         string
		input        string
		wantErr      error // nil: accepted
		wantKeys     []id.SessionID
		wantWithheld []id.SessionID
		wantSkipped  int
	}{
		{name: "rust-sdk bundle", input: rustBundle, wantKeys: []id.SessionID{"c2Vzc2lvbg"}, wantWithheld: []id.SessionID{"d2l0aGhlbGQ"}},
		{name: "empty bundle", input: `{"room_keys":[],"withheld":[]}`},
		{name: "arrays in the other order", input: `{"withheld":[],"room_keys":[{"session_id":"a"}]}`, wantKeys: []id.SessionID{"a"}},
		{name: "whitespace everywhere", input: " \n{ \"room_keys\" : [ ] ,\t\"withheld\" : [ ] } \n"},
		{name: "missing room_keys", input: `{"withheld":[]}`, wantErr: keybundle.ErrMalformedBundle},
		{name: "missing withheld", input: `{"room_keys":[]}`, wantErr: keybundle.ErrMalformedBundle},
		{name: "both missing", input: `{}`, wantErr: keybundle.ErrMalformedBundle},
		{name: "room_keys null", input: `{"room_keys":null,"withheld":[]}`, wantErr: keybundle.ErrMalformedBundle},
		{name: "room_keys an object", input: `{"room_keys":{},"withheld":[]}`, wantErr: keybundle.ErrMalformedBundle},
		{name: "withheld a string", input: `{"room_keys":[],"withheld":"[]"}`, wantErr: keybundle.ErrMalformedBundle},
		{name: "top level array", input: `[{"room_keys":[],"withheld":[]}]`, wantErr: keybundle.ErrMalformedBundle},
		{name: "top level string", input: `"room_keys"`, wantErr: keybundle.ErrMalformedBundle},
		{name: "top level null", input: `null`, wantErr: keybundle.ErrMalformedBundle},
		{name: "empty input", input: ``, wantErr: keybundle.ErrMalformedBundle},
		{name: "truncated", input: `{"room_keys":[{"session_id":"a"}],"withh`, wantErr: keybundle.ErrMalformedBundle},
		{name: "unclosed", input: `{"room_keys":[],"withheld":[]`, wantErr: keybundle.ErrMalformedBundle},
		{
			name:         "entries of the wrong shape are skipped and counted",
			input:        `{"room_keys":[5,"key",[],{"session_id":7},{"sender_claimed_keys":"x"},{"session_id":"good"}],"withheld":[true,{"code":[]},{"session_id":"w"}]}`,
			wantKeys:     []id.SessionID{"good"},
			wantWithheld: []id.SessionID{"w"},
			wantSkipped:  7,
		},
		{
			name:         "unknown top-level keys are ignored",
			input:        `{"version":2,"room_keys":[{"session_id":"a"}],"io.element.extra":{"x":[1,{"y":null}]},"withheld":[],"z":"room_keys"}`,
			wantKeys:     []id.SessionID{"a"},
			wantWithheld: nil,
		},
		{
			name:     "deeply nested junk in an unknown key",
			input:    `{"junk":` + nested(2000) + `,"room_keys":[{"session_id":"a"}],"withheld":[]}`,
			wantKeys: []id.SessionID{"a"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeAll(t, []byte(tc.input))
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.wantSkipped, got.skipped)
			var keys, withheld []id.SessionID
			for _, k := range got.keys {
				keys = append(keys, k.SessionID)
			}
			for _, w := range got.withheld {
				withheld = append(withheld, w.SessionID)
			}
			require.Equal(t, tc.wantKeys, keys)
			require.Equal(t, tc.wantWithheld, withheld)
		})
	}
}

func TestDecodeRustBundleFields(t *testing.T) {
	got, err := decodeAll(t, []byte(rustBundle))
	require.NoError(t, err)
	require.Equal(t, []keybundle.RoomKey{{
		Algorithm: id.AlgorithmMegolmV1, RoomID: "!r:hs", SenderKey: "c2VuZGVy", SessionID: "c2Vzc2lvbg",
		SessionKey: "AQAAAAAA", SenderClaimedKeys: keybundle.SenderClaimedKeys{Ed25519: "ZWQ"},
	}}, got.keys)
	require.Equal(t, []keybundle.Withheld{{
		Algorithm: id.AlgorithmMegolmV1, Code: "m.history_not_shared", Reason: "The sender disabled sharing encrypted history.",
		FromDevice: "RUSTDEV", RoomID: "!r:hs", SenderKey: "c2VuZGVy", SessionID: "d2l0aGhlbGQ",
	}}, got.withheld)
}

func TestDecodeHostileNestingFails(t *testing.T) {
	// Far past encoding/json's nesting limit: refused, without a stack overflow or a hang.
	depth := 200_000
	input := `{"junk":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `,"room_keys":[],"withheld":[]}`
	called := false
	_, err := keybundle.Decode(strings.NewReader(input),
		func(keybundle.RoomKey) error { called = true; return nil },
		func(keybundle.Withheld) error { called = true; return nil })
	require.Error(t, err)
	require.False(t, called)
}

func TestDecodeCallbackErrorStops(t *testing.T) {
	stop := errors.New("store failed")
	input := `{"room_keys":[{"session_id":"a"},{"session_id":"b"}],"withheld":[{"session_id":"w"}]}`
	for _, tc := range []struct {
		name                   string
		failKey, failWithheld  bool
		wantKeys, wantWithheld int
	}{
		{name: "room key callback", failKey: true, wantKeys: 1},
		{name: "withheld callback", failWithheld: true, wantKeys: 2, wantWithheld: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var keys, withheld int
			_, err := keybundle.Decode(strings.NewReader(input),
				func(keybundle.RoomKey) error {
					keys++
					if tc.failKey {
						return stop
					}
					return nil
				},
				func(keybundle.Withheld) error {
					withheld++
					if tc.failWithheld {
						return stop
					}
					return nil
				})
			require.ErrorIs(t, err, stop)
			require.NotErrorIs(t, err, keybundle.ErrMalformedBundle, "a callback error is not the bundle's fault")
			require.Equal(t, tc.wantKeys, keys)
			require.Equal(t, tc.wantWithheld, withheld)
		})
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestDecodeReadError(t *testing.T) {
	broken := errors.New("connection reset")
	_, err := keybundle.Decode(io.MultiReader(strings.NewReader(`{"room_keys":[`), errReader{broken}),
		func(keybundle.RoomKey) error { return nil }, func(keybundle.Withheld) error { return nil })
	require.ErrorIs(t, err, broken)
}
