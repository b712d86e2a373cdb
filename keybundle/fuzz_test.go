package keybundle_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/keybundle"
)

// topLevelMembers returns the members of the object that starts data, in order, duplicates kept.
func topLevelMembers(data []byte) ([]string, []json.RawMessage, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, false
	}
	var names []string
	var values []json.RawMessage
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, false
		}
		var value json.RawMessage
		if err = dec.Decode(&value); err != nil {
			return nil, nil, false
		}
		names = append(names, tok.(string))
		values = append(values, value)
	}
	return names, values, true
}

// expectEntries is what Decode must deliver for one array: the elements that parse, in order.
func expectEntries[T any](t *testing.T, raw json.RawMessage, want *[]T, skipped *int) {
	var elems []json.RawMessage
	require.NoError(t, json.Unmarshal(raw, &elems), "an accepted bundle's %s is an array", raw)
	require.NotNil(t, elems, "an accepted bundle's arrays are not null")
	for _, elem := range elems {
		var item T
		var id struct {
			SessionID string `json:"session_id"`
		}
		if json.Unmarshal(elem, &item) != nil || json.Unmarshal(elem, &id) != nil || id.SessionID == "" {
			*skipped++ // entries that do not parse, null and entries without a session ID
			continue
		}
		*want = append(*want, item)
	}
}

func FuzzDecode(f *testing.F) {
	s := []*megolm{newMegolm(f), newMegolm(f)}
	var built bytes.Buffer
	b := keybundle.NewBuilder(&built, testRoom, testDevice)
	_ = b.AddSession(s[1].session(testRoom, false))
	_ = b.AddWithheld(keybundle.Withheld{Code: keybundle.CodeHistoryNotSharedUnstable, RoomID: testRoom, SessionID: "passed", SenderKey: "a2V5"})
	_ = b.AddSession(s[0].session(testRoom, true))
	_, _ = b.Close()
	f.Add(built.Bytes())
	f.Add([]byte(rustBundle))
	f.Add([]byte(`{"room_keys":[],"withheld":[]}`))
	f.Add([]byte(`{"room_keys":[5,null,{}],"withheld":[{"code":1}],"x":{"y":[[[]]]}}`))

	f.Fuzz(func(t *testing.T, data []byte) {
		var got decoded
		var err error
		got.skipped, err = keybundle.Decode(bytes.NewReader(data),
			func(k keybundle.RoomKey) error { got.keys = append(got.keys, k); return nil },
			func(w keybundle.Withheld) error { got.withheld = append(got.withheld, w); return nil })
		if err != nil {
			return
		}

		// Accepted: the document starts with an object holding both arrays, and the callbacks saw
		// exactly the entries of those arrays that parse, in order; the rest are counted as skipped.
		names, values, ok := topLevelMembers(data)
		require.True(t, ok, "accepted input does not start with a JSON object: %q", data)
		var want decoded
		var sawKeys, sawWithheld bool
		for i, name := range names {
			switch name {
			case "room_keys":
				sawKeys = true
				expectEntries(t, values[i], &want.keys, &want.skipped)
			case "withheld":
				sawWithheld = true
				expectEntries(t, values[i], &want.withheld, &want.skipped)
			}
		}
		require.True(t, sawKeys && sawWithheld, "accepted without both arrays: %q", data)
		require.Equal(t, want.keys, got.keys)
		require.Equal(t, want.withheld, got.withheld)
		require.Equal(t, want.skipped, got.skipped)

		// What the callbacks saw survives being written out and read again unchanged.
		if got.keys == nil {
			got.keys = []keybundle.RoomKey{}
		}
		if got.withheld == nil {
			got.withheld = []keybundle.Withheld{}
		}
		again, err := json.Marshal(map[string]any{"room_keys": got.keys, "withheld": got.withheld})
		require.NoError(t, err)
		reread, err := decodeAll(t, again)
		require.NoError(t, err)
		require.Zero(t, reread.skipped)
		require.Equal(t, len(got.keys), len(reread.keys))
		require.Equal(t, len(got.withheld), len(reread.withheld))
		if len(got.keys) > 0 {
			require.Equal(t, got.keys, reread.keys)
		}
		if len(got.withheld) > 0 {
			require.Equal(t, got.withheld, reread.withheld)
		}
	})
}

func FuzzHistoryFlagJSON(f *testing.F) {
	for _, seed := range []string{
		`{"shared_history":true}`, `{"m.shared_history":true}`, `{"org.matrix.msc3061.shared_history":true}`,
		`{"shared_history":true,"org.matrix.msc3061.shared_history":true}`,
		`{"shared_history":true,"m.shared_history":false}`, `{"shared_history":"true"}`, `{"shared_history":1}`,
		`{"algorithm":"m.megolm.v1.aes-sha2","room_id":"!r:hs","session_id":"s","session_key":"k","shared_history":true}`,
		`{}`, `null`, `[]`, `true`, ``,
	} {
		f.Add([]byte(seed))
	}
	names := []string{keybundle.FlagStable, keybundle.FlagRust, keybundle.FlagUnstable}
	f.Fuzz(func(t *testing.T, data []byte) {
		got := keybundle.HistoryFlagJSON(data)
		if !got {
			return
		}
		var fields map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(data, &fields), "true for input that is no JSON object: %q", data)
		present := 0
		for _, name := range names {
			raw, ok := fields[name]
			if !ok {
				continue
			}
			present++
			require.Equal(t, "true", string(bytes.TrimSpace(raw)), "true although %s is %s", name, raw)
		}
		require.NotZero(t, present, "true without any history flag: %q", data)
		require.True(t, keybundle.HistoryFlag(fields))
	})
}
