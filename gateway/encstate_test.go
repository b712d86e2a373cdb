package gateway_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// The homeserver pushes a new room's state in several transactions, and a bridge sends into (or
// invites to) the room it created at once: heirloom may know the room's creation and not yet its
// m.room.encryption. A room heirloom holds as unencrypted is confirmed with the homeserver once
// before the first send in the clear; encrypted it stays, and unencrypted it is not asked again.
func TestRoomHalfKnownIsAskedBeforeTheClear(t *testing.T) {
	h := newHarness(t)
	var asked atomic.Int32
	h.hs.setAnswer(func(w http.ResponseWriter, r *http.Request, _ []byte) {
		switch {
		case strings.Contains(r.URL.Path, "/rooms/!secret:localhost/state/m.room.encryption"):
			asked.Add(1)
			answerJSON(http.StatusOK, `{"algorithm":"m.megolm.v1.aes-sha2"}`)(w, r, nil)
		case strings.Contains(r.URL.Path, "/rooms/!plain:localhost/state/m.room.encryption"):
			asked.Add(1)
			answerJSON(http.StatusNotFound, `{"errcode":"M_NOT_FOUND","error":"Event not found."}`)(w, r, nil)
		case strings.Contains(r.URL.Path, "/state/m.room.member/@irc_alice:localhost") && !strings.Contains(r.URL.Path, "!down:"):
			answerJSON(http.StatusOK, `{"membership":"join"}`)(w, r, nil)
		default:
			answerJSON(http.StatusInternalServerError, `{"errcode":"M_UNKNOWN","error":"unexpected"}`)(w, r, nil)
		}
	})
	ctx := context.Background()
	for _, room := range []id.RoomID{"!secret:localhost", "!plain:localhost"} {
		create := &event.Event{Type: event.StateCreate, RoomID: room, Sender: "@irc_alice:localhost", StateKey: new(string),
			Content: event.Content{Parsed: &event.CreateEventContent{}}}
		mautrix.UpdateStateStore(ctx, h.db.StateStore, create)
	}

	encrypted, err := h.gw.RoomEncrypted(ctx, "@irc_alice:localhost", "!secret:localhost")
	require.NoError(t, err)
	require.True(t, encrypted, "the homeserver has m.room.encryption that no transaction brought yet")
	encrypted, err = h.gw.RoomEncrypted(ctx, "@irc_alice:localhost", "!secret:localhost")
	require.NoError(t, err)
	require.True(t, encrypted)

	for range 3 {
		encrypted, err = h.gw.RoomEncrypted(ctx, "@irc_alice:localhost", "!plain:localhost")
		require.NoError(t, err)
		require.False(t, encrypted)
	}
	require.EqualValues(t, 2, asked.Load(), "each room asked once")

	// Whatever else the homeserver answers, heirloom cannot tell: the send is refused, not made in the clear.
	mautrix.UpdateStateStore(ctx, h.db.StateStore, &event.Event{Type: event.StateCreate, RoomID: "!down:localhost",
		Sender: "@irc_alice:localhost", StateKey: new(string), Content: event.Content{Parsed: &event.CreateEventContent{}}})
	_, err = h.gw.RoomEncrypted(ctx, "@irc_alice:localhost", "!down:localhost")
	require.Error(t, err)
}
