package server_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/server"
)

const (
	messageEvent = `{"type":"m.room.message","room_id":"!r:hs","sender":"@a:hs","event_id":"$m","origin_server_ts":1,"content":{"msgtype":"m.text","body":"hi"}}`
	stateEvent   = `{"type":"m.room.history_visibility","state_key":"","room_id":"!r:hs","sender":"@a:hs","event_id":"$s","origin_server_ts":1,"content":{"history_visibility":"joined"}}`
	unknownEvent = `{"type":"org.example.custom","room_id":"!r:hs","sender":"@a:hs","event_id":"$u","content":{"x":[1,2]}}`
	receipt      = `{"type":"m.receipt","room_id":"!r:hs","content":{}}`
	toDevice     = `{"type":"m.room.encrypted","sender":"@a:hs","to_user_id":"@heirloom_b:hs","to_device_id":"DEV","content":{"algorithm":"m.olm.v1.curve25519-aes-sha2","sender_key":"k","ciphertext":{}}}`
	bundleEvent  = `{"type":"io.element.msc4268.room_key_bundle","sender":"@a:hs","to_user_id":"@heirloom_b:hs","to_device_id":"DEV","content":{}}`
	deviceLists  = `{"changed":["@a:hs"],"left":["@gone:hs"]}`
	otkCounts    = `{"@heirloom_b:hs":{"DEV":{"signed_curve25519":7}}}`
)

func types(events []*event.Event) []string {
	out := []string{}
	for _, evt := range events {
		out = append(out, evt.Type.Type)
	}
	return out
}

