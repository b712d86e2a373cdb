package gateway_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"
)

// formBridge refuses (500) every transaction holding one of the events in refuse in one of the
// forms (types) listed for it, and keeps the type of each event it accepted.
type formBridge struct {
	mu       sync.Mutex
	refuse   map[string][]string
	accepted map[string]string
}

func (b *formBridge) answer(w http.ResponseWriter, r *http.Request, body []byte) {
	var txn bridgeTxn
	_ = json.Unmarshal(body, &txn)
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, ev := range txn.Events {
		for _, typ := range b.refuse[fmt.Sprint(ev["event_id"])] {
			if ev["type"] == typ {
				answerJSON(http.StatusInternalServerError, `{"errcode":"M_UNKNOWN","error":"Internal appservice error"}`)(w, r, body)
				return
			}
		}
	}
	for _, ev := range txn.Events {
		b.accepted[fmt.Sprint(ev["event_id"])] = fmt.Sprint(ev["type"])
	}
	answerJSON(http.StatusOK, `{}`)(w, r, body)
}

func (b *formBridge) typeOf(eventID string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.accepted[eventID]
}

// A bridge that refuses heirloom's decrypted copy of an event every time gets the event as it
// arrived, encrypted, as it would without heirloom, before anything is set aside. One that refuses
// that too has it set aside; resent by an operator once the bridge is fixed, it goes decrypted.
func TestRefusedDecryptedEventGoesAsItArrived(t *testing.T) {
	h := newHarness(t)
	clock := useFakeClock(h)
	bridge := &formBridge{accepted: map[string]string{}, refuse: map[string][]string{
		"$decrypted": {"m.room.message"}, "$both": {"m.room.message", "m.room.encrypted"}}}
	h.bridge.setAnswer(bridge.answer)
	roomX := id.RoomID("!x:localhost")
	p := h.newReader(t)
	h.run(t)
	sender := newRemoteSender(t, roomX)
	sender.giveKey(t, p, roomX)
	txn := `{"events":[` + readerJoins("$jx", roomX) + `,` +
		sender.event(t, "$decrypted", roomX, "the bridge fails on this one") + `,` + sender.event(t, "$after", roomX, "after it") + `,` +
		sender.event(t, "$both", roomX, "and on this one, in any form") + `,` + sender.event(t, "$last", roomX, "last") + `]}`
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS, txn).status)

	start := clock.Now()
	for bridge.typeOf("$last") == "" {
		require.Less(t, clock.Now().Sub(start), 5*time.Minute, "the room never went on")
		clock.Advance(5 * time.Second)
		time.Sleep(50 * time.Millisecond)
	}
	require.Equal(t, "m.room.encrypted", bridge.typeOf("$decrypted"), "the bridge got the event as it arrived")
	require.Equal(t, "m.room.message", bridge.typeOf("$after"))
	require.Empty(t, bridge.typeOf("$both"))
	st := gatewayStatus(t, h)
	require.Len(t, st.DeadLetters, 1, "%+v", st)
	require.Equal(t, "$both", st.DeadLetters[0].EventID)
	require.Equal(t, setAsideRefusals+1, st.DeadLetters[0].Refusals, "refused decrypted every time, then as it arrived")

	bridge.mu.Lock()
	bridge.refuse = nil
	bridge.mu.Unlock()
	resp := h.do(t, http.MethodPost, "/_heirloom/v1/gateway/dead_letters/resend", "api-secret-0123456789abcdef", `{"event_id":"$both"}`)
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
	require.Eventually(t, func() bool { return bridge.typeOf("$both") != "" }, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, "m.room.message", bridge.typeOf("$both"), "resent, it goes decrypted")
}
