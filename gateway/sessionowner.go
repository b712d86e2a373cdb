package gateway

import (
	"context"
	"errors"
	"fmt"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
)

// errNotSendersSession means the megolm session that decrypted an event is not known to be of the
// event's sender: the event goes to the bridge as it arrived.
var errNotSendersSession = errors.New("the session that decrypts the event is not known to be its sender's")

// checkSessionOwner reports, as errNotSendersSession, that the megolm session the reader holds for
// the event is not known to be one of the event's sender's devices. A bridge reads neither trust nor
// shield: decrypted, a member's re-post of another member's ciphertext (he needs no key, the
// ciphertext is in the room) would reach it as the re-poster's message, in words he could not even
// read. The session is the sender's if its sender key is a device of the sender heirloom knows,
// with the session's signing key; or, where heirloom knows no such device, if the key came to the
// reader from the sender himself (a room key over Olm, or his device's forward of its own session),
// not through a bundle or anyone else.
func checkSessionOwner(ctx context.Context, p *e2ee.Puppet, evt *event.Event, sessionID id.SessionID) error {
	igs, err := p.Store.GetGroupSession(ctx, evt.RoomID, sessionID)
	if err != nil {
		return fmt.Errorf("failed to read the session: %w", err)
	} else if igs == nil {
		return errNotSendersSession
	}
	device, err := p.Mach.CryptoStore.FindDeviceByKey(ctx, evt.Sender, id.IdentityKey(igs.SenderKey))
	switch {
	case err != nil:
		return fmt.Errorf("failed to look up the session's device: %w", err)
	case device != nil && device.SigningKey == igs.SigningKey:
		return nil
	case device == nil && igs.SourceUser == evt.Sender && len(igs.ForwardingChains) == 0:
		return nil
	}
	return errNotSendersSession
}
