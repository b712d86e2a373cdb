package e2ee

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee/cryptostore"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// SendMessage sends an event into the room as the puppet, megolm-encrypted if the room is
// encrypted. The room key goes first to every device of every joined member, and of every invited
// member unless the history visibility is `joined`: the members as the homeserver knows them now,
// their devices as the shared device tables hold them, fetched again where a change was reported
// (memberDevices).
func (p *Puppet) SendMessage(ctx context.Context, roomID id.RoomID, evtType event.Type, content any) (id.EventID, error) {
	return p.SendMessageTxn(ctx, roomID, evtType, content, "")
}

// SendMessageTxn is SendMessage with the caller's transaction ID ("" for a new one): the
// homeserver answers a repeated ID of the same device with the event it already sent.
func (p *Puppet) SendMessageTxn(ctx context.Context, roomID id.RoomID, evtType event.Type, content any, txnID string) (id.EventID, error) {
	if err := p.mgr.EnsureRoomState(ctx, p.Client, roomID); err != nil {
		return "", err
	}
	// In the clear only if the homeserver just said the room is unencrypted (encryptionstate.go).
	encrypted, err := p.mgr.RoomEncrypted(ctx, p.Client, roomID)
	if err != nil {
		return "", err
	}
	req := mautrix.ReqSendEvent{TransactionID: txnID}
	if !encrypted {
		resp, err := p.Client.SendMessageEvent(ctx, roomID, evtType, content, req)
		if err != nil {
			if errors.Is(err, mautrix.MForbidden) {
				p.mgr.ForgetPlaintext(roomID, p.UserID) // not in the room: the answer was not a member's
			}
			return "", fmt.Errorf("failed to send event: %w", err)
		}
		return resp.EventID, nil
	}
	defer p.roomLock.WithLock(roomID)()
	if err = p.shareRoomKey(ctx, roomID); err != nil {
		return "", err
	}
	enc, err := p.Mach.EncryptMegolmEvent(ctx, roomID, evtType, content)
	if err != nil {
		return "", fmt.Errorf("failed to encrypt event: %w", err)
	}
	resp, err := p.Client.SendMessageEvent(ctx, roomID, event.EventEncrypted, enc, req)
	if err != nil {
		return "", fmt.Errorf("failed to send encrypted event: %w", err)
	}
	zerolog.Ctx(ctx).Debug().Stringer("room_id", roomID).Stringer("event_id", resp.EventID).
		Stringer("session_id", enc.SessionID).Msg("Sent encrypted event")
	return resp.EventID, nil
}

