package server_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"
)

// An invite of a managed user tells heirloom, through its stripped state, that the room is
// encrypted before the user can read the room itself; the stripped state of someone else's
// invite, a room heirloom knows already, and stripped state without an algorithm change nothing.
func TestInviteStrippedStateMarksTheRoomEncrypted(t *testing.T) {
	invite := func(evtID, room, target, stripped string) string {
		return `{"type":"m.room.member","state_key":"` + target + `","room_id":"` + room + `","sender":"@alice:localhost","event_id":"` +
			evtID + `","origin_server_ts":1,"content":{"membership":"invite","is_direct":true},"unsigned":{"invite_room_state":[` +
			`{"type":"m.room.join_rules","state_key":"","sender":"@alice:localhost","content":{"join_rule":"invite"}},` + stripped + `]}}`
	}
	const encryption = `{"type":"m.room.encryption","state_key":"","sender":"@alice:localhost","content":{"algorithm":"m.megolm.v1.aes-sha2","rotation_period_ms":3600000}}`
	h := newHarness(t)
	events := strings.Join([]string{
		invite("$1", "!dm:localhost", string(puppet), encryption),
		invite("$2", "!other:localhost", "@carol:localhost", encryption),
		invite("$3", "!plain:localhost", string(puppet), `{"type":"m.room.name","state_key":"","sender":"@alice:localhost","content":{"name":"x"}}`),
		invite("$4", "!noalg:localhost", string(puppet), `{"type":"m.room.encryption","state_key":"","sender":"@alice:localhost","content":{}}`),
	}, ",")
	resp := h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/t1", "Bearer "+hsToken, strings.NewReader(`{"events":[`+events+`]}`))
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
	ctx := context.Background()
	for room, want := range map[id.RoomID]bool{"!dm:localhost": true, "!other:localhost": false, "!plain:localhost": false, "!noalg:localhost": false} {
		encrypted, err := h.db.StateStore.IsEncrypted(ctx, room)
		require.NoError(t, err)
		require.Equal(t, want, encrypted, room)
	}

	// What the room's own state says stays: a later invite's stripped state does not replace it.
	const other = `{"type":"m.room.encryption","state_key":"","sender":"@alice:localhost","content":{"algorithm":"m.megolm.v1.aes-sha2","rotation_period_ms":1}}`
	resp = h.do(t, http.MethodPut, "/_matrix/app/v1/transactions/t2", "Bearer "+hsToken,
		strings.NewReader(`{"events":[`+invite("$5", "!dm:localhost", string(puppet), other)+`]}`))
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
	content, err := h.db.StateStore.GetEncryptionEvent(ctx, "!dm:localhost")
	require.NoError(t, err)
	require.EqualValues(t, 3600000, content.RotationPeriodMillis)
}
