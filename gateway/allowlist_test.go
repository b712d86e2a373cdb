package gateway_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"
)

// eventWithPayload returns an m.room.encrypted event of the session whose plaintext is the given
// payload (raw JSON of type, content and whatever else a sender puts there), as the homeserver
// pushes it.
func (s *remoteSender) eventWithPayload(t *testing.T, eventID string, roomID id.RoomID, payload string) string {
	t.Helper()
	ciphertext, err := s.ogs.Encrypt([]byte(payload))
	require.NoError(t, err)
	content, err := json.Marshal(map[string]any{"algorithm": id.AlgorithmMegolmV1, "ciphertext": string(ciphertext),
		"sender_key": s.senderKey, "device_id": "REMOTE", "session_id": s.ogs.ID()})
	require.NoError(t, err)
	return `{"type":"m.room.encrypted","event_id":"` + eventID + `","room_id":"` + string(roomID) + `","sender":"@alice:localhost",` +
		`"origin_server_ts":5,"content":` + string(content) + `}`
}

// forgedPayloads are encrypted payloads whose type the homeserver would have had to authorise had
// they been sent in the clear (a redaction of someone else's message, power levels, a membership),
// or that no client shows.
var forgedPayloads = map[string]string{
	"$redaction":   `{"type":"m.room.redaction","room_id":"ROOM","redacts":"$someone_elses_message","content":{"redacts":"$someone_elses_message","reason":"spam"}}`,
	"$powerlevels": `{"type":"m.room.power_levels","room_id":"ROOM","content":{"users":{"@mallory:localhost":100}}}`,
	"$member":      `{"type":"m.room.member","room_id":"ROOM","state_key":"@mallory:localhost","content":{"membership":"join"}}`,
	"$nested":      `{"type":"m.room.encrypted","room_id":"ROOM","content":{"algorithm":"m.megolm.v1.aes-sha2","ciphertext":"x"}}`,
	"$custom":      `{"type":"org.example.anything","room_id":"ROOM","content":{"body":"what is this"}}`,
}

// allowedPayloads are message-like events a client shows from encrypted content.
var allowedPayloads = map[string]string{
	"$message": `{"type":"m.room.message","room_id":"ROOM","content":{"msgtype":"m.text","body":"hello"}}`,
	// A state_key in the payload of a timeline event: the message goes, the state_key never does.
	"$statekey": `{"type":"m.room.message","room_id":"ROOM","state_key":"","content":{"msgtype":"m.text","body":"as state"}}`,
	"$reaction": `{"type":"m.reaction","room_id":"ROOM","content":{"m.relates_to":{"rel_type":"m.annotation","event_id":"$message","key":"👍"}}}`,
	"$sticker":  `{"type":"m.sticker","room_id":"ROOM","content":{"body":"a sticker","url":"mxc://localhost/sticker","info":{}}}`,
	"$poll":     `{"type":"org.matrix.msc3381.poll.start","room_id":"ROOM","content":{"org.matrix.msc3381.poll.start":{"question":{"body":"?"},"answers":[]}}}`,
	"$call":     `{"type":"m.call.invite","room_id":"ROOM","content":{"call_id":"c1","version":"1","lifetime":60000,"offer":{"type":"offer","sdp":"v=0"}}}`,
}

// A room member's encrypted payload reaches the bridge decrypted only for message-like types a
// client honours from encrypted content; anything else (a redaction, power levels, a membership, a
// nested encryption, a type nobody knows) goes to the bridge as it arrived, encrypted, and the
// bridge's copy never gets a state_key from decrypted content.
func TestDecryptedPayloadTypeAllowList(t *testing.T) {
	h := newHarness(t)
	room := id.RoomID("!r:localhost")
	p := h.newReader(t)
	h.run(t)
	sender := newRemoteSender(t, room)
	sender.giveKey(t, p, room)
	events := []string{readerJoins("$join", "!r:localhost")}
	for _, set := range []map[string]string{forgedPayloads, allowedPayloads} {
		for eventID, payload := range set {
			events = append(events, sender.eventWithPayload(t, eventID, room, strings.ReplaceAll(payload, "ROOM", string(room))))
		}
	}
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS, `{"events":[`+strings.Join(events, ",")+`]}`).status)
	require.EventuallyWithT(t, func(c *assert.CollectT) { require.Len(c, deliveredEvents(c, h.bridge), len(events)) }, 10*time.Second,
		20*time.Millisecond)
	for _, ev := range deliveredEvents(t, h.bridge) {
		eventID := ev["event_id"].(string)
		if _, forged := forgedPayloads[eventID]; forged {
			require.Equal(t, "m.room.encrypted", ev["type"], "%s reached the bridge as %v", eventID, ev)
			require.NotContains(t, ev, "state_key", eventID)
			require.NotContains(t, ev, "redacts", eventID)
		}
		if _, ok := allowedPayloads[eventID]; ok {
			require.NotEqual(t, "m.room.encrypted", ev["type"], "%s is decrypted for the bridge", eventID)
			require.NotContains(t, ev, "state_key", eventID)
		}
	}

	// The same in what the bridge reads: /messages, /context, /event.
	chunk := []string{}
	for _, set := range []map[string]string{forgedPayloads, allowedPayloads} {
		for eventID, payload := range set {
			chunk = append(chunk, sender.eventWithPayload(t, eventID, room, strings.ReplaceAll(payload, "ROOM", string(room))))
		}
	}
	// An encrypted state event (its state_key is the homeserver's) holding a message.
	stateOne := strings.Replace(sender.eventWithPayload(t, "$encstate", room, strings.ReplaceAll(allowedPayloads["$message"], "ROOM", string(room))),
		`"type":"m.room.encrypted",`, `"type":"m.room.encrypted","state_key":"",`, 1)
	chunk = append(chunk, stateOne)
	h.hs.setAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/messages"):
			answerJSON(http.StatusOK, `{"chunk":[`+strings.Join(chunk, ",")+`],"start":"s","end":"e"}`)(w, r, body)
		case strings.Contains(r.URL.Path, "/context/"):
			answerJSON(http.StatusOK, `{"event":`+chunk[0]+`,"events_before":[`+strings.Join(chunk[1:], ",")+`],"events_after":[],"state":[]}`)(w, r, body)
		default:
			answerJSON(http.StatusNotFound, `{"errcode":"M_NOT_FOUND"}`)(w, r, body)
		}
	})
	for _, path := range []string{"/messages?dir=b&user_id=" + string(reader), "/context/$x?user_id=" + string(reader)} {
		resp := h.do(t, http.MethodGet, "/_matrix/client/v3/rooms/"+string(room)+path, bridgeAS, "")
		require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
		var answer map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(resp.body, &answer))
		var all []map[string]any
		for _, key := range []string{"chunk", "events_before", "events_after"} {
			var list []map[string]any
			_ = json.Unmarshal(answer[key], &list)
			all = append(all, list...)
		}
		if one, ok := answer["event"]; ok {
			var ev map[string]any
			require.NoError(t, json.Unmarshal(one, &ev))
			all = append(all, ev)
		}
		require.Len(t, all, len(chunk), path)
		for _, ev := range all {
			eventID := ev["event_id"].(string)
			_, forged := forgedPayloads[eventID]
			if forged || eventID == "$encstate" {
				require.Equal(t, "m.room.encrypted", ev["type"], "%s in %s: %v", eventID, path, ev)
			} else {
				require.NotEqual(t, "m.room.encrypted", ev["type"], "%s in %s is decrypted", eventID, path)
			}
		}
	}
}
