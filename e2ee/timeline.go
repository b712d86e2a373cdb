package e2ee

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TimelineEvent is one event as the API returns it.
type TimelineEvent struct {
	EventID        id.EventID      `json:"event_id"`
	Sender         id.UserID       `json:"sender"`
	OriginServerTS int64           `json:"origin_server_ts"`
	Type           string          `json:"type"`
	Content        json.RawMessage `json:"content"`
	Decrypted      bool            `json:"decrypted"`
	Error          string          `json:"error,omitempty"`
	SessionID      id.SessionID    `json:"session_id,omitempty"`
	// KeysSharedBy is the user whose key bundle supplied the key that decrypted this event:
	// MSC4268 says the receiver has only that user's word for who sent it.
	KeysSharedBy id.UserID `json:"keys_shared_by,omitempty"`
	// Trust says how far the decrypting key vouches for the sender (TrustName).
	Trust string `json:"trust,omitempty"`
}

// Trust levels of a decrypted event, as the API reports them.
const (
	trustVerified        = "verified"         // the puppet's own session, or a user it verified
	trustCrossSigned     = "cross_signed"     // a device its owner's cross-signing identity signs
	trustUnsigned        = "unsigned"         // a known device its owner never signed
	trustIdentityChanged = "identity_changed" // signed by an identity that changed since first seen
	trustUnknownDevice   = "unknown_device"   // the session's device is not among the sender's devices
	trustForwarded       = "forwarded"        // the key came from someone else (a bundle or a backup)
	trustKeyMismatch     = "key_mismatch"     // the session's keys are not the sender device's keys
	trustBlacklisted     = "blacklisted"      // a device marked as not to be trusted
)

// TrustName maps mautrix's trust state of a decrypted event to the API's name for it.
func TrustName(state id.TrustState, forwarded bool) string {
	switch {
	case forwarded, state == id.TrustStateForwarded, state == id.TrustStateBackup:
		return trustForwarded
	case state >= id.TrustStateCrossSignedVerified:
		return trustVerified
	case state >= id.TrustStateCrossSignedTOFU:
		return trustCrossSigned
	case state == id.TrustStateCrossSignedUntrusted:
		return trustIdentityChanged
	case state == id.TrustStateUnset:
		return trustUnsigned
	case state == id.TrustStateDeviceKeyMismatch:
		return trustKeyMismatch
	case state == id.TrustStateBlacklisted:
		return trustBlacklisted
	default:
		return trustUnknownDevice
	}
}

// Timeline returns the last limit timeline events of the room, oldest first, decrypted where the
// puppet holds the keys. Decryption happens on each call, so keys that arrived later (a bundle
// import) make earlier events readable.
func (p *Puppet) Timeline(ctx context.Context, roomID id.RoomID, limit int) ([]TimelineEvent, error) {
	resp, err := p.Client.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, limit)
	if err != nil {
		if errors.Is(err, mautrix.MForbidden) || errors.Is(err, mautrix.MNotFound) {
			return nil, fmt.Errorf("%w: %w", ErrUnknownRoom, err)
		}
		return nil, fmt.Errorf("failed to get messages: %w", err)
	}
	out := make([]TimelineEvent, 0, len(resp.Chunk))
	missing := false
	for i := len(resp.Chunk) - 1; i >= 0; i-- {
		te := p.decryptForTimeline(ctx, resp.Chunk[i])
		missing = missing || te.Error == errNoKey
		out = append(out, te)
	}
	// A missing key may be sitting in the device inbox (see SweepToDevice): fetch it, then retry.
	if missing {
		if n, err := p.SweepToDevice(ctx, false); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to sweep to-device messages for missing keys")
		} else if n > 0 {
			for i := range out {
				if out[i].Error == errNoKey {
					out[i] = p.decryptForTimeline(ctx, resp.Chunk[len(resp.Chunk)-1-i])
				}
			}
		}
	}
	return out, nil
}

func (p *Puppet) decryptForTimeline(ctx context.Context, evt *event.Event) TimelineEvent {
	te := TimelineEvent{
		EventID:        evt.ID,
		Sender:         evt.Sender,
		OriginServerTS: evt.Timestamp,
		Type:           evt.Type.Type,
		Content:        evt.Content.VeryRaw,
	}
	if evt.Type != event.EventEncrypted {
		return te
	}
	d, err := p.Decrypt(ctx, evt)
	if d != nil {
		te.SessionID = d.SessionID
	}
	if err != nil {
		te.Error = describeDecryptError(err)
		return te
	}
	te.Decrypted = true
	te.Type = d.Event.Type.Type
	te.Content = d.Event.Content.VeryRaw
	te.Trust = d.Trust
	te.KeysSharedBy = d.KeysSharedBy
	return te
}

func describeDecryptError(err error) string {
	var withheld *event.RoomKeyWithheldEventContent
	switch {
	case errors.As(err, &withheld):
		return fmt.Sprintf("key withheld: %s (%s)", withheld.Code, withheld.Reason)
	case errors.Is(err, crypto.ErrNoSessionFound):
		return errNoKey
	default:
		return err.Error()
	}
}

const errNoKey = "no key for this session"