func TestParseTransaction(t *testing.T) {
	for _, tc := range []struct {
		name         string
		body         string
		wantEvents   []string
		wantEph      []string
		wantToDevice []string
		wantChanged  []id.UserID
		wantLeft     []id.UserID
		wantOTK      int // signed_curve25519 count of @heirloom_b:hs's DEV; -1 = none
		wantInvalid  int
	}{{
		name: "stable section names",
		body: `{"events":[` + messageEvent + `,` + stateEvent + `],"ephemeral":[` + receipt + `],"to_device":[` + toDevice + `],` +
			`"device_lists":` + deviceLists + `,"device_one_time_keys_count":` + otkCounts + `}`,
		wantEvents: []string{"m.room.message", "m.room.history_visibility"}, wantEph: []string{"m.receipt"},
		wantToDevice: []string{"m.room.encrypted"}, wantChanged: []id.UserID{"@a:hs"}, wantLeft: []id.UserID{"@gone:hs"}, wantOTK: 7,
	}, {
		name: "unstable MSC2409 and MSC3202 section names",
		body: `{"events":[],"de.sorunome.msc2409.ephemeral":[` + receipt + `],"de.sorunome.msc2409.to_device":[` + toDevice + `,` + bundleEvent + `],` +
			`"org.matrix.msc3202.device_lists":` + deviceLists + `,"org.matrix.msc3202.device_one_time_keys_count":` + otkCounts + `}`,
		wantEvents: []string{}, wantEph: []string{"m.receipt"}, wantToDevice: []string{"m.room.encrypted", "io.element.msc4268.room_key_bundle"},
		wantChanged: []id.UserID{"@a:hs"}, wantLeft: []id.UserID{"@gone:hs"}, wantOTK: 7,
	}, {
		name:       "only events",
		body:       `{"events":[` + messageEvent + `]}`,
		wantEvents: []string{"m.room.message"}, wantEph: []string{}, wantToDevice: []string{}, wantOTK: -1,
	}, {
		name:       "empty object",
		body:       `{}`,
		wantEvents: []string{}, wantEph: []string{}, wantToDevice: []string{}, wantOTK: -1,
	}, {
		name:       "events is a number: the other sections still count",
		body:       `{"events":5,"to_device":[` + toDevice + `],"device_lists":` + deviceLists + `}`,
		wantEvents: []string{}, wantEph: []string{}, wantToDevice: []string{"m.room.encrypted"},
		wantChanged: []id.UserID{"@a:hs"}, wantLeft: []id.UserID{"@gone:hs"}, wantOTK: -1, wantInvalid: 1,
	}, {
		name:       "to_device is a string: the other sections still count",
		body:       `{"events":[` + messageEvent + `],"to_device":"x"}`,
		wantEvents: []string{"m.room.message"}, wantEph: []string{}, wantToDevice: []string{}, wantOTK: -1, wantInvalid: 1,
	}, {
		name:       "an event that is a number",
		body:       `{"events":[5,` + messageEvent + `]}`,
		wantEvents: []string{"m.room.message"}, wantEph: []string{}, wantToDevice: []string{}, wantOTK: -1, wantInvalid: 1,
	}, {
		name:       "events without a type",
		body:       `{"events":[{"room_id":"!r:hs","content":{}},{"type":"","content":{}},` + messageEvent + `]}`,
		wantEvents: []string{"m.room.message"}, wantEph: []string{}, wantToDevice: []string{}, wantOTK: -1, wantInvalid: 2,
	}, {
		name:       "known type with unparseable content",
		body:       `{"events":[{"type":"m.room.member","state_key":"@a:hs","room_id":"!r:hs","content":{"membership":5}},` + messageEvent + `]}`,
		wantEvents: []string{"m.room.message"}, wantEph: []string{}, wantToDevice: []string{}, wantOTK: -1, wantInvalid: 1,
	}, {
		name:       "unknown event type is kept",
		body:       `{"events":[` + unknownEvent + `]}`,
		wantEvents: []string{"org.example.custom"}, wantEph: []string{}, wantToDevice: []string{}, wantOTK: -1,
	}, {
		name:       "bad to-device entries among good ones",
		body:       `{"to_device":[null,"x",{"content":{}},` + toDevice + `]}`,
		wantEvents: []string{}, wantEph: []string{}, wantToDevice: []string{"m.room.encrypted"}, wantOTK: -1, wantInvalid: 3,
	}, {
		name:       "device lists and key counts of the wrong shape",
		body:       `{"device_lists":{"changed":"@a:hs"},"device_one_time_keys_count":[1],"events":[` + messageEvent + `]}`,
		wantEvents: []string{"m.room.message"}, wantEph: []string{}, wantToDevice: []string{}, wantOTK: -1, wantInvalid: 2,
	}, {
		name:       "unstable key counts used when the stable ones are broken",
		body:       `{"device_one_time_keys_count":"x","org.matrix.msc3202.device_one_time_keys_count":` + otkCounts + `}`,
		wantEvents: []string{}, wantEph: []string{}, wantToDevice: []string{}, wantOTK: 7, wantInvalid: 1,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			txn, err := server.ParseTransaction([]byte(tc.body))
			require.NoError(t, err)
			require.Equal(t, tc.wantEvents, types(txn.Events))
			require.Equal(t, tc.wantEph, types(txn.Ephemeral))
			require.Equal(t, tc.wantToDevice, types(txn.ToDevice))
			require.Equal(t, tc.wantChanged, txn.DeviceLists.Changed)
			require.Equal(t, tc.wantLeft, txn.DeviceLists.Left)
			if tc.wantOTK < 0 {
				require.Empty(t, txn.OTKCounts)
			} else {
				require.Equal(t, tc.wantOTK, txn.OTKCounts["@heirloom_b:hs"]["DEV"].SignedCurve25519)
			}
			require.Equal(t, tc.wantInvalid, txn.Invalid)
			for _, evt := range txn.ToDevice {
				require.Equal(t, event.ToDeviceEventType, evt.Type.Class, "to-device events get the to-device class")
			}
		})
	}
}

