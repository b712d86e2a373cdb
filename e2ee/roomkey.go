package e2ee

import (
	"context"
	"encoding/json"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee/cryptostore"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// toDeviceRoomKeyBundleUnstable is MSC4268's unstable to-device type. matrix-rust-sdk ≥ 0.17 sends
// only the stable m.room_key_bundle, older clients only this one; heirloom accepts both.
var toDeviceRoomKeyBundleUnstable = event.Type{Type: "io.element.msc4268.room_key_bundle", Class: event.ToDeviceEventType}

// RoomKeyContent is an m.room_key whose history flag was read from any of its three names.
type RoomKeyContent struct {
	event.RoomKeyEventContent
	HistoryShared bool `json:"-"`
}

// UnmarshalJSON reads the standard fields and the history flag (keybundle.SharedWhenReceived).
func (c *RoomKeyContent) UnmarshalJSON(data []byte) error {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return err
	}
	if err := json.Unmarshal(data, &c.RoomKeyEventContent); err != nil {
		return err
	}
	c.HistoryShared = keybundle.SharedWhenReceived(fields)
	c.SharedHistory = &c.HistoryShared
	return nil
}

// forwardedRoomKeyContent is an m.forwarded_room_key. Puppets never request room keys (each has
// one device and no key backup), so a forwarded key is always unsolicited; mautrix v0.32.0 would
// store one from any sender, attributed to whatever sender_key it names. heirloom refuses them.
type forwardedRoomKeyContent struct {
	event.ForwardedRoomKeyEventContent
}

// BundleContent is the content of an m.room_key_bundle (or its unstable twin) to-device message.
type BundleContent struct {
	event.RoomKeyBundleEventContent
	// Type is the event type it arrived as.
	Type event.Type `json:"-"`
}

// handleToDevice processes one to-device event addressed to this puppet's device.
func (p *Puppet) handleToDevice(ctx context.Context, evt *event.Event) {
	if evt.Type != event.ToDeviceEncrypted {
		switch {
		case p.isForeignKeyRequest(evt):
			requestID := ""
			if req, ok := evt.Content.Parsed.(*event.RoomKeyRequestEventContent); ok {
				requestID = req.RequestID
			}
			zerolog.Ctx(ctx).Info().Str("request_id", requestID).Msg("Refusing room key request from another user")
		case evt.Type == event.ToDeviceRoomKeyWithheld:
			p.receiveWithheld(ctx, evt)
		default:
			p.Mach.HandleToDeviceEvent(ctx, evt)
		}
		return
	}
	if !p.seenToDevice.add(toDeviceKey(evt)) {
		zerolog.Ctx(ctx).Debug().Msg("Skipping an encrypted to-device message already handled (pushed, then swept)")
		return
	}
	// An Olm pre-key message takes a one-time key out of the account: decrypted under the account
	// lock, by the machine loaded now.
	current, unlock, err := p.mgr.lockCurrent(ctx, p)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to load the puppet's machine for a to-device message")
		return
	} else if current != p {
		unlock()
		current.handleToDevice(ctx, evt)
		return
	}
	decrypted := p.Mach.HandleEncryptedEvent(ctx, evt)
	unlock()
	if decrypted == nil {
		return
	}
	// The sender is in the context already (RouteToDevice, SweepToDevice).
	log := zerolog.Ctx(ctx).With().Str("decrypted_type", decrypted.Type.Type).Logger()
	ctx = log.WithContext(ctx)
	switch content := decrypted.Content.Parsed.(type) {
	case *RoomKeyContent:
		p.receiveRoomKey(ctx, decrypted, content)
	case *forwardedRoomKeyContent:
		if p.takesOwnForwards() {
			p.receiveOwnForward(ctx, decrypted, content)
			return
		}
		log.Warn().Stringer("room_id", content.RoomID).Stringer("session_id", content.SessionID).
			Msg("Ignoring forwarded room key: puppets never request keys, so it was not asked for")
	case *BundleContent:
		content.Type = decrypted.Type
		p.mgr.OnRoomKeyBundle(ctx, p, decrypted, content)
	default:
		log.Debug().Msg("Ignoring unhandled encrypted to-device event")
	}
}

