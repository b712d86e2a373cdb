package e2ee

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/keybundle"
)

// Puppets never ask for room keys: a key Synapse did not push waits in the device inbox, and a
// sweep fetches it (sweep.go). The appservice's sender cannot sweep: Synapse refuses /sync to it.
// That is heirloom's bot, or in gateway mode the bridge's bot. When the key of a message it must
// read does not come (an admin's command; an event for the bridge), it asks the device that sent
// the message for it (m.room_key_request), and takes the answer only if it answers that request
// (askedKeys: one per device asked), decrypts the event it was asked for where the request knew
// it (RequestRoomKeyForEvent), and that device forwards its own session: the session's sender key
// is the key Olm authenticated the forward with, and nobody else is in its forwarding chain. Unlike
// the m.room_key the homeserver lost, whose session key the session's own Ed25519 key signs, a
// forward carries an export nobody signed, under a session ID anyone in the room has seen: the
// session is stored as an imported copy, which a key received directly replaces where the two
// differ. Any other forwarded key is refused, as it is for puppets.

// errNoSenderDevice means no known device of the sender has the session's sender key.
var errNoSenderDevice = errors.New("no known device of the sender has the session's key")

// requestRoomKeyFromSender asks the sender's device that holds the session for its room key.
// Only heirloom's bot and the appservice's sender take the answer. Its answer is not checked
// against any message: RequestRoomKeyForEvent, which knows the event, is preferred.
func (p *Puppet) requestRoomKeyFromSender(ctx context.Context, roomID id.RoomID, sender id.UserID, senderKey id.SenderKey, sessionID id.SessionID) error {
	return p.requestRoomKey(ctx, roomID, sender, senderKey, sessionID, nil)
}

// RequestRoomKeyForEvent asks the device that sent the encrypted event for its session's room key,
// and takes the answer only if it decrypts that event: a forward proves its ratchet so, where an
// export alone proves nothing (anyone who saw the session ID can send a junk ratchet under it).
func (p *Puppet) RequestRoomKeyForEvent(ctx context.Context, evt *event.Event) error {
	content, ok := evt.Content.Parsed.(*event.EncryptedEventContent)
	if !ok || content.Algorithm != id.AlgorithmMegolmV1 {
		return errNotEncrypted
	}
	return p.requestRoomKey(ctx, evt.RoomID, evt.Sender, content.SenderKey, content.SessionID, content.MegolmCiphertext)
}

func (p *Puppet) requestRoomKey(ctx context.Context, roomID id.RoomID, sender id.UserID, senderKey id.SenderKey, sessionID id.SessionID, proof []byte) error {
	device, err := p.Mach.GetOrFetchDeviceByKey(ctx, sender, senderKey)
	if err != nil {
		return fmt.Errorf("failed to find the sender's device: %w", err)
	} else if device == nil {
		return errNoSenderDevice
	}
	p.asked.add(roomID, sessionID, sender, senderKey, proof)
	if err = p.Mach.SendRoomKeyRequest(ctx, roomID, senderKey, sessionID, "", map[id.UserID][]id.DeviceID{sender: {device.DeviceID}}); err != nil {
		return fmt.Errorf("failed to request the room key: %w", err)
	}
	zerolog.Ctx(ctx).Info().Stringer("session_id", sessionID).Stringer("sender_device", device.DeviceID).
		Msg("Asked the sender's device for a room key the homeserver did not deliver")
	return nil
}

// takesOwnForwards reports whether the puppet takes a device's forward of its own session: only
// heirloom's bot and the appservice's sender, which ask for them.
func (p *Puppet) takesOwnForwards() bool {
	return p.UserID == p.mgr.cfg.BotUserID() || p.IsSender()
}

// IsSender reports whether the puppet is the appservice's sender (config.SenderUserID), to which
// Synapse refuses /sync: it cannot sweep its inbox, and asks for a missing key instead.
func (p *Puppet) IsSender() bool {
	return p.UserID == p.mgr.cfg.SenderUserID()
}

