package gateway_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
)

// Synapse answers a user who left a room with the room's state at their leave
// (synapse/handlers/message.py get_room_data, allow_departed_users), so its word that a room has no
// m.room.encryption counts only for a user who is joined. matrix-appservice-bridge's Intent sends,
// and on M_FORBIDDEN (its membership cache said joined) joins and sends again at once
// (Intent._joinGuard). A ghost kicked from a room that was then encrypted (no bridge or heirloom
// user left in it, so the homeserver pushed nobody the m.room.encryption) speaks: its first send is
// refused as the homeserver would refuse it, and the one after its join goes encrypted, never in
// the clear.
func TestRejoinedUserNeverSendsOnItsDepartedAnswer(t *testing.T) {
	h := newHarness(t)
	const room, ghost = "!kicked:localhost", "@irc_ghost:localhost"
	var mu sync.Mutex
	joined := false
	var plaintext []string
	h.hs.setAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/state/m.room.encryption"):
			if joined { // the room's current state
				answerJSON(http.StatusOK, `{"algorithm":"m.megolm.v1.aes-sha2"}`)(w, r, body)
			} else { // the state at the ghost's leave, as Synapse answers a departed user
				answerJSON(http.StatusNotFound, `{"errcode":"M_NOT_FOUND","error":"Event not found."}`)(w, r, body)
			}
		case r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/state/m.room.member/"):
			if joined {
				answerJSON(http.StatusOK, `{"membership":"join"}`)(w, r, body)
			} else { // its membership at its leave: the kick
				answerJSON(http.StatusOK, `{"membership":"leave","reason":"kicked"}`)(w, r, body)
			}
		case strings.Contains(r.URL.Path, "/send/"):
			if !joined {
				answerJSON(http.StatusForbidden, `{"errcode":"M_FORBIDDEN","error":"User `+ghost+` not in room `+room+`"}`)(w, r, body)
				return
			}
			plaintext = append(plaintext, string(body))
			answerJSON(http.StatusOK, `{"event_id":"$sent"}`)(w, r, body)
		case strings.HasSuffix(r.URL.Path, "/join"):
			joined = true
			answerJSON(http.StatusOK, `{"room_id":"`+room+`"}`)(w, r, body)
		default:
			answerJSON(http.StatusNotFound, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`)(w, r, body)
		}
	})
	// What heirloom saw of the room: its creation, the ghost's join and its kick. The room was
	// encrypted afterwards, when neither the bridge's users nor heirloom's were in it.
	create := `{"type":"m.room.create","state_key":"","event_id":"$create","room_id":"` + room + `","sender":"@alice:localhost","origin_server_ts":1,"content":{"room_version":"10"}}`
	txn := `{"events":[` + create + `,` + strings.ReplaceAll(memberEvent("$join", ghost, ghost, "join"), "!r:localhost", room) + `,` +
		strings.ReplaceAll(memberEvent("$kick", "@alice:localhost", ghost, "leave"), "!r:localhost", room) + `]}`
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS, txn).status)

	// matrix-appservice-bridge's Intent.sendEvent: send; on M_FORBIDDEN, join and send again.
	send := func(txnID string) response {
		return h.do(t, http.MethodPut, "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/"+txnID+"?user_id="+ghost, bridgeAS,
			`{"msgtype":"m.text","body":"a line from IRC"}`)
	}
	resp := send("1700000000000__inc1")
	require.Equal(t, http.StatusForbidden, resp.status, "%s", resp.body)
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPost, "/_matrix/client/v3/rooms/"+room+"/join?user_id="+ghost, bridgeAS, `{}`).status)
	resp = send("1700000000001__inc2")
	mu.Lock()
	defer mu.Unlock()
	assert.Empty(t, plaintext, "the retried send went into the encrypted room in the clear (heirloom answered %d %s)", resp.status, resp.body)
}

// departedHomeserver answers for one room and one user as Synapse does: the room is encrypted now,
// and while the user is departed, its m.room.member and m.room.encryption are the state at their
// leave (left, and none). Joins and sends are recorded.
type departedHomeserver struct {
	mu        sync.Mutex
	room      string
	joined    bool
	plaintext []string
}

func (hs *departedHomeserver) answer(w http.ResponseWriter, r *http.Request, body []byte) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	switch {
	case r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/state/m.room.encryption"):
		if hs.joined {
			answerJSON(http.StatusOK, megolm)(w, r, body)
		} else {
			answerJSON(http.StatusNotFound, `{"errcode":"M_NOT_FOUND","error":"Event not found."}`)(w, r, body)
		}
	case r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/state/m.room.member/"):
		answerJSON(http.StatusOK, `{"membership":"`+hs.membership()+`"}`)(w, r, body)
	case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/state"):
		user := r.URL.Query().Get("user_id")
		state := `{"type":"m.room.create","state_key":"","sender":"@alice:localhost","event_id":"$create","room_id":"` + hs.room +
			`","origin_server_ts":1,"content":{"room_version":"10"}},{"type":"m.room.member","state_key":"` + user + `","sender":"` + user +
			`","event_id":"$member","room_id":"` + hs.room + `","origin_server_ts":2,"content":{"membership":"` + hs.membership() + `"}}`
		if hs.joined {
			state += `,{"type":"m.room.encryption","state_key":"","sender":"@alice:localhost","event_id":"$enc","room_id":"` + hs.room +
				`","origin_server_ts":3,"content":` + megolm + `}`
		}
		answerJSON(http.StatusOK, "["+state+"]")(w, r, body)
	case strings.Contains(r.URL.Path, "/send/"):
		if !hs.joined {
			answerJSON(http.StatusForbidden, `{"errcode":"M_FORBIDDEN","error":"User not in room"}`)(w, r, body)
			return
		}
		if !strings.Contains(r.URL.Path, "/send/m.room.encrypted/") {
			hs.plaintext = append(hs.plaintext, string(body))
		}
		answerJSON(http.StatusOK, `{"event_id":"$sent"}`)(w, r, body)
	case strings.HasSuffix(r.URL.Path, "/join"):
		hs.joined = true
		answerJSON(http.StatusOK, `{"room_id":"`+hs.room+`"}`)(w, r, body)
	default:
		answerJSON(http.StatusNotFound, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`)(w, r, body)
	}
}

func (hs *departedHomeserver) membership() string {
	if hs.joined {
		return "join"
	}
	return "leave"
}

func (hs *departedHomeserver) rejoin() {
	hs.mu.Lock()
	hs.joined = true
	hs.mu.Unlock()
}

// knownRoom gives heirloom the room's creation, as a transaction would, so that it asks the
// homeserver about the room's encryption rather than fetching its whole state.
func knownRoom(t *testing.T, h *harness, room string) {
	create := &event.Event{Type: event.StateCreate, RoomID: id.RoomID(room), Sender: "@alice:localhost", StateKey: new(string),
		Content: event.Content{Parsed: &event.CreateEventContent{}}}
	mautrix.UpdateStateStore(context.Background(), h.db.StateStore, create)
}

// A departed user's word that the room is unencrypted never counts, even when the user is back in
// the room by a way heirloom did not see (an admin's join, its transaction not yet arrived): heirloom
// asks whether the user is joined before it asks about the room's encryption, and takes the room's
// whole state (for a room it never saw) as the homeserver's word only if the user is joined in it.
func TestDepartedUsersAnswerNeverCounts(t *testing.T) {
	for _, seen := range []bool{true, false} {
		t.Run(map[bool]string{true: "a room heirloom has seen", false: "a room heirloom never saw"}[seen], func(t *testing.T) {
			h := newHarness(t)
			hs := &departedHomeserver{room: "!kicked:localhost"}
			h.hs.setAnswer(hs.answer)
			if seen {
				knownRoom(t, h, hs.room)
			}
			ctx := context.Background()
			_, err := h.gw.RoomEncrypted(ctx, "@irc_ghost:localhost", id.RoomID(hs.room))
			require.ErrorIs(t, err, e2ee.ErrUnknownRoom, "a departed user cannot send into the room")
			hs.rejoin()
			encrypted, err := h.gw.RoomEncrypted(ctx, "@irc_ghost:localhost", id.RoomID(hs.room))
			require.NoError(t, err)
			require.True(t, encrypted, "back in the room, the user is told the room's current state")
		})
	}
}

// The homeserver's word that a room is unencrypted never outlives a change of its user's membership:
// a join through the gateway or the API, a send the homeserver refuses because the user is not in
// the room (the bridge's, or a puppet's through the API), or the user's m.room.member in a
// transaction. The room encrypted meanwhile gets no plaintext.
func TestPlaintextAnswerNeverOutlivesAMembershipChange(t *testing.T) {
	const room, ghost, puppet = "!r:localhost", "@irc_ghost:localhost", "@heirloom_bob:localhost"
	const api = "api-secret-0123456789abcdef"
	for _, tc := range []struct {
		name   string
		user   id.UserID
		change func(t *testing.T, h *harness)
	}{
		{"join through the gateway", ghost, func(t *testing.T, h *harness) {
			require.Equal(t, http.StatusOK, h.do(t, http.MethodPost, "/_matrix/client/v3/rooms/"+room+"/join?user_id="+ghost, bridgeAS, `{}`).status)
		}},
		{"send refused for not being in the room", ghost, func(t *testing.T, h *harness) {
			resp := h.do(t, http.MethodPut, "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/refused?user_id="+ghost, bridgeAS,
				`{"msgtype":"m.text","body":"refused"}`)
			require.Equal(t, http.StatusForbidden, resp.status, "%s", resp.body)
		}},
		{"membership in a transaction", ghost, func(t *testing.T, h *harness) {
			pushState(t, h, "m1", strings.Replace(memberEvent("$rejoin", ghost, ghost, "join"), "!r:localhost", room, 1))
		}},
		{"join through the API", puppet, func(t *testing.T, h *harness) {
			resp := h.do(t, http.MethodPost, "/_heirloom/v1/puppets/"+puppet+"/rooms/"+room+"/join", api, `{}`)
			require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
		}},
		{"API send refused for not being in the room", puppet, func(t *testing.T, h *harness) {
			resp := h.do(t, http.MethodPost, "/_heirloom/v1/puppets/"+puppet+"/rooms/"+room+"/messages", api, `{"msgtype":"m.text","body":"refused"}`)
			require.NotEqual(t, http.StatusOK, resp.status, "%s", resp.body)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			ctx := context.Background()
			require.NoError(t, h.db.PutPuppet(ctx, &database.Puppet{UserID: puppet, DeviceID: "BOB", Ready: true}))
			var mu sync.Mutex
			encryption, refuseSends := "", false
			h.hs.setAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) {
				mu.Lock()
				defer mu.Unlock()
				switch {
				case r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/state/m.room.encryption"):
					if encryption == "" {
						answerJSON(http.StatusNotFound, `{"errcode":"M_NOT_FOUND","error":"Event not found."}`)(w, r, body)
						return
					}
					answerJSON(http.StatusOK, encryption)(w, r, body)
				case r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/state/m.room.member/"):
					answerJSON(http.StatusOK, `{"membership":"join"}`)(w, r, body)
				case strings.Contains(r.URL.Path, "/send/") && refuseSends:
					answerJSON(http.StatusForbidden, `{"errcode":"M_FORBIDDEN","error":"User not in room"}`)(w, r, body)
				default:
					answerJSON(http.StatusOK, `{"event_id":"$sent","room_id":"`+room+`"}`)(w, r, body)
				}
			})
			knownRoom(t, h, room)
			encrypted, err := h.gw.RoomEncrypted(ctx, tc.user, room)
			require.NoError(t, err)
			require.False(t, encrypted, "the homeserver said the room is unencrypted")

			mu.Lock()
			encryption, refuseSends = megolm, true
			mu.Unlock()
			tc.change(t, h)
			encrypted, err = h.gw.RoomEncrypted(ctx, tc.user, room)
			require.NoError(t, err)
			require.True(t, encrypted, "the answer given before the membership changed still counted")
		})
	}
}

// API mode shares the rule: a puppet back in a room it had left sends encrypted, its word from
// while it was away never counting.
func TestAPIRejoinedPuppetNeverSendsOnItsDepartedAnswer(t *testing.T) {
	h := newHarness(t)
	const puppet = "@heirloom_bob:localhost"
	ctx := context.Background()
	require.NoError(t, h.db.PutPuppet(ctx, &database.Puppet{UserID: puppet, DeviceID: "BOB", Ready: true}))
	hs := &departedHomeserver{room: "!kicked:localhost"}
	h.hs.setAnswer(hs.answer)
	knownRoom(t, h, hs.room)
	send := func() response {
		return h.do(t, http.MethodPost, "/_heirloom/v1/puppets/"+puppet+"/rooms/"+hs.room+"/messages", "api-secret-0123456789abcdef",
			`{"msgtype":"m.text","body":"top secret plaintext"}`)
	}
	resp := send()
	require.NotEqual(t, http.StatusOK, resp.status, "a puppet that left the room cannot send into it: %s", resp.body)
	hs.rejoin()
	resp = send()
	hs.mu.Lock()
	defer hs.mu.Unlock()
	require.Empty(t, hs.plaintext, "the puppet's send after its return went in the clear (API answered %d %s)", resp.status, resp.body)
}