// receiveRoomKey stores an inbound megolm session with its history flag: the key checked
// (roomKeyRefused), the session ID checked against the key, then StoreSession's rules (held under
// the room it names, merged by MergeSessions with the copy of that room).
func (p *Puppet) receiveRoomKey(ctx context.Context, evt *crypto.DecryptedOlmEvent, content *RoomKeyContent) {
	log := zerolog.Ctx(ctx).With().
		Stringer("room_id", content.RoomID).
		Stringer("session_id", content.SessionID).
		Bool("shared_history", content.HistoryShared).
		Logger()
	ctx = log.WithContext(ctx)
	if why := p.roomKeyRefused(ctx, evt, content.Algorithm, content.RoomID); why != "" {
		switch {
		case why == reasonHeldUntilJoin && p.mgr.held.hold(p.UserID, evt, content):
			log.Info().Msg("Holding a room key until the puppet joins: the homeserver says who is a member only then")
			return
		case why == reasonUnanswered && p.mgr.held.hold(p.UserID, evt, content):
			// Never dropped over an error: held, and asked again later (retryHeldKeys).
			log.Warn().Msg("Holding a room key: the homeserver did not answer whether its sender is a member")
			p.retryHeldKeys(ctx, content.RoomID)
			return
		}
		log.Warn().Str("reason", why).Msg("Dropping room key")
		return
	}
	if !keybundle.CanonicalBase64(content.SessionKey) {
		log.Warn().Msg("Dropping room key whose session key is not canonical base64")
		return
	}
	maxAge, maxMessages := p.RotationLimits(ctx, content.RoomID)
	igs, err := crypto.NewInboundGroupSession(evt.SenderKey, evt.Keys.Ed25519, content.RoomID, content.SessionKey,
		maxAge, maxMessages, &content.HistoryShared, content.IsScheduled)
	if err != nil {
		log.Warn().Err(err).Msg("Dropping malformed room key")
		return
	} else if igs.ID() != content.SessionID {
		log.Warn().Stringer("actual_session_id", igs.ID()).Msg("Dropping room key whose session ID does not match its key")
		return
	}
	igs.SourceUser = evt.Sender
	stored, reason, err := p.StoreSession(ctx, igs)
	switch {
	case err != nil:
		log.Err(err).Msg("Failed to store room key")
	case !stored && reason == ReasonHeldNoBetter:
		log.Debug().Msg("Room key already held")
	case !stored:
		log.Warn().Str("reason", reason).Msg("Dropping room key")
	default:
		log.Debug().Msg("Stored room key")
	}
}

// Reasons a room key (or the bot's forward) is not stored.
const (
	reasonUnknownAlgorithm = "unknown algorithm"
	reasonBadRoomID        = "room_id is not a room ID heirloom stores"
	reasonNotTheDevicesKey = "the claimed Ed25519 key is not the sending device's (no known device, no sender_device_keys)"
	reasonBadSigningKey    = "the claimed Ed25519 key is not a valid Ed25519 point in canonical base64"
	reasonBadSenderKey     = "the sender key is not a 32-byte key in canonical base64"
	reasonPuppetNotInRoom  = "the puppet is not in the room"
	reasonSenderNotMember  = "the sender is not a joined or invited member of the room"
	reasonHeldUntilJoin    = "the sender's membership can be asked only once the puppet has joined"
	reasonUnanswered       = "the homeserver did not answer whether the puppet and the sender are in the room"
)

