package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto/attachment"
	"maunium.net/go/mautrix/event"

	"github.com/heirloom-matrix/heirloom/config"
)

// The content heirloom encrypts for the bridge is the content the bridge wrote: an integer beyond
// 2^53 and a number beyond float64 keep their digits inside the encrypted payload, not rounded to
// what a float64 holds.
func TestEncryptedSendKeepsNumbersAsWritten(t *testing.T) {
	const room = "!secret:localhost"
	h := newHarness(t)
	var mu sync.Mutex
	var sent []byte
	hs := e2eeHomeserver(room)
	h.hs.setAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) {
		if strings.Contains(r.URL.Path, "/send/m.room.encrypted/") {
			mu.Lock()
			sent = body
			mu.Unlock()
		}
		hs(w, r, body)
	})
	ctx := context.Background()
	for i, content := range []string{`{"msgtype":"m.text","body":"integers","n":9007199254740993,"neg":-12345678901234567890}`,
		`{"msgtype":"m.text","body":"beyond float64","big":1e400}`} {
		resp := h.do(t, http.MethodPut, fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/n%d?user_id=@irc_alice:localhost", room, i),
			bridgeAS, content)
		require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
		p, err := h.mgr.Get(ctx, "@irc_alice:localhost")
		require.NoError(t, err)
		// The megolm payload as the sender's session decrypts it (mautrix's own parse of it reads
		// numbers into float64, and refuses 1e400).
		var enc event.EncryptedEventContent
		mu.Lock()
		require.NoError(t, json.Unmarshal(sent, &enc))
		mu.Unlock()
		igs, err := p.Store.GetGroupSession(ctx, room, enc.SessionID)
		require.NoError(t, err)
		require.NotNil(t, igs)
		payload, _, err := igs.Internal.Decrypt(enc.MegolmCiphertext)
		require.NoError(t, err)
		var wrote map[string]json.RawMessage
		require.NoError(t, json.Unmarshal([]byte(content), &wrote))
		for key, value := range wrote {
			require.Contains(t, string(payload), `"`+key+`":`+string(value), "the encrypted payload changed what the bridge wrote")
		}
	}
}

// With gateway.encrypt_new_rooms, a room the bridge creates is encrypted unless the request sets
// the room's m.room.encryption itself, read as Synapse reads initial_state: only an entry with
// state key "" (or none) is the room's encryption; one with another state key, or a null one, is
// not, and heirloom adds the real one. A body heirloom cannot read is refused, not forwarded to
// make an unencrypted room. Numbers the bridge wrote go on as it wrote them.
func TestNewRoomEncryptionReadAsSynapseReadsIt(t *testing.T) {
	const created = `{"room_id":"!new:localhost"}`
	for _, tc := range []struct {
		name, body string
		added      bool
	}{
		{"no initial state", `{"preset":"private_chat"}`, true},
		{"another state key", `{"initial_state":[{"type":"m.room.encryption","state_key":"x","content":{"algorithm":"m.megolm.v1.aes-sha2"}}]}`, true},
		{"a null state key", `{"initial_state":[{"type":"m.room.encryption","state_key":null,"content":{"algorithm":"m.megolm.v1.aes-sha2"}}]}`, true},
		{"the room's own, state key missing", `{"initial_state":[{"type":"m.room.encryption","content":{"algorithm":"m.megolm.v1.aes-sha2"}}]}`, false},
		{"the room's own, state key empty", `{"initial_state":[{"type":"m.room.encryption","state_key":"","content":{"algorithm":"m.megolm.v1.aes-sha2"}}]}`, false},
		{"a number Go's float64 cannot hold", `{"preset":"private_chat","org.example.n":1e400}`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(c *config.Config) { c.Gateway.EncryptNewRooms = true })
			h.hs.setAnswer(answerJSON(http.StatusOK, created))
			resp := h.do(t, http.MethodPost, "/_matrix/client/v3/createRoom?user_id=@testbot:localhost", bridgeAS, tc.body)
			require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
			got := h.hs.seen()
			require.Len(t, got, 1)
			var req struct {
				InitialState []struct {
					Type     string          `json:"type"`
					StateKey *string         `json:"state_key"`
					Content  json.RawMessage `json:"content"`
				} `json:"initial_state"`
			}
			require.NoError(t, json.Unmarshal(got[0].Body, &req))
			encryption, roomWide := 0, 0
			for _, s := range req.InitialState {
				if s.Type != "m.room.encryption" {
					continue
				}
				encryption++
				if s.StateKey != nil && *s.StateKey == "" && strings.Contains(string(s.Content), "megolm") {
					roomWide++
				}
			}
			if tc.added {
				require.Equal(t, 1, roomWide, "heirloom adds the room's m.room.encryption: %s", got[0].Body)
				require.Equal(t, strings.Count(tc.body, "m.room.encryption")+1, encryption, "%s", got[0].Body)
			} else {
				require.Equal(t, 1, encryption, "the request's own is kept as it is: %s", got[0].Body)
			}
			if strings.Contains(tc.body, "1e400") {
				require.Contains(t, string(got[0].Body), `"org.example.n":1e400`)
			}
			rec, err := h.db.GetRoomEncryption(context.Background(), "!new:localhost")
			require.NoError(t, err)
			require.NotNil(t, rec, "the new room is recorded encrypted")
		})
	}
	for _, body := range []string{`{"preset":"private_chat"} {"x":1}`, `{"name":"\xff"}`, `[1]`, `{"name":NaN}`} {
		h := newHarness(t, func(c *config.Config) { c.Gateway.EncryptNewRooms = true })
		h.hs.setAnswer(answerJSON(http.StatusOK, created))
		resp := h.do(t, http.MethodPost, "/_matrix/client/v3/createRoom?user_id=@testbot:localhost", bridgeAS, body)
		require.Equal(t, http.StatusBadRequest, resp.status, "%q: %s", body, resp.body)
		require.Equal(t, "M_NOT_JSON", resp.errcode(t))
		require.Empty(t, h.hs.seen(), "%q reached the homeserver unencrypted", body)
	}
}

