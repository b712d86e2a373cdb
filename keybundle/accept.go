package keybundle

import (
	"errors"
	"fmt"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Reasons a received bundle is dropped on arrival (MSC4147 rules for m.room_key_bundle).
var (
	ErrNoSenderDeviceKeys     = errors.New("bundle message has no sender_device_keys")
	ErrDeviceKeysWrongUser    = errors.New("sender_device_keys belong to another user than the sender")
	ErrDeviceKeysMismatch     = errors.New("sender_device_keys do not match the keys of the Olm session")
	ErrDeviceKeysBadSignature = errors.New("sender_device_keys are not signed by the device itself")
)

// ValidateSenderDeviceKeys checks the device keys an Olm-encrypted bundle message carries: they
// must be present, belong to the sender, be self-signed, and name the same Ed25519 and Curve25519
// keys the Olm message was sent with.
func ValidateSenderDeviceKeys(sender id.UserID, senderKey id.SenderKey, claimedEd25519 id.Ed25519, keys *mautrix.DeviceKeys) error {
	if keys == nil {
		return ErrNoSenderDeviceKeys
	}
	if keys.UserID != sender {
		return fmt.Errorf("%w (%s, sent by %s)", ErrDeviceKeysWrongUser, keys.UserID, sender)
	}
	ed := keys.Keys.GetEd25519(keys.DeviceID)
	curve := keys.Keys.GetCurve25519(keys.DeviceID)
	if keys.DeviceID == "" || ed == "" || ed != claimedEd25519 || curve != senderKey {
		return ErrDeviceKeysMismatch
	}
	ok, err := signatures.VerifySignatureJSON(keys, keys.UserID, keys.DeviceID.String(), ed)
	if err != nil || !ok {
		return ErrDeviceKeysBadSignature
	}
	return nil
}

// Verdict is what to do with a received bundle now.
type Verdict int

const (
	// Wait keeps the bundle stored: no invite from its sender has been accepted (yet).
	Wait Verdict = iota
	// Import downloads and imports the bundle.
	Import
	// Reject refuses the bundle for good; the reason says why.
	Reject
	// Expire gives up on the bundle: the accept window passed.
	Expire
)

// AcceptInput is everything the accept rule looks at.
type AcceptInput struct {
	// AcceptedAt is when the puppet joined the room from an invite; zero if it has not.
	AcceptedAt time.Time
	Inviter    id.UserID
	Sender     id.UserID
	Joined     bool
	// SenderTrust is the trust in the device that sent the bundle, resolved through cross-signing.
	SenderTrust id.TrustState
	Now         time.Time
	Window      time.Duration
}

// Decide applies MSC4268's receiver rules: import only a bundle from the user whose invite the
// puppet accepted, within the window, while the puppet is joined, from a device its owner's
// cross-signing identity signs — and never from a sender whose identity changed.
func Decide(in AcceptInput) (Verdict, string) {
	switch {
	case in.AcceptedAt.IsZero():
		return Wait, "no accepted invite for this room yet"
	case in.Now.Sub(in.AcceptedAt) > in.Window:
		return Expire, fmt.Sprintf("invite accepted more than %s ago", in.Window)
	case in.Sender != in.Inviter:
		return Reject, fmt.Sprintf("sender %s is not the inviter %s", in.Sender, in.Inviter)
	case !in.Joined:
		// Not a refusal: heirloom may learn of its own join after the bundle (a late invite
		// transaction replays the invite); the accept window bounds the wait.
		return Wait, "puppet is not joined to the room (yet)"
	case in.SenderTrust == id.TrustStateCrossSignedUntrusted:
		return Reject, "sender's cross-signing identity changed since heirloom first saw it"
	case in.SenderTrust == id.TrustStateBlacklisted:
		return Reject, "sender device is blacklisted"
	case in.SenderTrust < id.TrustStateCrossSignedTOFU:
		return Reject, "sender device is not cross-signed by its owner"
	}
	return Import, ""
}

// JoinInfo is what a join member event says, in its unsigned data, about the membership it
// replaced.
type JoinInfo struct {
	EventID        id.EventID
	ReplacesState  id.EventID
	PrevMembership event.Membership
	PrevSender     id.UserID
}

// JoinFromMemberEvent reads a join member event's unsigned data.
func JoinFromMemberEvent(evt *event.Event) JoinInfo {
	info := JoinInfo{EventID: evt.ID, ReplacesState: evt.Unsigned.ReplacesState, PrevSender: evt.Unsigned.PrevSender}
	if prev := evt.Unsigned.PrevContent; prev != nil {
		if err := prev.ParseRaw(event.StateMember); err == nil || errors.Is(err, event.ErrContentAlreadyParsed) {
			info.PrevMembership = prev.AsMember().Membership
		}
	}
	return info
}

// Replaced says how a join relates to a recorded invite.
type Replaced int

const (
	// ReplacedUnknown: the join's event does not say what it replaced; ask the homeserver.
	ReplacedUnknown Replaced = iota
	// ReplacedInvite: the join replaced exactly the recorded invite. The puppet joined from it.
	ReplacedInvite
	// ReplacedOther: the join replaced something else; the recorded invite was not current (it
	// was rescinded, or another invite followed) and must not be accepted on this join.
	ReplacedOther
)

// JoinReplaced says whether the join replaced the invite inviteEventID. Only the state event the
// join replaced (unsigned.replaces_state) binds the two: "the puppet was invited once" is not
// enough, or an invite rescinded before a later join (say, to a room made public) would still let
// the rescinded inviter's bundle in.
func JoinReplaced(inviteEventID id.EventID, join JoinInfo) Replaced {
	switch {
	case join.ReplacesState == "":
		return ReplacedUnknown
	case inviteEventID != "" && join.ReplacesState == inviteEventID &&
		(join.PrevMembership == "" || join.PrevMembership == event.MembershipInvite):
		return ReplacedInvite
	default:
		return ReplacedOther
	}
}
