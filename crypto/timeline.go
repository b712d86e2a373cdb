package crypto

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	mcrypto "maunium.net/go/mautrix/crypto"
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
	if err := evt.Content.ParseRaw(evt.Type); err != nil && !errors.Is(err, event.ErrContentAlreadyParsed) {
		te.Error = "malformed encrypted content: " + err.Error()
		return te
	}
	content, ok := evt.Content.Parsed.(*event.EncryptedEventContent)
	if !ok {
		te.Error = "not an encrypted event"
		return te
	}
	te.SessionID = content.SessionID
	decrypted, err := p.Mach.DecryptMegolmEvent(ctx, evt)
	if err != nil {
		te.Error = describeDecryptError(err)
		return te
	}
	te.Decrypted = true
	te.Type = decrypted.Type.Type
	te.Content = decrypted.Content.VeryRaw
	if igs, err := p.Store.GetGroupSession(ctx, evt.RoomID, content.SessionID); err == nil && igs != nil &&
		igs.KeySource == id.KeySourceForward && igs.SourceUser != "" {
		te.KeysSharedBy = igs.SourceUser
	}
	return te
}

func describeDecryptError(err error) string {
	var withheld *event.RoomKeyWithheldEventContent
	switch {
	case errors.As(err, &withheld):
		return fmt.Sprintf("key withheld: %s (%s)", withheld.Code, withheld.Reason)
	case errors.Is(err, mcrypto.ErrNoSessionFound):
		return errNoKey
	default:
		return err.Error()
	}
}

const errNoKey = "no key for this session"