// A room's m.room.encryption in a createRoom request is the last one with the room's state key, as
// Synapse keeps it: that is the encryption heirloom records for the room.
func TestNewRoomEncryptionIsTheLastOfTheRequests(t *testing.T) {
	h := newHarness(t)
	h.hs.setAnswer(answerJSON(http.StatusOK, `{"room_id":"!new:localhost"}`))
	body := `{"initial_state":[{"type":"m.room.encryption","state_key":"","content":{"algorithm":"m.megolm.v1.aes-sha2"}},` +
		`{"type":"m.room.encryption","content":{"algorithm":"org.example.unknown"}}]}`
	resp := h.do(t, http.MethodPost, "/_matrix/client/v3/createRoom?user_id=@testbot:localhost", bridgeAS, body)
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
	rec, err := h.db.GetRoomEncryption(context.Background(), "!new:localhost")
	require.NoError(t, err)
	require.NotNil(t, rec)
	require.Contains(t, rec.Latest, "org.example.unknown")
	require.Empty(t, rec.Settings, "the room's encryption is the unknown algorithm: sends into it are refused")
}

// A decrypted file's media ID covers everything heirloom needs to serve it (URL, key, IV, hash): an
// uploader who names the same file and key with another IV or hash first gets an ID of their own,
// and the genuine event's file is still served, decrypted and checked.
func TestDecryptedMediaIDCoversIVAndHash(t *testing.T) {
	h := newHarness(t)
	plaintext := []byte("the genuine picture " + strings.Repeat("y", 500))
	file := attachment.NewEncryptedFile()
	ciphertext := append([]byte(nil), plaintext...)
	file.EncryptInPlace(ciphertext)
	h.hs.setAnswer(func(w http.ResponseWriter, r *http.Request, _ []byte) {
		if strings.Contains(r.URL.Path, "/download/localhost/cipher") {
			w.Header().Set("Content-Type", "application/octet-stream")
			_, _ = w.Write(ciphertext)
			return
		}
		answerJSON(http.StatusNotFound, `{"errcode":"M_NOT_FOUND"}`)(w, r, nil)
	})
	expose := func(info event.EncryptedFileInfo) string {
		raw, err := json.Marshal(map[string]any{"msgtype": "m.image", "body": "pic.png", "file": info})
		require.NoError(t, err)
		var content map[string]any
		require.NoError(t, json.Unmarshal(raw, &content))
		require.NoError(t, h.gw.ExposeMedia(context.Background(), content))
		return strings.TrimPrefix(content["url"].(string), "mxc://localhost/")
	}
	genuine := event.EncryptedFileInfo{EncryptedFile: *file, URL: "mxc://localhost/cipher"}
	forged := genuine
	forged.InitVector = "AAAAAAAAAAAAAAAAAAAAAA"
	forged.Hashes.SHA256 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	forgedID := expose(forged)
	genuineID := expose(genuine)
	require.NotEqual(t, forgedID, genuineID, "the forged file record took the genuine file's ID")
	resp := h.do(t, http.MethodGet, "/_matrix/client/v1/media/download/localhost/"+genuineID+"?user_id=@irc_alice:localhost", bridgeAS, "")
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
	require.Equal(t, plaintext, resp.body)
}
