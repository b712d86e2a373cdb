package keybundle_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"

	"github.com/heirloom-matrix/heirloom/keybundle"
)

func TestHistoryFlagJSON(t *testing.T) {
	for _, tc := range []struct {
		name string
		json string
		want bool
	}{
		{"stable name true", `{"shared_history": true}`, true},
		{"rust-sdk name true", `{"m.shared_history": true}`, true},
		{"unstable name true", `{"org.matrix.msc3061.shared_history": true}`, true},
		{"stable name false", `{"shared_history": false}`, false},
		{"rust-sdk name false", `{"m.shared_history": false}`, false},
		{"unstable name false", `{"org.matrix.msc3061.shared_history": false}`, false},
		{"absent", `{"room_id": "!r:hs", "session_id": "abc"}`, false},
		{"empty object", `{}`, false},
		{"string true", `{"shared_history": "true"}`, false},
		{"number one", `{"m.shared_history": 1}`, false},
		{"null", `{"org.matrix.msc3061.shared_history": null}`, false},
		{"object", `{"shared_history": {}}`, false},
		{"true beside a non-boolean", `{"shared_history": true, "m.shared_history": "yes"}`, false},
		{"stable true, unstable false", `{"shared_history": true, "org.matrix.msc3061.shared_history": false}`, false},
		{"rust true, stable false", `{"m.shared_history": true, "shared_history": false}`, false},
		{"unstable true, rust false", `{"org.matrix.msc3061.shared_history": true, "m.shared_history": false}`, false},
		{"heirloom's pair, both true", `{"shared_history": true, "org.matrix.msc3061.shared_history": true}`, true},
		{"all three true", `{"shared_history": true, "m.shared_history": true, "org.matrix.msc3061.shared_history": true}`, true},
		{"all three false", `{"shared_history": false, "m.shared_history": false, "org.matrix.msc3061.shared_history": false}`, false},
		{"look-alike name", `{"Shared_History": true, "shared-history": true, "m.shared_history ": true}`, false},
		{"nested, not top level", `{"content": {"shared_history": true}}`, false},
		{"array", `[{"shared_history": true}]`, false},
		{"JSON true", `true`, false},
		{"JSON null", `null`, false},
		{"not JSON", `{"shared_history": tru`, false},
		{"empty input", ``, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, keybundle.HistoryFlagJSON([]byte(tc.json)))
			var fields map[string]json.RawMessage
			if json.Unmarshal([]byte(tc.json), &fields) == nil {
				require.Equal(t, tc.want, keybundle.HistoryFlag(fields), "HistoryFlag must agree with HistoryFlagJSON")
			}
		})
	}
}

func TestHistoryFlagNilMap(t *testing.T) {
	require.False(t, keybundle.HistoryFlag(nil))
}

func TestSendFlagFields(t *testing.T) {
	for _, shared := range []bool{true, false} {
		fields := keybundle.SendFlagFields(shared)
		require.Equal(t, map[string]any{
			"shared_history":                    shared,
			"org.matrix.msc3061.shared_history": shared,
		}, fields)
		// rust-sdk rejects the whole m.room_key when m.shared_history comes with the unstable name.
		require.NotContains(t, fields, keybundle.FlagRust)

		// Whatever heirloom sends, heirloom reads back the same way.
		data, err := json.Marshal(fields)
		require.NoError(t, err)
		require.Equal(t, shared, keybundle.HistoryFlagJSON(data))
	}
}

func TestVisibilitySharesHistory(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content *event.HistoryVisibilityEventContent
		want    bool
	}{
		{"no event means shared", nil, true},
		{"shared", &event.HistoryVisibilityEventContent{HistoryVisibility: event.HistoryVisibilityShared}, true},
		{"world_readable", &event.HistoryVisibilityEventContent{HistoryVisibility: event.HistoryVisibilityWorldReadable}, true},
		{"joined", &event.HistoryVisibilityEventContent{HistoryVisibility: event.HistoryVisibilityJoined}, false},
		{"invited", &event.HistoryVisibilityEventContent{HistoryVisibility: event.HistoryVisibilityInvited}, false},
		{"unknown value", &event.HistoryVisibilityEventContent{HistoryVisibility: "org.example.everyone"}, false},
		{"empty value", &event.HistoryVisibilityEventContent{}, false},
		{"wrong case", &event.HistoryVisibilityEventContent{HistoryVisibility: "Shared"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, keybundle.VisibilitySharesHistory(tc.content))
		})
	}
}