// shareRoomKey makes sure the puppet has a current outbound megolm session for the room and that
// every device of every joined or invited member holds its key. Callers hold the room lock.
func (p *Puppet) shareRoomKey(ctx context.Context, roomID id.RoomID) error {
	log := zerolog.Ctx(ctx).With().Stringer("room_id", roomID).Logger()
	members, err := p.Client.Members(ctx, roomID)
	if err != nil {
		return fmt.Errorf("failed to get room members: %w", err)
	}
	visibility, err := p.Mach.StateStore.GetHistoryVisibility(ctx, roomID)
	if err != nil {
		return fmt.Errorf("failed to get history visibility: %w", err)
	}
	shared := keybundle.SharedWhenCreated(visibility)
	ogs, err := p.Store.GetOutboundGroupSession(ctx, roomID)
	if err != nil {
		return fmt.Errorf("failed to get outbound session: %w", err)
	}
	if ogs != nil {
		if reason := p.rotationReason(ctx, ogs, shared, members); reason != "" {
			log.Info().Stringer("session_id", ogs.ID()).Str("reason", reason).Msg("Rotating outbound megolm session")
			if err = p.Store.RemoveOutboundGroupSession(ctx, roomID); err != nil {
				return fmt.Errorf("failed to discard outbound session: %w", err)
			}
			p.forgetDepartures(ogs.ID())
			ogs = nil
		}
	}
	if ogs == nil {
		if ogs, err = p.newOutboundSession(ctx, roomID, visibility, shared); err != nil {
			return err
		}
		p.rememberDepartures(ogs.ID(), members)
	}
	recipients := make(map[id.UserID]map[id.DeviceID]*id.Device)
	// Invited members read what is sent while they are invited, unless the room's history is for
	// joined members only (as Element's clients decide: an invitee of a `joined` room gets no key).
	withInvited := visibility == nil || visibility.HistoryVisibility != event.HistoryVisibilityJoined
	var users []id.UserID
	invited := map[id.UserID]bool{}
	for _, evt := range members.Chunk {
		membership := evt.Content.AsMember().Membership
		if membership != event.MembershipJoin && (membership != event.MembershipInvite || !withInvited) {
			continue
		}
		users = append(users, id.UserID(evt.GetStateKey()))
		if membership == event.MembershipInvite {
			invited[id.UserID(evt.GetStateKey())] = true
		}
	}
	devices, err := p.memberDevices(ctx, users, invited)
	if err != nil {
		return err
	}
	var candidates []cryptostore.Recipient
	for _, userID := range users {
		for _, device := range devices[userID] {
			candidates = append(candidates, cryptostore.Recipient{UserID: userID, IdentityKey: device.IdentityKey})
		}
	}
	already, err := p.sharedWith(ctx, ogs.ID(), candidates)
	if err != nil {
		return err
	}
	for _, userID := range users {
		for deviceID, device := range devices[userID] {
			if userID == p.UserID && deviceID == p.DeviceID {
				continue
			}
			if already[cryptostore.Recipient{UserID: userID, IdentityKey: device.IdentityKey}] || device.Trust == id.TrustStateBlacklisted {
				continue
			}
			if recipients[userID] == nil {
				recipients[userID] = make(map[id.DeviceID]*id.Device)
			}
			recipients[userID][deviceID] = device
		}
	}
	if err = p.sendRoomKey(ctx, ogs, shared, recipients); err != nil {
		return err
	}
	if !ogs.Shared {
		// UpdateOutboundGroupSession does not write the shared flag; the upsert does.
		ogs.Shared = true
		return p.Store.AddOutboundGroupSession(ctx, ogs)
	}
	return nil
}

// rotationReason says why the outbound session must not be used again, or "" if it may
// (rotationReason decides).
func (p *Puppet) rotationReason(ctx context.Context, ogs *crypto.OutboundGroupSession, shared bool, members *mautrix.RespMembers) string {
	changedBefore, err := p.mgr.db.RotateAfter(ctx, ogs.RoomID)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to read the room's rotation mark; deciding without it")
	}
	p.departuresLock.Lock()
	known := p.departuresSeen[ogs.ID()]
	p.departuresLock.Unlock()
	return rotationReason(rotationInput{
		Created:       ogs.CreationTime,
		Expired:       ogs.Expired(),
		SharedHistory: ogs.SharedHistory,
		SharesHistory: shared,
		ChangedBefore: changedBefore,
		Departures:    departuresOf(members.Chunk),
		Known:         known,
		Self:          p.UserID,
	})
}

// rememberDepartures records the leave and ban events of the member list a new outbound session
// was created from.
func (p *Puppet) rememberDepartures(sessionID id.SessionID, members *mautrix.RespMembers) {
	seen := map[id.EventID]struct{}{}
	for _, d := range departuresOf(members.Chunk) {
		seen[d.EventID] = struct{}{}
	}
	p.departuresLock.Lock()
	defer p.departuresLock.Unlock()
	if p.departuresSeen == nil {
		p.departuresSeen = map[id.SessionID]map[id.EventID]struct{}{}
	}
	p.departuresSeen[sessionID] = seen
}

func (p *Puppet) forgetDepartures(sessionID id.SessionID) {
	p.departuresLock.Lock()
	defer p.departuresLock.Unlock()
	delete(p.departuresSeen, sessionID)
}

