package e2ee_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/e2ee"
)

// heirloom encrypts only with an m.room.encryption it reads exactly as the homeserver's clients
// do: megolm, rotation settings that are non-negative integers, keys matched exactly. Anything
// else leaves a room it is in encrypted with nothing to encrypt with: sends are refused.
func TestUsableEncryption(t *testing.T) {
	for _, tc := range []struct{ content, want string }{
		{`{"algorithm":"m.megolm.v1.aes-sha2"}`, `{"algorithm":"m.megolm.v1.aes-sha2"}`},
		{`{"algorithm":"m.megolm.v1.aes-sha2","rotation_period_ms":604800000,"rotation_period_msgs":100}`,
			`{"algorithm":"m.megolm.v1.aes-sha2","rotation_period_ms":604800000,"rotation_period_msgs":100}`},
		{`{"algorithm":"m.megolm.v1.aes-sha2","other":{"anything":[1]}}`, `{"algorithm":"m.megolm.v1.aes-sha2"}`},
		{`{"algorithm":"m.megolm.v1.aes-sha2","rotation_period_ms":"604800000"}`, ""},
		{`{"algorithm":"m.megolm.v1.aes-sha2","rotation_period_ms":-1}`, ""},
		{`{"algorithm":"m.megolm.v1.aes-sha2","rotation_period_msgs":1.5}`, ""},
		{`{"algorithm":"m.megolm.v1.aes-sha2","rotation_period_msgs":null}`, ""},
		{`{"Algorithm":"m.megolm.v1.aes-sha2"}`, ""},
		{`{"algorithm":"m.megolm.v2.aes-sha2"}`, ""},
		{`{"algorithm":"m.unknown"}`, ""},
		{`{}`, ""},
		{`[]`, ""},
		{`"m.megolm.v1.aes-sha2"`, ""},
	} {
		t.Run(tc.content, func(t *testing.T) {
			require.Equal(t, tc.want, e2ee.UsableEncryption(json.RawMessage(tc.content)))
		})
	}
}
