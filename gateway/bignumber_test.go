package gateway_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"
)

// pythonIntDigits is CPython's default int_max_str_digits (3.11+): json.loads raises ValueError
// (not the JSONDecodeError mautrix-python catches) on an integer literal with more digits, and
// aiohttp answers 500. Measured with heisenbridge 1.15.4's virtualenv (mautrix 0.20.8, aiohttp
// 3.14.5, Python 3.11): with 5,000 digits it answers 500.
const pythonIntDigits = 4300

// longestIntLiteral is the longest run of digits outside JSON strings (an integer literal, or
// the integer part of a number).
func longestIntLiteral(data []byte) int {
	longest, run := 0, 0
	inString, escaped := false, false
	for _, c := range data {
		switch {
		case escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		case !inString && c >= '0' && c <= '9':
			run++
			longest = max(longest, run)
			continue
		}
		run = 0
	}
	return longest
}

// numberPayload is an m.room.message payload carrying value as a number the homeserver would
// never let through in the clear (canonical JSON: integers within ±(2^53-1), no floats).
func numberPayload(room id.RoomID, value, pad string) string {
	return `{"type":"m.room.message","room_id":"` + string(room) + `","content":{"msgtype":"m.text","body":"hi` + pad +
		`","n":` + value + `}}`
}

// Decrypted content is bounded in depth and size, not in its numbers; but an integer Python
// refuses (over 4,300 digits) is far beyond float64, and mautrix's parse of the megolm payload
// (numbers into float64) fails on it: the event goes to the bridge as it arrived, encrypted.
func TestDecryptedIntegerPythonCannotParseGoesEncrypted(t *testing.T) {
	h := newHarness(t)
	bridge := &pythonBridge{}
	h.bridge.setAnswer(bridge.answer)
	roomX, roomY := id.RoomID("!x:localhost"), id.RoomID("!y:localhost")
	p := h.newReader(t)
	h.run(t)
	sender := newRemoteSender(t, roomX)
	sender.giveKey(t, p, roomX)
	bigInt := sender.eventWithPayload(t, "$bigint", roomX, numberPayload(roomX, strings.Repeat("9", 5000), ""))
	txn := `{"events":[` + readerJoins("$jx", roomX) + `,` +
		readerJoins("$jy", roomY) + `,` + bigInt + `,` +
		inRoom(messageEvent("$inY", "@alice:localhost", "room Y goes on"), roomY) + `]}`
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS, txn).status)
	require.EventuallyWithT(t, func(c *assert.CollectT) { require.Contains(c, bridge.types(), "$inY") }, 10*time.Second, 20*time.Millisecond)
	time.Sleep(500 * time.Millisecond)
	got := bridge.types()
	bridge.mu.Lock()
	refused := bridge.refused
	bridge.mu.Unlock()
	require.Zero(t, refused, "heirloom handed heisenbridge a transaction its JSON parser refuses (500)")
	require.Equal(t, "m.room.encrypted", got["$bigint"], "an integer the homeserver never lets through in the clear goes to the bridge encrypted")
}
