package keybundle

import (
	"bytes"
	"encoding/json"
	"testing"

	"maunium.net/go/mautrix/id"
)

// The hand-written room_keys entry is exactly what encoding/json writes for a RoomKey.
func FuzzWriteRoomKeyMatchesEncodingJSON(f *testing.F) {
	for _, seed := range []string{"!room:hs", "", "quote\"back\\slash", "<&>", "tab\tnl\n\x01", "\b\f", "é\u2028\u2029", "\xff\xfe bad utf8"} {
		f.Add(seed, "AQAAAAsessionkey+/=")
	}
	f.Fuzz(func(t *testing.T, text, key string) {
		s := Held{RoomID: id.RoomID(text), SessionID: id.SessionID(text + "s"), SenderKey: id.SenderKey(key), SigningKey: id.Ed25519(text)}
		var got bytes.Buffer
		b := NewBuilder(&got, s.RoomID, "DEV")
		b.writeRoomKey(s, key)
		if err := b.w.Flush(); err != nil {
			t.Fatal(err)
		}
		want, err := json.Marshal(RoomKey{
			Algorithm: id.AlgorithmMegolmV1, RoomID: s.RoomID, SenderKey: s.SenderKey, SessionID: s.SessionID,
			SessionKey: key, SenderClaimedKeys: SenderClaimedKeys{Ed25519: s.SigningKey},
		})
		if err != nil {
			t.Fatal(err)
		}
		if got.String() != string(want) {
			t.Fatalf("hand-written\n%s\nencoding/json\n%s", got.String(), want)
		}
	})
}
