package server_test

import (
	"testing"

	"github.com/heirloom-matrix/heirloom/server"
)

// FuzzParseTransaction: any body parses or fails cleanly, never panics, and what parsed is usable.
func FuzzParseTransaction(f *testing.F) {
	for _, seed := range []string{
		`{"events":[{"type":"m.room.member","room_id":"!r:hs","sender":"@a:hs","state_key":"@b:hs","event_id":"$e","content":{"membership":"invite"}}]}`,
		`{"de.sorunome.msc2409.to_device":[{"type":"m.room.encrypted","sender":"@a:hs","to_user_id":"@b:hs","to_device_id":"D","content":{"algorithm":"m.olm.v1.curve25519-aes-sha2","ciphertext":{}}}]}`,
		`{"org.matrix.msc3202.device_lists":{"changed":["@a:hs"],"left":[]},"org.matrix.msc3202.device_one_time_keys_count":{"@b:hs":{"D":{"signed_curve25519":3}}}}`,
		`{"events":5,"to_device":"x","ephemeral":[null,1,{}]}`,
		`null`, `[]`, `{`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		txn, err := server.ParseTransaction(data)
		if err != nil {
			return
		}
		for _, evt := range append(append(txn.Events, txn.Ephemeral...), txn.ToDevice...) {
			if evt == nil || evt.Type.Type == "" {
				t.Fatalf("a parsed event has no type: %+v", evt)
			}
		}
		if txn.Invalid < 0 {
			t.Fatal("negative invalid count")
		}
	})
}