// The unused fallback key types come from the stable section or, when it is missing or broken,
// from MSC3202's; a device listed with none is kept, empty (its fallback key was handed out).
func TestParseTransactionUnusedFallbackKeys(t *testing.T) {
	const used = `{"@heirloom_b:hs":{"DEV":[]},"@heirloom_c:hs":{"DEV2":["signed_curve25519"]}}`
	for _, body := range []string{
		`{"device_unused_fallback_key_types":` + used + `}`,
		`{"org.matrix.msc3202.device_unused_fallback_key_types":` + used + `}`,
		`{"device_unused_fallback_key_types":[1],"org.matrix.msc3202.device_unused_fallback_key_types":` + used + `}`,
	} {
		txn, err := server.ParseTransaction([]byte(body))
		require.NoError(t, err)
		unused, listed := txn.UnusedFallback["@heirloom_b:hs"]["DEV"]
		require.True(t, listed, body)
		require.Empty(t, unused, body)
		require.Equal(t, []string{"signed_curve25519"}, txn.UnusedFallback["@heirloom_c:hs"]["DEV2"], body)
	}
	txn, err := server.ParseTransaction([]byte(`{"device_unused_fallback_key_types":"x"}`))
	require.NoError(t, err)
	require.Empty(t, txn.UnusedFallback)
	require.Equal(t, 1, txn.Invalid)

	// One user's malformed entry spoils only itself.
	txn, err = server.ParseTransaction([]byte(`{"org.matrix.msc3202.device_unused_fallback_key_types":` +
		`{"@heirloom_b:hs":{"DEV":[]},"@heirloom_x:hs":{"DEV":5},"@heirloom_y:hs":7}}`))
	require.NoError(t, err)
	_, listed := txn.UnusedFallback["@heirloom_b:hs"]["DEV"]
	require.True(t, listed)
	require.Len(t, txn.UnusedFallback, 1)
	require.Equal(t, 2, txn.Invalid)
}

// A stable section that is null is as good as missing: MSC3202's section, which Synapse sends,
// still counts (as it did for one-time key counts before the sections were parsed alike).
func TestParseTransactionNullStableSectionFallsBackToMSC3202(t *testing.T) {
	txn, err := server.ParseTransaction([]byte(`{"device_one_time_keys_count":null,` +
		`"org.matrix.msc3202.device_one_time_keys_count":{"@heirloom_b:hs":{"DEV":{"signed_curve25519":3}}},` +
		`"device_unused_fallback_key_types":null,` +
		`"org.matrix.msc3202.device_unused_fallback_key_types":{"@heirloom_b:hs":{"DEV":[]}}}`))
	require.NoError(t, err)
	require.Equal(t, 3, txn.OTKCounts["@heirloom_b:hs"]["DEV"].SignedCurve25519)
	_, listed := txn.UnusedFallback["@heirloom_b:hs"]["DEV"]
	require.True(t, listed)
}

func TestParseTransactionEventClassesAndContent(t *testing.T) {
	txn, err := server.ParseTransaction([]byte(`{"events":[` + messageEvent + `,` + stateEvent + `,` + unknownEvent + `],"to_device":[` + toDevice + `]}`))
	require.NoError(t, err)
	require.Len(t, txn.Events, 3)
	msg, state, unknown := txn.Events[0], txn.Events[1], txn.Events[2]
	require.Equal(t, event.MessageEventType, msg.Type.Class)
	require.Equal(t, "hi", msg.Content.AsMessage().Body)
	require.Equal(t, event.StateEventType, state.Type.Class)
	require.Equal(t, event.HistoryVisibilityJoined, state.Content.AsHistoryVisibility().HistoryVisibility)
	require.Nil(t, unknown.Content.Parsed, "an unknown type stays unparsed")
	require.JSONEq(t, `{"x":[1,2]}`, string(unknown.Content.VeryRaw))
	require.Equal(t, id.UserID("@heirloom_b:hs"), txn.ToDevice[0].ToUserID)
	require.Equal(t, id.DeviceID("DEV"), txn.ToDevice[0].ToDeviceID)
}

func TestParseTransactionRefusesNonObjects(t *testing.T) {
	for _, body := range []string{``, `not json`, `[]`, `"events"`, `5`, `{"events":[}`, `{"events":[]`} {
		t.Run(fmt.Sprintf("%q", body), func(t *testing.T) {
			_, err := server.ParseTransaction([]byte(body))
			require.Error(t, err)
		})
	}
}

func TestParseTransactionHugeToDeviceBatch(t *testing.T) {
	const n = 10_000
	entries := make([]string, n)
	for i := range entries {
		entries[i] = strings.Replace(toDevice, `"to_device_id":"DEV"`, fmt.Sprintf(`"to_device_id":"DEV%d"`, i), 1)
	}
	body := `{"de.sorunome.msc2409.to_device":[` + strings.Join(entries, ",") + `]}`
	require.True(t, json.Valid([]byte(body)))
	txn, err := server.ParseTransaction([]byte(body))
	require.NoError(t, err)
	require.Zero(t, txn.Invalid)
	require.Len(t, txn.ToDevice, n)
	require.Equal(t, id.DeviceID("DEV9999"), txn.ToDevice[n-1].ToDeviceID)
}
