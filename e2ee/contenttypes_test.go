package e2ee

import (
	"net/http"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"

	"github.com/heirloom-matrix/heirloom/config"
)

// Without heirloom's content types mautrix would store every m.room_key itself, past heirloom's
// checks: no Manager starts before RegisterContentTypes has run, and once it has, mautrix parses
// room keys, forwards and bundles into heirloom's types.
func TestManagerNeedsTheContentTypes(t *testing.T) {
	contentTypes.registered.Store(false)
	_, err := NewManager(&config.Config{Homeserver: config.Homeserver{Address: "http://127.0.0.1:1"}}, nil, http.DefaultClient, zerolog.Nop())
	contentTypes.registered.Store(true)
	require.ErrorIs(t, err, errContentTypesUnregistered)

	RegisterContentTypes() // again: nothing changes
	for evtType, want := range map[event.Type]any{
		event.ToDeviceRoomKey:          &RoomKeyContent{},
		event.ToDeviceForwardedRoomKey: &forwardedRoomKeyContent{},
		event.ToDeviceRoomKeyBundle:    &BundleContent{},
		toDeviceRoomKeyBundleUnstable:  &BundleContent{},
	} {
		content := event.Content{VeryRaw: []byte(`{}`)}
		require.NoError(t, content.ParseRaw(evtType), evtType.Type)
		require.IsType(t, want, content.Parsed, evtType.Type)
	}
}