func (p *Puppet) newOutboundSession(ctx context.Context, roomID id.RoomID, visibility *event.HistoryVisibilityEventContent, shared bool) (*crypto.OutboundGroupSession, error) {
	encEvt, err := p.mgr.encryptionSettings(ctx, roomID)
	if err != nil {
		return nil, fmt.Errorf("failed to get encryption event: %w", err)
	}
	ogs, err := crypto.NewOutboundGroupSession(roomID, encEvt, visibility)
	if err != nil {
		return nil, fmt.Errorf("failed to create outbound session: %w", err)
	}
	ogs.SharedHistory = &shared
	own := p.Mach.OwnIdentity()
	igs, err := crypto.NewInboundGroupSession(own.IdentityKey, own.SigningKey, roomID, ogs.Internal.Key(),
		time.Duration(ogs.MaxAge), ogs.MaxMessages, &shared, false)
	if err != nil {
		return nil, fmt.Errorf("failed to create own inbound session: %w", err)
	}
	igs.SourceUser = p.UserID
	if err = p.Mach.StoreGroupSession(ctx, igs); err != nil {
		return nil, fmt.Errorf("failed to store own inbound session: %w", err)
	}
	if err = p.Store.AddOutboundGroupSession(ctx, ogs); err != nil {
		return nil, fmt.Errorf("failed to store outbound session: %w", err)
	}
	zerolog.Ctx(ctx).Debug().Stringer("room_id", roomID).Stringer("session_id", ogs.ID()).
		Bool("shared_history", shared).Msg("Created outbound megolm session")
	return ogs, nil
}

// sendRoomKey Olm-encrypts the m.room_key to each recipient device and sends it. The history flag
// is written under both names rust-sdk reads (keybundle.SendFlagFields). Devices without an Olm
// session (no one-time key left) are skipped now and get the key on the next send.
func (p *Puppet) sendRoomKey(ctx context.Context, ogs *crypto.OutboundGroupSession, shared bool, recipients map[id.UserID]map[id.DeviceID]*id.Device) error {
	if len(recipients) == 0 {
		return nil
	}
	local, err := p.deliverLocally(ctx, ogs, shared, recipients)
	if err != nil {
		return err
	}
	if len(recipients) == 0 {
		zerolog.Ctx(ctx).Debug().Stringer("session_id", ogs.ID()).Int("local_devices", local).Bool("shared_history", shared).
			Msg("Shared room key")
		return nil
	}
	keyContent := &event.RoomKeyEventContent{
		Algorithm:  id.AlgorithmMegolmV1,
		RoomID:     ogs.RoomID,
		SessionID:  ogs.ID(),
		SessionKey: ogs.Internal.Key(),
	}
	req := &mautrix.ReqSendToDevice{Messages: make(map[id.UserID]map[id.DeviceID]*event.Content)}
	for userID, devices := range recipients {
		req.Messages[userID] = make(map[id.DeviceID]*event.Content)
		for deviceID := range devices {
			req.Messages[userID][deviceID] = &event.Content{Parsed: keyContent, Raw: keybundle.SendFlagFields(shared)}
		}
	}
	encrypted, err := p.Mach.EncryptToDevices(ctx, event.ToDeviceRoomKey, req)
	if err != nil {
		return fmt.Errorf("failed to encrypt room key: %w", err)
	}
	if _, err = p.Client.SendToDevice(ctx, event.ToDeviceEncrypted, encrypted); err != nil {
		return fmt.Errorf("failed to send room key: %w", err)
	}
	sent := 0
	for userID, devices := range encrypted.Messages {
		for deviceID := range devices {
			device := recipients[userID][deviceID]
			if err = p.Store.MarkOutboundGroupSessionShared(ctx, userID, device.IdentityKey, ogs.ID()); err != nil {
				return fmt.Errorf("failed to record session recipient: %w", err)
			}
			sent++
		}
	}
	zerolog.Ctx(ctx).Debug().Stringer("session_id", ogs.ID()).Int("devices", sent).Int("local_devices", local).
		Bool("shared_history", shared).Msg("Shared room key")
	return nil
}

