package e2ee

import (
	"encoding/json"
	"testing"

	"maunium.net/go/mautrix/event"

	"github.com/heirloom-matrix/heirloom/keybundle"
)

// FuzzRoomKeyContent feeds arbitrary m.room_key contents through the parser mautrix calls for
// heirloom (event.TypeMap): it must never panic, and the history flag it reads must be what
// keybundle.HistoryFlagJSON says about the same bytes.
func FuzzRoomKeyContent(f *testing.F) {
	for _, seed := range []string{
		`{"algorithm":"m.megolm.v1.aes-sha2","room_id":"!r:hs","session_id":"s","session_key":"k","shared_history":true,"org.matrix.msc3061.shared_history":true}`,
		`{"algorithm":"m.megolm.v1.aes-sha2","room_id":"!r:hs","session_id":"s","session_key":"k","m.shared_history":true}`,
		`{"algorithm":"m.megolm.v1.aes-sha2","shared_history":"yes"}`,
		`{"shared_history":true,"m.shared_history":false}`,
		`{"room_id":5}`, `null`, `[]`, `{}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		content := event.Content{VeryRaw: data}
		if err := content.ParseRaw(event.ToDeviceRoomKey); err != nil || content.Parsed == nil {
			return // rejected, or JSON null: handleToDevice ignores a content it cannot type
		}
		parsed, ok := content.Parsed.(*RoomKeyContent)
		if !ok {
			t.Fatalf("m.room_key parsed into %T, not heirloom's RoomKeyContent", content.Parsed)
		}
		if want := keybundle.HistoryFlagJSON(data); parsed.HistoryShared != want {
			t.Fatalf("history flag %v, keybundle says %v for %s", parsed.HistoryShared, want, data)
		}
		if parsed.SharedHistory == nil || *parsed.SharedHistory != parsed.HistoryShared {
			t.Fatalf("mautrix's SharedHistory field disagrees with the flag read")
		}
	})
}

// FuzzBundleContent feeds arbitrary m.room_key_bundle contents (both type names) through the
// parser: never a panic, and an accepted one keeps its room ID.
func FuzzBundleContent(f *testing.F) {
	f.Add([]byte(`{"room_id":"!r:hs","file":{"v":"v2","url":"mxc://hs/x","key":{"alg":"A256CTR","ext":true,"k":"aWF6","key_ops":["encrypt","decrypt"],"kty":"oct"},"iv":"w+sE15fzSc0AAAAAAAAAAA","hashes":{"sha256":"fdSL"}}}`))
	f.Add([]byte(`{"room_id":null,"file":5}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, typ := range []event.Type{event.ToDeviceRoomKeyBundle, toDeviceRoomKeyBundleUnstable} {
			content := event.Content{VeryRaw: data}
			if err := content.ParseRaw(typ); err != nil || content.Parsed == nil {
				continue
			}
			parsed, ok := content.Parsed.(*BundleContent)
			if !ok {
				t.Fatalf("%s parsed into %T", typ.Type, content.Parsed)
			}
			var probe struct {
				RoomID string `json:"room_id"`
			}
			if json.Unmarshal(data, &probe) == nil && string(parsed.RoomID) != probe.RoomID {
				t.Fatalf("room ID %q read as %q", probe.RoomID, parsed.RoomID)
			}
			_ = parsed.File.PrepareForDecryption()
		}
	})
}

// A forwarded room key parses into heirloom's own type, which handleToDevice refuses: mautrix's
// handler, which would store an unsolicited key from anyone, never sees it.
func TestForwardedRoomKeyIsHeirloomsType(t *testing.T) {
	content := event.Content{VeryRaw: []byte(`{"algorithm":"m.megolm.v1.aes-sha2","room_id":"!r:hs","session_id":"s","session_key":"k","sender_key":"c","sender_claimed_ed25519_key":"e","forwarding_curve25519_key_chain":[]}`)}
	if err := content.ParseRaw(event.ToDeviceForwardedRoomKey); err != nil {
		t.Fatal(err)
	}
	if _, ok := content.Parsed.(*forwardedRoomKeyContent); !ok {
		t.Fatalf("m.forwarded_room_key parsed into %T", content.Parsed)
	}
}
