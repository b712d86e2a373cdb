package gateway_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"
)

// heirloom goes to fetch a missing room key once per session: its room, the sender key the event
// names and its session ID. A session ID is any member's to name: mallory's event in another room,
// naming alice's session ID under his own sender key, must not take the claim of alice's session,
// or her event, arriving later without its key, waits out gateway.decrypt_wait with no key fetched.
func TestKeyRecoveryOfAnotherRoomsSessionIDFetchesItsOwn(t *testing.T) {
	h := newHarness(t)
	h.newReader(t)
	roomX, roomM := id.RoomID("!x:localhost"), id.RoomID("!m:localhost")
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/1", heirloomHS, `{"events":[`+
		readerJoins("$jx", roomX)+`,`+
		readerJoins("$jm", roomM)+`]}`).status)

	alice := newRemoteSender(t, roomX)
	mallorys := strings.Replace(alice.event(t, "$mallory", roomM, "junk"), `"sender":"@alice:localhost"`, `"sender":"@mallory:localhost"`, 1)
	mallorys = strings.Replace(mallorys, string(alice.senderKey), "bWFsbG9yeSdzIG93biBzZW5kZXIga2V5LCAzMiBieXRlcw", 1)
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/2", heirloomHS, `{"events":[`+mallorys+`]}`).status)
	require.Equal(t, 1, h.gw.RecoveryClaims(), "mallory's event's key is fetched")

	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/3", heirloomHS,
		`{"events":[`+alice.event(t, "$alice", roomX, "hello")+`]}`).status)
	require.Equal(t, 2, h.gw.RecoveryClaims(), "alice's session, of another room and sender key, is fetched too")
	require.Equal(t, http.StatusOK, h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/4", heirloomHS,
		`{"events":[`+alice.event(t, "$alice2", roomX, "again")+`]}`).status)
	require.Equal(t, 2, h.gw.RecoveryClaims(), "a second event of alice's session is not fetched again")
}
