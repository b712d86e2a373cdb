package e2ee

import (
	"context"
	"errors"
	"fmt"

	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Decrypted is an m.room.encrypted room event as a puppet decrypted it.
type Decrypted struct {
	// Event is the plaintext event: the encrypted one's ID, sender, room and time, with the
	// decrypted type and content.
	Event     *event.Event
	SessionID id.SessionID
	// SenderDevice is the device the session's keys belong to, if heirloom knows it.
	SenderDevice id.DeviceID
	// Trust is how far the key vouches for the sender (TrustName).
	Trust string
	// KeysSharedBy is the user whose key bundle supplied the key, if one did (MSC4268).
	KeysSharedBy id.UserID
}

// ErrNotEncrypted means the event handed to Decrypt is no megolm-encrypted room event.
var ErrNotEncrypted = errors.New("not an m.room.encrypted event")

// Decrypt decrypts an encrypted room event with the puppet's keys. Its error wraps mautrix's:
// IsMissingKey tells a key that has not arrived (yet) from everything else.
func (p *Puppet) Decrypt(ctx context.Context, evt *event.Event) (*Decrypted, error) {
	if evt.Type != event.EventEncrypted {
		return nil, ErrNotEncrypted
	}
	if err := evt.Content.ParseRaw(evt.Type); err != nil && !errors.Is(err, event.ErrContentAlreadyParsed) {
		return nil, fmt.Errorf("malformed encrypted content: %w", err)
	}
	content, ok := evt.Content.Parsed.(*event.EncryptedEventContent)
	if !ok {
		return nil, ErrNotEncrypted
	}
	decrypted, err := p.Mach.DecryptMegolmEvent(ctx, evt)
	if err != nil {
		return &Decrypted{SessionID: content.SessionID}, err
	}
	// The sending device as the session's keys identify it (the event's own device_id field is
	// deprecated and unauthenticated).
	d := &Decrypted{Event: decrypted, SessionID: content.SessionID,
		Trust: TrustName(decrypted.Mautrix.TrustState, decrypted.Mautrix.ForwardedKeys)}
	if src := decrypted.Mautrix.TrustSource; src != nil {
		d.SenderDevice = src.DeviceID
	}
	if igs, err := p.Store.GetGroupSession(ctx, evt.RoomID, content.SessionID); err == nil && igs != nil &&
		igs.KeySource == id.KeySourceForward && igs.SourceUser != "" {
		d.KeysSharedBy = igs.SourceUser
	}
	return d, nil
}

// IsMissingKey reports whether a decryption error means the puppet holds no key for the
// session (yet): a key that may still arrive.
func IsMissingKey(err error) bool {
	return errors.Is(err, crypto.ErrNoSessionFound)
}
