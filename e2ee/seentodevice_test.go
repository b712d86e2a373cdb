package e2ee

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func toDevice(sender, content string) *event.Event {
	return &event.Event{Sender: id.UserID("@" + sender + ":hs"), Type: event.ToDeviceEncrypted, Content: event.Content{VeryRaw: json.RawMessage(content)}}
}

// A message seen again is refused; the same content from another sender is not the same message;
// the set forgets its oldest entries once full.
func TestRecentSet(t *testing.T) {
	var s recentSet
	require.True(t, s.add(toDeviceKey(toDevice("a", `{"ciphertext":"x"}`))))
	require.False(t, s.add(toDeviceKey(toDevice("a", `{"ciphertext":"x"}`))))
	require.True(t, s.add(toDeviceKey(toDevice("b", `{"ciphertext":"x"}`))))
	for i := range recentSetSize {
		require.True(t, s.add(toDeviceKey(toDevice("c", fmt.Sprintf(`{"i":%d}`, i)))))
	}
	require.True(t, s.add(toDeviceKey(toDevice("a", `{"ciphertext":"x"}`))), "forgotten once the set is full")
	require.Len(t, s.order, recentSetSize)
}
