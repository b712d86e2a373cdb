package e2ee

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
)

// The same bytes get the same answer on every database: a withheld message whose text one database
// would store and the other refuse (a NUL, invalid UTF-8, an excessive length) is ignored on both,
// and the others are stored on both.
func TestHostileWithheldMessagesGetTheSameAnswerOnEveryBackend(t *testing.T) {
	type message struct {
		room         id.RoomID
		code, reason string
	}
	messages := []message{
		{"!shared:localhost", "m.unverified", "fine"},
		{"!shared:localhost", "m.unverified", "a NUL\x00inside"},
		{"!shared:localhost", "m.unverified\x00", "a NUL in the code"},
		{"!shared:localhost", "m.unverified", "invalid \xff\xfe UTF-8"},
		{"!shared:localhost", "m.unverified", strings.Repeat("x", 1025)},
		{"!shared:localhost\x00", "m.unverified", "a NUL in the room"},
		{"!shared:localhost", "m.unavailable", "also fine"},
	}
	ids := make([]id.SessionID, len(messages))
	for i := range ids {
		out, err := olm.NewOutboundGroupSession()
		require.NoError(t, err)
		ids[i] = out.ID()
	}
	var answers [][]bool
	testdb.ForEach(t, func(t *testing.T, dbCfg config.Database) {
		mgr := testManagerOn(t, dbCfg)
		p := testPuppet(t, mgr, "victim")
		ctx := context.Background()
		joined(t, mgr.db, "!shared:localhost", p.UserID, "@member:localhost")
		member := newOlmSender("@member:localhost")
		member.known(t, p)
		var stored []bool
		for i, m := range messages {
			p.handleToDevice(ctx, &event.Event{Sender: "@member:localhost", Type: event.ToDeviceRoomKeyWithheld, ToUserID: p.UserID,
				ToDeviceID: p.DeviceID, Content: event.Content{Parsed: &event.RoomKeyWithheldEventContent{RoomID: m.room,
					Algorithm: id.AlgorithmMegolmV1, SessionID: ids[i], SenderKey: member.curve,
					Code: event.RoomKeyWithheldCode(m.code), Reason: m.reason}}})
			w, err := p.Store.GetWithheldGroupSession(ctx, "!shared:localhost", ids[i])
			require.NoError(t, err)
			stored = append(stored, w != nil)
		}
		require.Equal(t, []bool{true, false, false, false, false, false, true}, stored)
		answers = append(answers, stored)
	})
	if len(answers) == 2 {
		require.Equal(t, answers[0], answers[1], "SQLite and PostgreSQL give the same answer")
	}
}