// roomKeyRefused returns why a room key (or forward) the Olm message evt carried for roomID must not
// be stored, or "":
//   - its claimed Ed25519 key (keys.ed25519 in the Olm payload) becomes the session's signing key,
//     which every bundle the puppet builds carries and rust-sdk refuses a whole bundle over if it is
//     not a point: it must be the sending device's, which mautrix checked against a device heirloom
//     knows or the payload's sender_device_keys (MSC4147) and then names, and a valid point;
//   - it and the sender key go out verbatim in those bundles, and rust-sdk refuses a whole bundle
//     over a key in non-canonical base64: both must be canonical (keybundle.Strict);
//   - it counts only from someone who could have had it: the puppet is in the room, and the
//     sender is a joined or invited member of it (senderVerdict). A stranger or a past member gets
//     nothing stored; while the puppet is only invited, the key is held until it joins, and while
//     the homeserver does not answer, until it does (reasonUnanswered: never dropped over an error).
func (p *Puppet) roomKeyRefused(ctx context.Context, evt *crypto.DecryptedOlmEvent, algorithm id.Algorithm, roomID id.RoomID) string {
	switch {
	case algorithm != id.AlgorithmMegolmV1:
		return reasonUnknownAlgorithm
	case !keybundle.ValidRoomID(roomID):
		return reasonBadRoomID
	case evt.SenderDevice == nil || evt.SenderDevice.SigningKey != evt.Keys.Ed25519 || evt.SenderDevice.IdentityKey != evt.SenderKey:
		return reasonNotTheDevicesKey
	case !keybundle.ValidSigningKeyString(evt.Keys.Ed25519):
		return reasonBadSigningKey
	case !keybundle.ValidKey(string(evt.SenderKey)):
		return reasonBadSenderKey
	}
	switch p.membershipOf(ctx, roomID, p.UserID) {
	case member:
	case unanswered:
		return reasonUnanswered
	default:
		return reasonPuppetNotInRoom
	}
	switch p.senderVerdict(ctx, roomID, evt.Sender) {
	case member:
		return ""
	case unknownMember:
		return reasonHeldUntilJoin
	case unanswered:
		return reasonUnanswered
	}
	return reasonSenderNotMember
}

// receiveWithheld stores a plaintext m.room_key.withheld. Anyone can send one, unauthenticated,
// so heirloom keeps only what a member of the room says about a room the puppet is in, about a
// session of one of the member's own devices (a withheld entry turns "no key yet", which callers
// wait and sweep for, into a final failure: nobody may say it of another member's session), never
// m.history_not_shared (MSC4268 uses that code only inside bundles), and never over a row.
func (p *Puppet) receiveWithheld(ctx context.Context, evt *event.Event) {
	content, ok := evt.Content.Parsed.(*event.RoomKeyWithheldEventContent)
	if !ok {
		return
	}
	log := zerolog.Ctx(ctx).With().Stringer("room_id", content.RoomID).Stringer("session_id", content.SessionID).
		Str("code", string(content.Code)).Logger()
	switch {
	case content.Algorithm != id.AlgorithmMegolmV1 || !keybundle.ValidKey(string(content.SessionID)) ||
		!keybundle.ValidKey(string(content.SenderKey)) || !keybundle.ValidRoomID(content.RoomID) ||
		!keybundle.ValidText(string(content.Code), keybundle.MaxText) || !keybundle.ValidText(content.Reason, keybundle.MaxText):
		log.Debug().Msg("Ignoring malformed room key withheld message")
	case keybundle.IsHistoryNotShared(string(content.Code)):
		log.Debug().Msg("Ignoring history-not-shared code outside a key bundle")
	case !p.mgr.isMember(ctx, content.RoomID, p.UserID) || !p.mgr.isMember(ctx, content.RoomID, evt.Sender):
		log.Debug().Msg("Ignoring room key withheld message for a room the puppet and sender do not share")
	case !p.ownsDevice(ctx, evt.Sender, content.SenderKey):
		log.Debug().Stringer("sender_key", content.SenderKey).
			Msg("Ignoring room key withheld message about a session of a device not known to be the sender's")
	default:
		// Under the session's lock, like every other write of a session row: a withheld entry
		// must not slip in between a bundle import's check and its insert.
		err := p.mgr.gate(p.UserID).megolmLock(ctx, content.SessionID, true, func(ctx context.Context) error {
			return cryptostore.PutDeviceWithheld(ctx, p.Store.DB, p.Store.AccountID, content.RoomID, content.SessionID,
				content.SenderKey, string(content.Code), content.Reason, evt.Sender)
		})
		if err != nil {
			log.Err(err).Msg("Failed to store room key withheld message")
		}
	}
}

// ownsDevice reports whether a device of user that heirloom knows has identityKey. Only the store
// is asked: a withheld message is plaintext anyone can send, and must not make the puppet query
// the homeserver. A device not known yet leaves the key "not arrived", which callers retry.
func (p *Puppet) ownsDevice(ctx context.Context, user id.UserID, identityKey id.SenderKey) bool {
	device, err := p.Mach.CryptoStore.FindDeviceByKey(ctx, user, identityKey)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to look up the device of a sender key")
	}
	return err == nil && device != nil
}
