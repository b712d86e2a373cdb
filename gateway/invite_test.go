package gateway_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// invites returns the bodies of the invites that reached the homeserver.
func invites(h *harness) []string {
	var out []string
	for _, r := range h.hs.seen() {
		if strings.HasSuffix(r.RawPath, "/invite") {
			out = append(out, string(r.Body))
		}
	}
	return out
}

// sharing reports whether heirloom set out to share history (the sender's E2EE device first).
func sharing(h *harness) bool {
	return slices.ContainsFunc(h.hs.seen(), func(r seen) bool {
		return strings.Contains(r.RawPath, "/keys/") || strings.HasSuffix(r.RawPath, "/register")
	})
}

// invitingHomeserver is the room's homeserver (roomHomeserver) that also takes invites.
func invitingHomeserver(h *harness, room, encryption string) {
	hs := newRoomHomeserver(h, room, encryption)
	h.hs.setAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/invite") {
			answerJSON(http.StatusOK, `{}`)(w, r, body)
			return
		}
		hs.answer(w, r, body)
	})
}

// A bridge user's invite: of another bridge user, or into a room without encryption, it goes to
// the homeserver as the bridge sent it, with no history to share; of someone else into an
// encrypted room, heirloom shares the room's history first, and when it cannot (here: the
// homeserver gives the inviter no E2EE device) the invite does not go out without it. An invite
// whose invitee cannot be read the way the homeserver reads it is refused.
func TestBridgeInvites(t *testing.T) {
	const room = "!chan:localhost"
	invite := func(t *testing.T, h *harness, body string) response {
		return h.do(t, http.MethodPost, "/_matrix/client/v3/rooms/"+room+"/invite?user_id=@irc_alice:localhost", bridgeAS, body)
	}
	t.Run("a bridge user", func(t *testing.T) {
		h := newHarness(t)
		invitingHomeserver(h, room, megolm)
		resp := invite(t, h, `{"user_id":"@irc_bob:localhost"}`)
		require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
		require.Equal(t, []string{`{"user_id":"@irc_bob:localhost"}`}, invites(h))
		require.False(t, sharing(h), "heirloom holds every key the bridge's users could get")
	})
	t.Run("a room without encryption", func(t *testing.T) {
		h := newHarness(t)
		invitingHomeserver(h, room, "")
		resp := invite(t, h, `{"user_id":"@carol:localhost","reason":"welcome"}`)
		require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
		require.Equal(t, []string{`{"user_id":"@carol:localhost","reason":"welcome"}`}, invites(h), "the bridge's body, as it sent it")
		require.False(t, sharing(h))
	})
	t.Run("an encrypted room, history not shareable", func(t *testing.T) {
		h := newHarness(t)
		invitingHomeserver(h, room, megolm)
		resp := invite(t, h, `{"user_id":"@carol:localhost"}`)
		require.NotEqual(t, http.StatusOK, resp.status)
		require.NotEmpty(t, resp.errcode(t), "a Matrix error: %s", resp.body)
		require.True(t, sharing(h), "heirloom set out to share the history")
		require.Empty(t, invites(h), "no invite without the history")
	})
	t.Run("an invitee read twice", func(t *testing.T) {
		h := newHarness(t)
		invitingHomeserver(h, room, megolm)
		resp := invite(t, h, `{"user_id":"@irc_bob:localhost","user_id":"@carol:localhost"}`)
		require.Equal(t, http.StatusBadRequest, resp.status)
		require.Equal(t, "M_BAD_JSON", resp.errcode(t))
		require.Empty(t, invites(h))
	})
}

// A bridge user's join: one without an E2EE device, or by alias, goes to the homeserver as the
// bridge sent it (the join's echo records the invite it accepted).
func TestBridgeJoinsWithoutDeviceAreForwarded(t *testing.T) {
	h := newHarness(t)
	hs := newRoomHomeserver(h, "!chan:localhost", "")
	h.hs.setAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) {
		if r.Method == http.MethodPost && strings.Contains(r.URL.Path, "/join") {
			answerJSON(http.StatusOK, `{"room_id":"!chan:localhost"}`)(w, r, body)
			return
		}
		hs.answer(w, r, body)
	})
	for _, target := range []string{"/_matrix/client/v3/rooms/!chan:localhost/join", "/_matrix/client/v3/join/%23irc_chan:localhost"} {
		resp := h.do(t, http.MethodPost, target+"?user_id=@irc_alice:localhost", bridgeAS, `{"reason":"hi"}`)
		require.Equal(t, http.StatusOK, resp.status, "%s: %s", target, resp.body)
	}
	var joins []string
	for _, r := range h.hs.seen() {
		if strings.Contains(r.RawPath, "/join") {
			joins = append(joins, string(r.Body))
		}
	}
	require.Equal(t, []string{`{"reason":"hi"}`, `{"reason":"hi"}`}, joins)
}
