package gateway_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
)

const megolm = `{"algorithm":"m.megolm.v1.aes-sha2"}`

// roomHomeserver is a fake homeserver that knows one room: its state (/state, and
// /state/m.room.encryption/, answered from encryption: the room's current m.room.encryption
// content, or none; /state/m.room.member/{user}: joined, unless the user is one who left),
// createRoom (which creates it), and sends into it (recorded, answered with an event ID).
// Everything else is 404, so whatever heirloom tries in order to encrypt fails: what these tests
// check is that nothing goes out in the clear.
type roomHomeserver struct {
	room       string
	encryption atomic.Value // string: the current m.room.encryption content, "" for none
	left       string       // a user who left the room
}

func newRoomHomeserver(h *harness, room, encryption string) *roomHomeserver {
	hs := &roomHomeserver{room: room}
	hs.encryption.Store(encryption)
	h.hs.setAnswer(hs.answer)
	return hs
}

func (hs *roomHomeserver) answer(w http.ResponseWriter, r *http.Request, body []byte) {
	enc := hs.encryption.Load().(string)
	path := r.URL.Path
	switch {
	case r.Method == http.MethodPost && strings.HasSuffix(path, "/createRoom"):
		answerJSON(http.StatusOK, `{"room_id":"`+hs.room+`"}`)(w, r, body)
	case r.Method == http.MethodGet && strings.HasSuffix(path, "/state"):
		state := `{"type":"m.room.create","state_key":"","sender":"@alice:localhost","event_id":"$create","room_id":"` + hs.room +
			`","origin_server_ts":1,"content":{"room_version":"10"}},` + hs.member(r.URL.Query().Get("user_id"))
		if enc != "" {
			state += `,{"type":"m.room.encryption","state_key":"","sender":"@alice:localhost","event_id":"$enc","room_id":"` + hs.room +
				`","origin_server_ts":1,"content":` + enc + `}`
		}
		answerJSON(http.StatusOK, "["+state+"]")(w, r, body)
	case r.Method == http.MethodGet && strings.Contains(path, "/state/m.room.encryption"):
		if enc == "" {
			answerJSON(http.StatusNotFound, `{"errcode":"M_NOT_FOUND","error":"Event not found."}`)(w, r, body)
			return
		}
		answerJSON(http.StatusOK, enc)(w, r, body)
	case r.Method == http.MethodGet && strings.Contains(path, "/state/m.room.member/"):
		answerJSON(http.StatusOK, `{"membership":"`+hs.membership(path[strings.LastIndex(path, "/")+1:])+`"}`)(w, r, body)
	case strings.Contains(path, "/send/"):
		answerJSON(http.StatusOK, `{"event_id":"$sent"}`)(w, r, body)
	default:
		answerJSON(http.StatusNotFound, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`)(w, r, body)
	}
}

// membership is the user's membership of the room, as the homeserver answers it: a user who left
// is answered with the room's state at their leave.
func (hs *roomHomeserver) membership(user string) string {
	if user == hs.left {
		return "leave"
	}
	return "join"
}

// member is the user's m.room.member state event.
func (hs *roomHomeserver) member(user string) string {
	return `{"type":"m.room.member","state_key":"` + user + `","sender":"` + user + `","event_id":"$member","room_id":"` + hs.room +
		`","origin_server_ts":1,"content":{"membership":"` + hs.membership(user) + `"}}`
}

// plaintextSends returns the bodies of the sends that reached the homeserver as anything but
// m.room.encrypted.
func plaintextSends(h *harness) []string {
	var out []string
	for _, r := range h.hs.seen() {
		if strings.Contains(r.RawPath, "/send/") && !strings.Contains(r.RawPath, "/send/m.room.encrypted/") {
			out = append(out, r.RawPath+" "+string(r.Body))
		}
	}
	return out
}

// stateEvent is a state event of the room as the homeserver pushes it in a transaction.
func stateEvent(room, eventID, evtType, content string) string {
	return `{"type":"` + evtType + `","state_key":"","event_id":"` + eventID + `","room_id":"` + room +
		`","sender":"@alice:localhost","origin_server_ts":1,"content":` + content + `}`
}

// pushState delivers state events of the room to heirloom, as the homeserver's transaction txnID.
func pushState(t *testing.T, h *harness, txnID string, events ...string) {
	t.Helper()
	resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/"+txnID, heirloomHS, `{"events":[`+strings.Join(events, ",")+`]}`)
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
}

// A room that is, or may be, encrypted never gets a plaintext send from the bridge, however late
// or odd the room's m.room.encryption reached heirloom: a createRoom answered before the room's
// state reached heirloom, an algorithm changed to one heirloom does not know, an emptied or
// unreadable content, a room whose encryption came in no transaction at all. A send is refused
// (502, a Matrix error) rather than risk the clear; a room heirloom cannot use the encryption of
// is refused too.
func TestEncryptedRoomNeverGetsPlaintext(t *testing.T) {
	const room = "!secret:localhost"
	send := func(t *testing.T, h *harness, txnID string) response {
		return h.do(t, http.MethodPut, "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/"+txnID+"?user_id=@irc_alice:localhost",
			bridgeAS, `{"msgtype":"m.text","body":"top secret plaintext"}`)
	}
	create := stateEvent(room, "$create", "m.room.create", `{"room_version":"10"}`)
	for _, tc := range []struct {
		name string
		// current is the room's m.room.encryption as the homeserver answers for it now.
		current string
		// pushed are the state events heirloom got in transactions before the send.
		pushed []string
		// createRoom: the bridge created the room through heirloom, with encrypt_new_rooms.
		createRoom bool
		// refused: heirloom cannot encrypt with the room's settings, and says so (502); otherwise it
		// sets out to encrypt (the sender's E2EE device is created).
		refused bool
	}{
		{name: "createRoom race: m.room.create pushed, the rest of the initial state not yet", current: megolm,
			pushed: []string{create}, createRoom: true},
		{name: "createRoom race on a lagging homeserver worker", current: "", pushed: []string{create}, createRoom: true},
		{name: "encryption algorithm changed to one heirloom does not know", current: `{"algorithm":"m.unknown.v1"}`,
			pushed: []string{create, stateEvent(room, "$enc1", "m.room.encryption", megolm), stateEvent(room, "$enc2", "m.room.encryption", `{"algorithm":"m.unknown.v1"}`)}},
		{name: "encryption content emptied later", current: `{}`,
			pushed: []string{create, stateEvent(room, "$enc1", "m.room.encryption", megolm), stateEvent(room, "$enc2", "m.room.encryption", `{}`)}},
		{name: "encryption content heirloom cannot parse", current: `{"algorithm":"m.megolm.v1.aes-sha2","rotation_period_ms":"604800000"}`,
			pushed:  []string{create, stateEvent(room, "$enc", "m.room.encryption", `{"algorithm":"m.megolm.v1.aes-sha2","rotation_period_ms":"604800000"}`)},
			refused: true},
		{name: "only an unknown algorithm ever", current: `{"algorithm":"m.unknown.v1"}`,
			pushed: []string{create, stateEvent(room, "$enc", "m.room.encryption", `{"algorithm":"m.unknown.v1"}`)}, refused: true},
		{name: "encryption in no transaction (held back by the homeserver, or its default)", current: megolm,
			pushed: []string{create}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(c *config.Config) { c.Gateway.EncryptNewRooms = tc.createRoom })
			newRoomHomeserver(h, room, tc.current)
			if tc.createRoom {
				resp := h.do(t, http.MethodPost, "/_matrix/client/v3/createRoom", bridgeAS, `{"preset":"private_chat","name":"#chan"}`)
				require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
			}
			pushState(t, h, "1", tc.pushed...)
			resp := send(t, h, "t1")
			require.Empty(t, plaintextSends(h), "plaintext reached the homeserver's send endpoint of an encrypted room (heirloom answered %d %s)",
				resp.status, resp.body)
			require.NotEqual(t, http.StatusOK, resp.status, "the send cannot have been encrypted here (the fake homeserver has no key APIs)")
			require.NotEmpty(t, resp.errcode(t), "a Matrix error: %s", resp.body)
			// Encrypting starts with the sender's E2EE device: its registration and key upload.
			encrypting := slices.ContainsFunc(h.hs.seen(), func(r seen) bool {
				return strings.Contains(r.RawPath, "/keys/") || strings.HasSuffix(r.RawPath, "/register")
			})
			if tc.refused {
				require.Equal(t, http.StatusBadGateway, resp.status, "%s", resp.body)
				require.Equal(t, "M_UNKNOWN", resp.errcode(t))
				require.False(t, encrypting, "nothing is encrypted with settings heirloom cannot use")
			} else {
				require.True(t, encrypting, "heirloom set out to encrypt the send (answered %d %s)", resp.status, resp.body)
			}
		})
	}
}

// A plaintext send goes out only when the homeserver has just said the room has no
// m.room.encryption; a room heirloom holds no encryption record of is asked about first.
func TestPlaintextSendOnlyWhenTheHomeserverSaysSo(t *testing.T) {
	const room = "!plain:localhost"
	h := newHarness(t)
	hs := newRoomHomeserver(h, room, "")
	pushState(t, h, "1", stateEvent(room, "$create", "m.room.create", `{"room_version":"10"}`))
	resp := h.do(t, http.MethodPut, "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/p1?user_id=@irc_alice:localhost",
		bridgeAS, `{"msgtype":"m.text","body":"hello"}`)
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
	require.Len(t, plaintextSends(h), 1)
	asked := 0
	for _, r := range h.hs.seen() {
		if strings.Contains(r.RawPath, "/state/m.room.encryption") {
			asked++
		}
	}
	require.Equal(t, 1, asked, "heirloom asked the homeserver about the room's encryption before the plaintext send")

	// The room becomes encrypted; the transaction saying so has not arrived (the homeserver holds
	// heirloom's transactions back). Once the last answer is no longer fresh, heirloom asks again.
	hs.encryption.Store(megolm)
	h.db.Now = func() time.Time { return time.Now().Add(time.Minute) }
	resp = h.do(t, http.MethodPut, "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/p2?user_id=@irc_alice:localhost",
		bridgeAS, `{"msgtype":"m.text","body":"secret now"}`)
	require.Len(t, plaintextSends(h), 1, "no second plaintext send: %s %s", resp.body, plaintextSends(h))
}

// API mode shares the rule: a puppet's message into a room heirloom has seen encrypted, or that
// the homeserver says is encrypted, is never sent in the clear.
func TestAPISendNeverPlaintextIntoEncryptedRoom(t *testing.T) {
	const room = "!secret:localhost"
	const puppet = "@heirloom_bob:localhost"
	create := stateEvent(room, "$create", "m.room.create", `{"room_version":"10"}`)
	for _, tc := range []struct {
		name, current string
		pushed        []string
	}{
		{"encryption in no transaction", megolm, []string{create}},
		{"encryption emptied later", `{}`, []string{create, stateEvent(room, "$enc1", "m.room.encryption", megolm),
			stateEvent(room, "$enc2", "m.room.encryption", `{}`)}},
		{"encryption content heirloom cannot parse", `{"algorithm":"m.megolm.v1.aes-sha2","rotation_period_ms":"x"}`,
			[]string{create, stateEvent(room, "$enc", "m.room.encryption", `{"algorithm":"m.megolm.v1.aes-sha2","rotation_period_ms":"x"}`)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			ctx := context.Background()
			require.NoError(t, h.db.PutPuppet(ctx, &database.Puppet{UserID: puppet, DeviceID: "BOB", Ready: true}))
			newRoomHomeserver(h, room, tc.current)
			pushState(t, h, "1", tc.pushed...)
			resp := h.do(t, http.MethodPost, "/_heirloom/v1/puppets/"+puppet+"/rooms/"+room+"/messages", "api-secret-0123456789abcdef",
				`{"msgtype":"m.text","body":"top secret plaintext"}`)
			require.Empty(t, plaintextSends(h), "plaintext reached the homeserver (API answered %d %s)", resp.status, resp.body)
			require.NotEqual(t, http.StatusOK, resp.status)
			if strings.Contains(tc.name, "cannot parse") {
				require.Equal(t, http.StatusBadGateway, resp.status, "%s", resp.body)
				require.Equal(t, "M_UNKNOWN", resp.errcode(t), "a Matrix error that says nothing was sent")
			}
		})
	}
}

// The homeserver answers a user who left a room with the room's state as it was when they left: its
// word that the room is unencrypted counts for that user only, never for another's send.
func TestPlaintextConfirmationIsPerUser(t *testing.T) {
	const room = "!secret:localhost"
	h := newHarness(t)
	hs := newRoomHomeserver(h, room, megolm)
	hs.left = "@irc_left:localhost"
	h.hs.setAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) {
		if r.URL.Query().Get("user_id") == "@irc_left:localhost" && strings.Contains(r.URL.Path, "/state/m.room.encryption") {
			answerJSON(http.StatusNotFound, `{"errcode":"M_NOT_FOUND","error":"Event not found."}`)(w, r, body)
			return
		}
		hs.answer(w, r, body)
	})
	pushState(t, h, "1", stateEvent(room, "$create", "m.room.create", `{"room_version":"10"}`))
	h.do(t, http.MethodPut, "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/l1?user_id=@irc_left:localhost", bridgeAS,
		`{"msgtype":"m.text","body":"from the one who left"}`)
	before := len(plaintextSends(h))
	resp := h.do(t, http.MethodPut, "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/a1?user_id=@irc_alice:localhost", bridgeAS,
		`{"msgtype":"m.text","body":"top secret plaintext"}`)
	require.Len(t, plaintextSends(h), before, "alice's send went in the clear on the word given to another user (%d %s)", resp.status, resp.body)
}