// deliverLocally gives the session's key to the recipients whose device heirloom holds itself (other
// puppets, the bridge's other users in gateway mode) by storing it in their store, under the same
// rules as a key that came over Olm: Olm to itself would cost an encryption, a to-device message
// through the homeserver and a decryption per device, and a room with many puppets would pay that
// for every pair. It removes them from recipients and returns how many there were.
func (p *Puppet) deliverLocally(ctx context.Context, ogs *crypto.OutboundGroupSession, shared bool, recipients map[id.UserID]map[id.DeviceID]*id.Device) (int, error) {
	own := p.Mach.OwnIdentity()
	n := 0
	for userID, devices := range recipients {
		if !p.mgr.cfg.IsManaged(userID) || userID == p.UserID {
			continue
		}
		for deviceID, device := range devices {
			q := p.mgr.localDevice(ctx, userID, deviceID, device.IdentityKey)
			if q == nil {
				continue
			}
			maxAge, maxMessages := q.RotationLimits(ctx, ogs.RoomID)
			igs, err := crypto.NewInboundGroupSession(own.IdentityKey, own.SigningKey, ogs.RoomID, ogs.Internal.Key(),
				maxAge, maxMessages, &shared, false)
			if err != nil {
				return n, fmt.Errorf("failed to copy the session for %s: %w", userID, err)
			}
			igs.SourceUser = p.UserID
			if _, _, err = q.StoreSession(ctx, igs); err != nil {
				return n, fmt.Errorf("failed to store the session for %s: %w", userID, err)
			}
			if err = p.Store.MarkOutboundGroupSessionShared(ctx, userID, device.IdentityKey, ogs.ID()); err != nil {
				return n, fmt.Errorf("failed to record session recipient: %w", err)
			}
			delete(devices, deviceID)
			n++
		}
		if len(devices) == 0 {
			delete(recipients, userID)
		}
	}
	return n, nil
}

// localDevice returns the loaded machine of a device heirloom holds itself: the user's current
// device, with the very identity key the device list names. Anything else is a remote device.
func (m *Manager) localDevice(ctx context.Context, userID id.UserID, deviceID id.DeviceID, identityKey id.IdentityKey) *Puppet {
	q, err := m.Get(ctx, userID)
	if err != nil || q.DeviceID != deviceID || q.Mach.OwnIdentity().IdentityKey != identityKey {
		return nil
	}
	return q
}

// EnsureRoomState loads the room's state from the homeserver once, so encryption and history
// visibility are known before heirloom encrypts or shares anything in it.
func (m *Manager) EnsureRoomState(ctx context.Context, cli *mautrix.Client, roomID id.RoomID) error {
	create, err := m.db.StateStore.GetCreate(ctx, roomID)
	if err != nil {
		return fmt.Errorf("failed to check room state: %w", err)
	} else if create != nil {
		return nil
	}
	asked := m.db.Now()
	state, err := cli.State(ctx, roomID)
	if err != nil {
		if errors.Is(err, mautrix.MForbidden) || errors.Is(err, mautrix.MNotFound) {
			return fmt.Errorf("%w: %w", ErrUnknownRoom, err)
		}
		return fmt.Errorf("failed to fetch room state: %w", err)
	}
	if enc := state[event.StateEncryption][""]; enc != nil {
		return m.RecordEncryption(ctx, roomID, enc.Content.VeryRaw)
	}
	if isJoinedIn(state, cli.UserID) {
		// The homeserver's word, as from fetchEncryption: the state of a room the user is in.
		m.plain.confirm(roomID, cli.UserID, asked)
	}
	return nil
}

// isJoinedIn reports whether the room's state has the user joined: a departed user is answered
// with the room's state at their leave.
func isJoinedIn(state mautrix.RoomStateMap, userID id.UserID) bool {
	member := state[event.StateMember][userID.String()]
	if member == nil {
		return false
	}
	var content struct {
		Membership event.Membership `json:"membership"`
	}
	return json.Unmarshal(member.Content.VeryRaw, &content) == nil && content.Membership == event.MembershipJoin
}

// ErrUnknownRoom means the homeserver does not let the puppet see the room.
var ErrUnknownRoom = errors.New("room unknown or not visible to the puppet")
