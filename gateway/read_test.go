package gateway_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

// What a bridge user reads of a room (a single event, a thread's relations, a page of history)
// comes decrypted where the user holds the key; an event whose key it lacks comes as the
// homeserver sent it; an answer without encrypted events, or a refusal, is the homeserver's, byte
// for byte.
func TestBridgeReadsDecrypted(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	room := id.RoomID("!r:localhost")
	const reader = id.UserID("@irc_reader:localhost")
	require.NoError(t, h.db.PutPuppet(ctx, &database.Puppet{UserID: reader, DeviceID: "READER", Ready: true}))
	p, err := h.mgr.Get(ctx, reader)
	require.NoError(t, err)
	known, unknown := newRemoteSender(t, room), newRemoteSender(t, room)
	known.giveKey(t, p, room)
	pushState(t, h, "1", memberEvent("$join", string(reader), string(reader), "join"))

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
		"/event/$gone":            "",
	}
	h.hs.setAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) {
		_, rest, _ := strings.Cut(r.URL.Path, string(room))
		if answer := answers[rest]; answer != "" {
			answerJSON(http.StatusOK, answer)(w, r, body)
			return
		}
		answerJSON(http.StatusNotFound, `{"errcode":"M_NOT_FOUND","error":"Event not found"}`)(w, r, body)
	})
	read := func(path string) (int, []byte) {
		version := "v3"
		if strings.HasPrefix(path, "/relations/") {
			version = "v1"
		}
		resp := h.do(t, http.MethodGet, "/_matrix/client/"+version+"/rooms/"+string(room)+path+"?user_id="+string(reader), bridgeAS, "")
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
