package database_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

// The replay record takes an event only with both its ID and its timestamp: a read whose answer
// leaves one out is checked, never recorded, so the event itself, with both, is no replay. Without
// its timestamp an event passes if the key is unused or used by the same event ID; without its ID,
// only if the key is unused.
func TestMessageIndexRecordsOnlyEventsWithIDAndTimestamp(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *database.Database) {
		ctx := context.Background()
		key := database.MessageIndex{AccountID: "@reader:hs", RoomID: roomX, SessionID: "session", Index: 3, Sender: alice}
		check := func(eventID id.EventID, ts int64) bool {
			m := key
			m.EventID, m.Timestamp = eventID, ts
			ok, err := db.CheckMessageIndex(ctx, m)
			require.NoError(t, err)
			return ok
		}
		require.True(t, check("$live", 0), "no timestamp, nothing recorded yet")
		require.True(t, check("", 0), "neither ID nor timestamp, nothing recorded yet")
		require.True(t, check("$live", 1700), "the live event, with both, is the first the record takes")
		require.True(t, check("$live", 1700), "and the same event again")
		require.True(t, check("$live", 0), "a read of it without its timestamp")
		require.False(t, check("$other", 0), "another event ID without its timestamp")
		require.False(t, check("", 1700), "an event without ID cannot be told from another")
		require.False(t, check("$other", 1700), "another event under the same key is a replay")
	})
}
