package e2ee

import (
	"context"
	"errors"
	"fmt"

	"github.com/heirloom-matrix/heirloom/database"
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

// errNotEncrypted means the event handed to Decrypt is no megolm-encrypted room event.
var errNotEncrypted = errors.New("not an m.room.encrypted event")

// Decrypt decrypts an encrypted room event with the puppet's keys, with the session held for the
// event's room. Its error wraps mautrix's: IsMissingKey tells a key that has not arrived (yet) from
// everything else.
func (p *Puppet) Decrypt(ctx context.Context, evt *event.Event) (*Decrypted, error) {
	if evt.Type != event.EventEncrypted {
		return nil, errNotEncrypted
	}
	if err := evt.Content.ParseRaw(evt.Type); err != nil && !errors.Is(err, event.ErrContentAlreadyParsed) {
		return nil, fmt.Errorf("malformed encrypted content: %w", err)
	}
	content, ok := evt.Content.Parsed.(*event.EncryptedEventContent)
	if !ok {
		return nil, errNotEncrypted
	}
	decrypted, err := p.Mach.DecryptMegolmEvent(context.WithValue(ctx, deferIndexCheck{}, true), evt)
	if err == nil {
		err = p.checkMessageIndex(ctx, evt, content)
	} else if errors.Is(err, crypto.ErrGroupSessionWithheld) && !p.withheldSpeaksFor(ctx, evt, content) {
		err = fmt.Errorf("%w (ID %s; a withheld entry of another sender's device is no answer)", crypto.ErrNoSessionFound, content.SessionID)
	}
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

// deferIndexCheck marks a decryption whose megolm message index heirloom checks itself, after
// mautrix (checkMessageIndex).
type deferIndexCheck struct{}

// machineStore is the crypto store a puppet's Olm machine works on: mautrix's, but that a
// decryption through Puppet.Decrypt records no megolm message index while mautrix decrypts.
// mautrix checks an index against replays (one event per session and index, in
// crypto_message_index) before it compares the room the plaintext names with the event's room: a
// ciphertext copied from room A into room B, decrypted there with a copy of the session the puppet
// holds for B, would record its index, and the genuine event in A would be refused as a replay.
// Its table is also shared by every account and room. Every decryption heirloom does goes through
// Puppet.Decrypt (the admin bot's too), which checks the index in heirloom's own table instead.
type machineStore struct {
	*crypto.SQLCryptoStore
}

// ValidateMessageIndex is mautrix's check, but for a decryption that checks the index itself.
func (s machineStore) ValidateMessageIndex(ctx context.Context, sessionID id.SessionID, eventID id.EventID, index uint, timestamp int64) (bool, error) {
	if ctx.Value(deferIndexCheck{}) != nil {
		return true, nil
	}
	return s.SQLCryptoStore.ValidateMessageIndex(ctx, sessionID, eventID, index, timestamp)
}

// checkMessageIndex is the replay check of a decrypted event, once mautrix found that the
// plaintext names the event's room: another event of the same sender with the same session and
// message index, in the same room, for the same puppet, is refused (database.CheckMessageIndex).
//
// mautrix's own check keys on (session, index) alone, for every account and room at once. What
// makes an event genuine is the room and sender the homeserver attests, with the ciphertext: a
// member who re-posts another's ciphertext as his own new event (he needs no key) gets a record of
// his own, and the genuine event still decrypts, whichever is read first. The event's sender_key
// field is not in the key: it is outside the ciphertext, and a re-post could change it at will.
func (p *Puppet) checkMessageIndex(ctx context.Context, evt *event.Event, content *event.EncryptedEventContent) error {
	index, err := crypto.ParseMegolmMessageIndex(content.MegolmCiphertext)
	if err != nil {
		return fmt.Errorf("failed to read the message index: %w", err)
	}
	ok, err := p.mgr.db.CheckMessageIndex(ctx, database.MessageIndex{AccountID: p.Store.AccountID, RoomID: evt.RoomID,
		SessionID: content.SessionID, Index: index, Sender: evt.Sender, EventID: evt.ID, Timestamp: evt.Timestamp})
	if err != nil {
		return fmt.Errorf("failed to check if message index is duplicate: %w", err)
	} else if !ok {
		return fmt.Errorf("%w %d", crypto.ErrDuplicateMessageIndex, index)
	}
	return nil
}
