package gateway_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"
)

// A member who re-posts another member's ciphertext as his own event (he needs no key: the
// ciphertext is in the room) gets no decryption for the bridge: an unmodified bridge reads neither
// unsigned["io.heirloom.encryption"].trust nor any shield, and would relay alice's words as
// mallory's message (words mallory himself could not read). rust-sdk shows such an event with a
// red shield; the bridge gets it as it arrived, encrypted. Alice's own event still reads decrypted.
func TestRepostOfAnotherMembersCiphertextReachesTheBridgeEncrypted(t *testing.T) {
	h := newHarness(t)
	room := id.RoomID("!r:localhost")
	p := h.newReader(t)
	alice := newRemoteSender(t, room)
	alice.giveKey(t, p, room)
	pushState(t, h, "1", readerJoins("$join", "!r:localhost"))

	genuine := alice.event(t, "$genuine", room, "alice's secret")
	repost := strings.Replace(strings.Replace(genuine, `"sender":"@alice:localhost"`, `"sender":"@mallory:localhost"`, 1),
		`"event_id":"$genuine"`, `"event_id":"$repost"`, 1)
	h.answerPaths(map[string]string{"/event/$repost": repost, "/event/$genuine": genuine})
	resp := h.readAs(t, room, "/event/$repost")
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
	var ev map[string]any
	require.NoError(t, json.Unmarshal(resp.body, &ev))
	require.Equal(t, "@mallory:localhost", ev["sender"])
	require.Equal(t, "m.room.encrypted", ev["type"],
		"mallory's re-post of alice's ciphertext must not reach the bridge decrypted as mallory's message: got %s", resp.body)

	resp = h.readAs(t, room, "/event/$genuine")
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
	require.NoError(t, json.Unmarshal(resp.body, &ev))
	require.Equal(t, "m.room.message", ev["type"], "alice's own event reads decrypted: %s", resp.body)
}
