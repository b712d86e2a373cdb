package history

import (
	"context"
	"errors"
	"io"
	"runtime"
	"sync"
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

// bundleItem is one entry on its way from the decoder to the database: a key (prepared by a
// worker into a session and its pickle) or a withheld entry.
type bundleItem struct {
	key      *keybundle.RoomKey
	withheld *keybundle.Withheld
	igs      *mcrypto.InboundGroupSession
	pickled  []byte
	err      error
}

// importBundle imports a decrypted bundle in one database transaction: keys of the bundle's room
// only, each checked against its session ID, merged so a better (earlier index) or better-trusted
// session already held is never replaced, each remembering who shared it. If the bundle turns out
// malformed or its hash does not verify at the end, nothing of it is kept.
//
// Decoding, key checks and pickling, and database writes run as a pipeline: the key checks (an
// Ed25519 point validation per session) run on every core while the writer inserts in batches.
func (s *Service) importBundle(ctx context.Context, p *crypto.Puppet, b *database.ReceivedBundle, plaintext io.ReadCloser) (importResult, error) {
	var res importResult
	log := zerolog.Ctx(ctx)
	err := s.db.Raw.DoTxn(ctx, nil, func(ctx context.Context) error {
		res = importResult{}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		items := make(chan bundleItem, 512)
		prepared := make(chan bundleItem, 512)
		decodeDone := make(chan error, 1)
		decodeSkipped := 0
		go func() {
			defer close(items)
			decodeDone <- s.decodeEntries(ctx, plaintext, b, items, &decodeSkipped)
		}()
		var wg sync.WaitGroup
		for range max(1, runtime.GOMAXPROCS(0)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for it := range items {
					if it.key != nil {
						it.igs, it.pickled, it.err = s.prepareSession(*it.key, b)
					}
					prepared <- it
				}
			}()
		}
		go func() {
			wg.Wait()
			close(prepared)
		}()
		writer := &sessionWriter{p: p}
		var writeErr error
		for it := range prepared {
			if writeErr != nil {
				continue // drain, so every goroutine ends
			}
			switch {
			case it.withheld != nil:
				res.withheld++
				writeErr = writer.addWithheld(ctx, event.RoomKeyWithheldEventContent{
					RoomID: it.withheld.RoomID, Algorithm: id.AlgorithmMegolmV1, SessionID: it.withheld.SessionID,
					SenderKey: it.withheld.SenderKey, Code: event.RoomKeyWithheldCode(it.withheld.Code), Reason: it.withheld.Reason,
				})
			case it.err != nil:
				res.skipped++
				log.Warn().Err(it.err).Stringer("session_id", it.key.SessionID).Msg("Ignoring invalid key in bundle")
			default:
				res.imported++
				writeErr = writer.addPrepared(ctx, it.igs, it.pickled)
			}
			if writeErr != nil {
				cancel()
			}
		}
		decodeErr := <-decodeDone
		res.skipped += decodeSkipped
		if writeErr != nil {
			return writeErr
		} else if decodeErr != nil {
			return decodeErr
		}
		if err := writer.flush(ctx); err != nil {
			return err
		}
		res.imported -= writer.mismatched
		res.skipped += writer.mismatched
		// Closing verifies the SHA-256 hash over the whole ciphertext: read it all first.
		if _, err := io.Copy(io.Discard, plaintext); err != nil {
			return err
		}
		return plaintext.Close()
	})
	return res, err
}

// decodeEntries streams the bundle's entries into items, dropping those that must not be imported
// (another room, another algorithm, a repeated session) and counting them in skipped.
func (s *Service) decodeEntries(ctx context.Context, plaintext io.Reader, b *database.ReceivedBundle, items chan<- bundleItem, skipped *int) error {
	log := zerolog.Ctx(ctx)
	seen := make(map[id.SessionID]struct{})
	send := func(it bundleItem) error {
		select {
		case items <- it:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	n, err := keybundle.Decode(plaintext, func(key keybundle.RoomKey) error {
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
			*skipped++
			log.Debug().Stringer("session_id", key.SessionID).Stringer("key_room_id", key.RoomID).Str("reason", reason).
				Msg("Ignoring entry of key bundle")
			return nil
		}
		seen[key.SessionID] = struct{}{}
		return send(bundleItem{key: &key})
	}, func(w keybundle.Withheld) error {
		if w.RoomID != b.RoomID {
			*skipped++
			return nil
		}
		// A session also in room_keys keeps its key: sessions are written before withheld rows,
		// and a withheld row never replaces a key (rust-sdk too keeps both facts; the key decrypts).
		return send(bundleItem{withheld: &w})
	})
	*skipped += n
	return err
}

// prepareSession turns a bundle entry into an inbound session (checking the session ID against
// the key) and its pickle, ready for the database.
func (s *Service) prepareSession(key keybundle.RoomKey, b *database.ReceivedBundle) (*mcrypto.InboundGroupSession, []byte, error) {
	igs, err := sessionFromBundle(key, b)
	if err != nil {
		return nil, nil, err
	}
	pickled, err := s.mgr.Pickles.Pickle(igs.Internal)
	return igs, pickled, err
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
