package gateway_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"
)

// What a bridge user reads of a room (a single event, a thread's relations, a page of history)
// comes decrypted where the user holds the key; an event whose key it lacks comes as the
// homeserver sent it; an answer without encrypted events, or a refusal, is the homeserver's, byte
// for byte.
func TestBridgeReadsDecrypted(t *testing.T) {
	h := newHarness(t)
	room := id.RoomID("!r:localhost")
	p := h.newReader(t)
	known, unknown := newRemoteSender(t, room), newRemoteSender(t, room)
	known.giveKey(t, p, room)
	pushState(t, h, "1", readerJoins("$join", "!r:localhost"))

	message := known.event(t, "$message", room, "the first line")
	reply := known.event(t, "$reply", room, "in the thread")
	locked := unknown.event(t, "$locked", room, "no key for this")
	plain := `{"type":"m.room.message","event_id":"$plain","room_id":"!r:localhost","sender":"@alice:localhost","origin_server_ts":1,` +
		`"content":{"msgtype":"m.text","body":"in the clear"}}`
	answers := map[string]string{
		"/event/$message":         message,
		"/event/$locked":          locked,
		"/event/$plain":           plain,
		"/relations/$message":     `{"chunk":[` + reply + `,` + locked + `],"next_batch":"n"}`,
		"/relations/$plain/m.ref": `{"chunk":[` + plain + `]}`,
		"/messages":               `{"chunk":[` + plain + `],"start":"s","end":"e"}`,
	}
	h.answerPaths(answers)
	read := func(path string) (int, []byte) {
		resp := h.readAs(t, room, path)
		return resp.status, resp.body
	}
	decrypted := func(raw json.RawMessage) map[string]any {
		var ev map[string]any
		require.NoError(t, json.Unmarshal(raw, &ev))
		return ev
	}

	status, body := read("/event/$message")
	require.Equal(t, http.StatusOK, status, "%s", body)
	ev := decrypted(body)
	require.Equal(t, "m.room.message", ev["type"])
	require.Equal(t, "the first line", ev["content"].(map[string]any)["body"])
	require.Equal(t, "$message", ev["event_id"])

	status, body = read("/event/$locked")
	require.Equal(t, http.StatusOK, status)
	require.JSONEq(t, locked, string(body), "no key: as the homeserver sent it")

	status, body = read("/relations/$message")
	require.Equal(t, http.StatusOK, status)
	var page struct {
		Chunk     []json.RawMessage `json:"chunk"`
		NextBatch string            `json:"next_batch"`
	}
	require.NoError(t, json.Unmarshal(body, &page))
	require.Len(t, page.Chunk, 2)
	require.Equal(t, "in the thread", decrypted(page.Chunk[0])["content"].(map[string]any)["body"])
	require.JSONEq(t, locked, string(page.Chunk[1]))
	require.Equal(t, "n", page.NextBatch, "the pagination stays")

	for path, want := range map[string]string{"/event/$plain": plain, "/relations/$plain/m.ref": answers["/relations/$plain/m.ref"],
		"/messages": answers["/messages"]} {
		status, body = read(path)
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, want, strings.TrimSpace(string(body)), "%s: the homeserver's answer", path)
	}
	status, body = read("/event/$gone")
	require.Equal(t, http.StatusNotFound, status)
	require.JSONEq(t, `{"errcode":"M_NOT_FOUND","error":"Event not found"}`, string(body))
}
