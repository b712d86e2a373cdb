package history

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/rs/zerolog"
	mcrypto "maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/crypto"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

type importResult struct {
	imported, withheld, skipped int
}

// importBundle imports a decrypted bundle in one database transaction: keys of the bundle's room
// only, each checked against its session ID, merged so a better (earlier index) or better-trusted
// session already held is never replaced, each remembering who shared it. If the bundle turns out
// malformed or its hash does not verify at the end, nothing of it is kept.
func (s *Service) importBundle(ctx context.Context, p *crypto.Puppet, b *database.ReceivedBundle, plaintext io.ReadCloser) (importResult, error) {
	var res importResult
	log := zerolog.Ctx(ctx)
	err := s.db.Raw.DoTxn(ctx, nil, func(ctx context.Context) error {
		res = importResult{}
		writer := &sessionWriter{p: p}
		seen := make(map[id.SessionID]struct{})
		skipped, err := keybundle.Decode(plaintext, func(key keybundle.RoomKey) error {
			reason := ""
			switch {
			case key.RoomID != b.RoomID:
				reason = "key of another room"
			case key.Algorithm != id.AlgorithmMegolmV1:
				reason = "unknown algorithm"
			}
			if _, dup := seen[key.SessionID]; dup && reason == "" {
				reason = "duplicate session"
			}
			if reason != "" {
				res.skipped++
				log.Debug().Stringer("session_id", key.SessionID).Stringer("key_room_id", key.RoomID).Str("reason", reason).
					Msg("Ignoring entry of key bundle")
				return nil
			}
			igs, err := sessionFromBundle(key, b)
			if err != nil {
				res.skipped++
				log.Warn().Err(err).Stringer("session_id", key.SessionID).Msg("Ignoring invalid key in bundle")
				return nil
			}
			seen[key.SessionID] = struct{}{}
			res.imported++
			return writer.addSession(ctx, igs)
		}, func(w keybundle.Withheld) error {
			if w.RoomID != b.RoomID || w.SessionID == "" {
				res.skipped++
				return nil
			}
			res.withheld++
			// A session also in room_keys keeps its key: sessions are written first, and a
			// withheld row never replaces a key (rust-sdk too keeps both facts; the key decrypts).
			return writer.addWithheld(ctx, event.RoomKeyWithheldEventContent{
				RoomID: w.RoomID, Algorithm: id.AlgorithmMegolmV1, SessionID: w.SessionID, SenderKey: w.SenderKey,
				Code: event.RoomKeyWithheldCode(w.Code), Reason: w.Reason,
			})
		})
		res.skipped += skipped
		if err != nil {
			return err
		}
		if err = writer.flush(ctx); err != nil {
			return err
		}
		// Closing verifies the SHA-256 hash over the whole ciphertext: read it all first.
		if _, err = io.Copy(io.Discard, plaintext); err != nil {
			return err
		}
		return plaintext.Close()
	})
	return res, err
}

// sessionFromBundle turns a bundle entry into an inbound session, checking the ID against the key.
func sessionFromBundle(key keybundle.RoomKey, b *database.ReceivedBundle) (*mcrypto.InboundGroupSession, error) {
	internal, err := olm.InboundGroupSessionImport([]byte(key.SessionKey))
	if err != nil {
		return nil, err
	}
	if internal.ID() != key.SessionID {
		return nil, errSessionIDMismatch
	}
	shared := true
	return &mcrypto.InboundGroupSession{
		Internal:         internal,
		SigningKey:       key.SenderClaimedKeys.Ed25519,
		SenderKey:        key.SenderKey,
		RoomID:           key.RoomID,
		ForwardingChains: []string{b.SenderKey.String()},
		ReceivedAt:       time.Now().UTC(),
		MaxAge:           (7 * 24 * time.Hour).Milliseconds(),
		MaxMessages:      100,
		SharedHistory:    &shared,
		KeySource:        id.KeySourceForward,
		SourceUser:       b.Sender,
	}, nil
}

var errSessionIDMismatch = errors.New("session ID does not match the session key")
