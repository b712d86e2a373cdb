package history

import (
	"context"
	"errors"
	"io"
	"runtime"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/goolm/session"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/e2ee/cryptostore"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

type importResult struct {
	imported, withheld, skipped int
}

// bundleItem is one entry on its way from the decoder to the database: a withheld entry, or else
// a key (prepared by a worker into a session and its pickle).
type bundleItem struct {
	withheld *keybundle.Withheld
	key      keybundle.RoomKey
	session  *session.MegolmInboundSession
	pickled  []byte
	err      error
}

// itemChunk is how many entries travel together between the pipeline's stages: one channel
// operation per entry would cost more than some of the stages' work.
const itemChunk = 64

// importBundle imports a decrypted bundle in one database transaction, and records the bundle as
// imported in the same transaction: keys of the bundle's room only, each checked against its
// session ID, never over a key the puppet holds for another room, merged with a copy of the same
// room so a better (earlier index) or better-trusted session is never replaced and no flag or
// provenance is laundered (e2ee.MergeSessions), each remembering who shared it. If the bundle
// turns out malformed or its hash does not verify at the end, nothing of it is kept, and the
// counts say so.
//
// Decoding, key checks and pickling, and database writes run as a pipeline, in chunks of entries:
// the key checks (an Ed25519 point decompression per session) and the pickling run on every core
// while the writer inserts in batches. The puppet's sessions are locked for the whole transaction
// (Puppet.LockSessionsExclusive), so no decryption writes a session back in between. The
// transaction is a bulk one (database.DoBulkTxn, sized by the bundle's bytes): durable when it returns, its WAL checkpoint
// left to the background.
func (s *Service) importBundle(ctx context.Context, p *e2ee.Puppet, b *database.ReceivedBundle, plaintext io.ReadCloser, size int64) (importResult, error) {
	var res importResult
	log := zerolog.Ctx(ctx)
	defer p.LockSessionsExclusive()()
	maxAge, maxMessages := p.RotationLimits(ctx, b.RoomID)
	shared := keybundle.SharedWhenImported()
	// What every imported session has in common: only its keys and ratchet are its own.
	like := &crypto.InboundGroupSession{
		RoomID:           b.RoomID,
		ForwardingChains: []string{b.SenderKey.String()},
		ReceivedAt:       time.Now().UTC(),
		MaxAge:           maxAge.Milliseconds(),
		MaxMessages:      maxMessages,
		SharedHistory:    &shared,
		KeySource:        id.KeySourceForward,
		SourceUser:       b.Sender,
	}
	err := s.db.DoBulkTxn(ctx, size, func(ctx context.Context) error {
		res = importResult{}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		items := make(chan []bundleItem, 8)
		prepared := make(chan []bundleItem, 8)
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
				var claimed claimedKeys
				for chunk := range items {
					for i := range chunk {
						if it := &chunk[i]; it.withheld == nil {
							it.session, it.pickled, it.err = s.prepareSession(&it.key, &claimed)
						}
					}
					prepared <- chunk
				}
			}()
		}
		go func() {
			wg.Wait()
			close(prepared)
		}()
		writer, err := newSessionWriter(ctx, p, like)
		if err != nil {
			cancel()
			for range prepared { // drain, so every goroutine ends
			}
			<-decodeDone
			return err
		}
		defer writer.close()
		writer.withheldAt = time.Now()
		if b.ReceivedAt > 0 && b.ReceivedAt < writer.withheldAt.UnixMilli() {
			writer.withheldAt = time.UnixMilli(b.ReceivedAt)
		}
		var writeErr error
		for chunk := range prepared {
			for i := range chunk {
				if writeErr != nil {
					break // drain, so every goroutine ends
				}
				it := &chunk[i]
				switch {
				case it.withheld != nil:
					res.withheld++
					writeErr = writer.addWithheld(ctx, *it.withheld)
				case it.err != nil:
					res.skipped++
					log.Warn().Err(it.err).Stringer("session_id", it.key.SessionID).Msg("Ignoring invalid key in bundle")
				default:
					var taken bool
					if taken, writeErr = writer.addPrepared(ctx, &it.key, it.session, it.pickled); taken {
						res.imported++
					}
				}
				if writeErr != nil {
					cancel()
				}
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
		refused := writer.refusedTotal() - writer.refused[reasonDuplicate] // duplicates were never counted
		res.imported -= refused
		res.skipped += writer.refusedTotal()
		if len(writer.refused) > 0 {
			log.Warn().Any("refused", writer.refused).Msg("Some bundle keys were not imported")
		}
		// Closing verifies the SHA-256 hash over the whole ciphertext: read it all first.
		if _, err := io.Copy(io.Discard, plaintext); err != nil {
			return err
		}
		if err := plaintext.Close(); err != nil {
			return err
		}
		b.State, b.Error = database.ReceivedImported, ""
		b.Imported, b.Withheld, b.Skipped = res.imported, res.withheld, res.skipped
		return s.db.SaveImportedBundle(ctx, b)
	})
	if err != nil {
		// Nothing of the bundle was kept: the report must not say otherwise.
		return importResult{}, err
	}
	return res, nil
}

// decodeEntries streams the bundle's entries into items, in chunks, dropping those that must not be
// imported (another room, another algorithm, malformed withheld entries) and counting them in
// skipped. Duplicates are left to the writer, which counts only entries that passed validation.
func (s *Service) decodeEntries(ctx context.Context, plaintext io.Reader, b *database.ReceivedBundle, items chan<- []bundleItem, skipped *int) error {
	log := zerolog.Ctx(ctx)
	chunk := make([]bundleItem, 0, itemChunk)
	send := func(it bundleItem) error {
		if chunk = append(chunk, it); len(chunk) < itemChunk {
			return nil
		}
		select {
		case items <- chunk:
			chunk = make([]bundleItem, 0, itemChunk)
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
		if reason != "" {
			*skipped++
			log.Debug().Stringer("session_id", key.SessionID).Stringer("key_room_id", key.RoomID).Str("reason", reason).
				Msg("Ignoring entry of key bundle")
			return nil
		}
		return send(bundleItem{key: key})
	}, func(w keybundle.Withheld) error {
		// Text that one database would store and the other refuse (a NUL, invalid UTF-8, a CHAR(43)
		// overflow, an excessive length) is skipped the same on both, never the import failed.
		if w.RoomID != b.RoomID || !keybundle.ValidKey(string(w.SessionID)) || !keybundle.ValidKey(string(w.SenderKey)) ||
			!keybundle.ValidText(w.Code, keybundle.MaxText) || !keybundle.ValidText(w.Reason, keybundle.MaxText) {
			*skipped++
			return nil
		}
		// A bundle says which of its sender's sessions were not shareable (m.history_not_shared,
		// MSC4268, what rust-sdk builds and passes on), nothing else: any other code (m.unverified,
		// m.blacklisted…) only the session's own device could give, about its own sending. (rust-sdk
		// stores any code from a bundle; heirloom keeps only the one a bundle is for.)
		if !keybundle.IsHistoryNotShared(w.Code) {
			*skipped++
			log.Debug().Stringer("session_id", w.SessionID).Str("code", w.Code).
				Msg("Ignoring withheld entry of key bundle: a bundle withholds only as history not shared")
			return nil
		}
		// A session also in room_keys keeps its key: a withheld row never replaces a key, and a
		// key replaces a withheld row (rust-sdk too keeps both facts; the key decrypts).
		return send(bundleItem{withheld: &w})
	})
	*skipped += n
	if err == nil && len(chunk) > 0 {
		select {
		case items <- chunk:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	return err
}

// prepareSession turns a bundle entry into a session (checking its keys and the session ID against
// the key) and its pickle, ready for the database. claimed is the calling worker's own.
func (s *Service) prepareSession(key *keybundle.RoomKey, claimed *claimedKeys) (*session.MegolmInboundSession, []byte, error) {
	internal, err := sessionFromBundle(key, claimed)
	if err != nil {
		return nil, nil, err
	}
	pickled, err := s.mgr.Pickles.Pickle(internal)
	return internal, pickled, err
}

// claimedKeys remembers the claimed Ed25519 keys a worker found valid: a bundle names few sender
// devices for many sessions, and each check is a point decompression.
type claimedKeys map[id.Ed25519]struct{}

// maxClaimedKeys bounds a worker's claimedKeys; past it, it starts over.
const maxClaimedKeys = 1024

// valid reports whether key is a valid Ed25519 public key (keybundle.ValidSigningKeyString).
func (c *claimedKeys) valid(key id.Ed25519) bool {
	if _, ok := (*c)[key]; ok {
		return true
	}
	if !keybundle.ValidSigningKeyString(key) {
		return false
	}
	if *c == nil || len(*c) >= maxClaimedKeys {
		*c = make(claimedKeys, 64)
	}
	(*c)[key] = struct{}{}
	return true
}

// sessionFromBundle reads a bundle entry's session, checking its keys and the session ID against
// the session's key (cryptostore.ImportSessionKey checks that key as goolm's import does). The sender key
// must be a 32-byte key, and the claimed Ed25519 key a valid point: it goes out again in the
// puppet's own bundles, and rust-sdk refuses a whole bundle over one that is not.
func sessionFromBundle(key *keybundle.RoomKey, claimed *claimedKeys) (*session.MegolmInboundSession, error) {
	if !keybundle.ValidKey(string(key.SenderKey)) || !claimed.valid(key.SenderClaimedKeys.Ed25519) {
		return nil, errMalformedKeys
	}
	internal, err := cryptostore.ImportSessionKey(key.SessionKey)
	if err != nil {
		return nil, err
	}
	if !cryptostore.SessionIDIs(internal, key.SessionID) {
		return nil, errSessionIDMismatch
	}
	return internal, nil
}

var (
	errSessionIDMismatch = errors.New("session ID does not match the session key")
	errMalformedKeys     = errors.New("sender_key is not a 32-byte key, or sender_claimed_keys.ed25519 not an Ed25519 public key, in unpadded base64")
)