// receiveOwnForward stores a forwarded room key that its own sending device forwarded in answer to
// a key request sent to that device (askedKeys), under the same rules as a room key
// (roomKeyRefused, then StoreSession), as an imported copy: an export carries no signature, so a
// key received directly replaces it where the two differ. It drops any other.
func (p *Puppet) receiveOwnForward(ctx context.Context, evt *crypto.DecryptedOlmEvent, content *forwardedRoomKeyContent) {
	log := zerolog.Ctx(ctx).With().Stringer("room_id", content.RoomID).Stringer("session_id", content.SessionID).Logger()
	ctx = log.WithContext(ctx)
	if content.SenderKey != evt.SenderKey || content.SenderClaimedKey != evt.Keys.Ed25519 || len(content.ForwardingKeyChain) != 0 {
		log.Warn().Msg("Ignoring forwarded room key: only a device's forward of its own session is taken")
		return
	}
	proof, asked := p.asked.answer(content.RoomID, content.SessionID, evt.Sender, evt.SenderKey)
	if !asked {
		log.Warn().Msg("Ignoring forwarded room key: it answers no key request sent to that device")
		return
	} else if why := p.roomKeyRefused(ctx, evt, content.Algorithm, content.RoomID); why != "" {
		// The bot is never only invited to a room it asks for keys in: nothing is held.
		log.Warn().Str("reason", why).Msg("Dropping forwarded room key")
		return
	}
	internal, err := olm.InboundGroupSessionImport([]byte(content.SessionKey))
	if err != nil {
		log.Warn().Err(err).Msg("Dropping malformed forwarded room key")
		return
	} else if internal.ID() != content.SessionID {
		log.Warn().Stringer("actual_session_id", internal.ID()).Msg("Dropping forwarded room key whose session ID does not match its key")
		return
	}
	if proof != nil && !decrypts(internal, proof) {
		log.Warn().Msg("Dropping forwarded room key: it does not decrypt the message it was asked for")
		return
	}
	maxAge, maxMessages := p.RotationLimits(ctx, content.RoomID)
	notShared := keybundle.SharedWhenForwarded()
	igs := &crypto.InboundGroupSession{
		Internal: internal, SigningKey: evt.Keys.Ed25519, SenderKey: evt.SenderKey, RoomID: content.RoomID,
		ForwardingChains: []string{}, ReceivedAt: time.Now().UTC(), MaxAge: maxAge.Milliseconds(), MaxMessages: maxMessages,
		SharedHistory: &notShared, KeySource: id.KeySourceForward, SourceUser: evt.Sender,
	}
	stored, reason, err := p.StoreSession(ctx, igs)
	if reason == reasonContradicts && proof != nil {
		stored, err = p.replaceUnprovenCopy(ctx, igs, proof)
	}
	switch {
	case err != nil:
		log.Err(err).Msg("Failed to store forwarded room key")
	case !stored:
		log.Debug().Str("reason", reason).Msg("Not storing forwarded room key")
	default:
		log.Info().Msg("Stored the room key its sender's device forwarded")
	}
}

// replaceUnprovenCopy stores igs, a forward whose ratchet decrypted the message it was asked for,
// in place of the held copy its ratchet contradicts, if that copy is an imported one that does not
// decrypt that message (a junk ratchet under the session's public ID, taken before). A copy
// received directly, or one that decrypts the message too, stays.
func (p *Puppet) replaceUnprovenCopy(ctx context.Context, igs *crypto.InboundGroupSession, proof []byte) (replaced bool, err error) {
	err = p.mgr.gate(p.UserID).megolmLock(ctx, igs.ID(), true, func(ctx context.Context) error {
		held, err := p.Store.GetGroupSession(ctx, igs.RoomID, igs.ID())
		if err != nil || held == nil || isDirect(held) || decrypts(held.Internal, proof) {
			return err
		}
		replaced = true
		return p.Store.PutGroupSession(ctx, igs)
	})
	if replaced {
		zerolog.Ctx(ctx).Warn().Msg("Replaced a forwarded copy that did not decrypt the message asked for")
		p.Mach.MarkSessionReceived(ctx, igs.RoomID, igs.ID(), igs.Internal.FirstKnownIndex())
	}
	return replaced, err
}

// decrypts reports whether the session decrypts the megolm ciphertext (its signature by the
// session's key included).
func decrypts(s olm.InboundGroupSession, ciphertext []byte) bool {
	_, _, err := s.Decrypt(ciphertext)
	return err == nil
}
