package e2ee

import (
	"errors"
	"reflect"
	"sync"
	"sync/atomic"

	"maunium.net/go/mautrix/event"
)

// mautrix v0.32.0 parses m.room_key into a struct that knows only the plain `shared_history`
// name, and hands received bundles to a callback without the Olm sender or its device keys.
// Registering heirloom's own content types (mautrix's documented extension point, event.TypeMap)
// makes OlmMachine.HandleEncryptedEvent return those decrypted events to heirloom unhandled, with
// the full Olm envelope, after mautrix has done the Olm decryption itself. Without them mautrix
// would store every m.room_key itself, past heirloom's checks, so NewManager refuses to start
// until RegisterContentTypes has run.
var contentTypes struct {
	once       sync.Once
	registered atomic.Bool
}

// RegisterContentTypes points mautrix's process-wide event.TypeMap at heirloom's room key, forward
// and bundle contents. The daemon calls it once at start, before any Manager exists; tests that
// build a Manager or parse these events call it too. Calling it again does nothing.
func RegisterContentTypes() {
	contentTypes.once.Do(func() {
		event.TypeMap[event.ToDeviceRoomKey] = reflect.TypeOf(RoomKeyContent{})
		event.TypeMap[event.ToDeviceForwardedRoomKey] = reflect.TypeOf(forwardedRoomKeyContent{})
		event.TypeMap[event.ToDeviceRoomKeyBundle] = reflect.TypeOf(BundleContent{})
		event.TypeMap[toDeviceRoomKeyBundleUnstable] = reflect.TypeOf(BundleContent{})
		contentTypes.registered.Store(true)
	})
}

// errContentTypesUnregistered is NewManager's answer when RegisterContentTypes has not run.
var errContentTypesUnregistered = errors.New("e2ee.RegisterContentTypes has not run: mautrix would handle room keys past heirloom's checks")
