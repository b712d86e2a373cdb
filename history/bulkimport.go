package history

import (
	"context"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/goolm/session"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/e2ee/cryptostore"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// importBatch is how many bundle entries are written per statement.
const importBatch = 500

// sessionWriter stores a bundle's sessions in batches, inside the import's transaction and under
// the puppet's exclusive session lock. Every session of a bundle has the same columns but its keys
// and ratchet (like): they are inserted with one statement per batch (cryptostore.SessionInserter, in
// the row format of mautrix's SQL crypto store), which leaves alone any session ID the puppet
// holds a row for in the bundle's room already. Those go through e2ee.Puppet.StoreSessionInTxn,
// which merges them by MergeSessions. A row of another room is another key: never in the way, and
// never touched.
type sessionWriter struct {
	p        *e2ee.Puppet
	like     *crypto.InboundGroupSession
	inserter *cryptostore.SessionInserter
	rows     []cryptostore.NewSessionRow
	sessions []*session.MegolmInboundSession // rows[i]'s session
	// seen holds the session IDs of entries that passed validation: a later entry with the same
	// ID is a duplicate, an earlier invalid one never counted.
	seen     map[id.SessionID]struct{}
	withheld []keybundle.Withheld
	// withheldAt is when the bundle arrived: its withheld entries speak of messages sent before it
	// (e2ee's withheld rules), and are stored as received then.
	withheldAt time.Time
	// refused counts keys not stored, by reason: duplicates, forgeries, other senders.
	refused map[string]int
}

func newSessionWriter(ctx context.Context, p *e2ee.Puppet, like *crypto.InboundGroupSession) (*sessionWriter, error) {
	inserter, err := p.NewSessionInserter(ctx, like)
	if err != nil {
		return nil, err
	}
	return &sessionWriter{p: p, like: like, inserter: inserter, seen: make(map[id.SessionID]struct{}),
		refused: make(map[string]int)}, nil
}

func (w *sessionWriter) close() { w.inserter.Close() }

const reasonDuplicate = "duplicate session in the bundle"

// addPrepared buffers a validated session and its pickle (made by a worker) and writes a full
// batch. It reports false if the session was not taken (a duplicate of an earlier valid entry).
func (w *sessionWriter) addPrepared(ctx context.Context, key *keybundle.RoomKey, s *session.MegolmInboundSession, pickled []byte) (bool, error) {
	if _, dup := w.seen[key.SessionID]; dup {
		w.refused[reasonDuplicate]++
		return false, nil
	}
	w.seen[key.SessionID] = struct{}{}
	w.rows = append(w.rows, cryptostore.NewSessionRow{SessionID: key.SessionID, SenderKey: key.SenderKey,
		SigningKey: key.SenderClaimedKeys.Ed25519, Pickle: pickled})
	w.sessions = append(w.sessions, s)
	if len(w.rows) >= importBatch {
		return true, w.flushSessions(ctx)
	}
	return true, nil
}

func (w *sessionWriter) addWithheld(ctx context.Context, content keybundle.Withheld) error {
	w.withheld = append(w.withheld, content)
	if len(w.withheld) >= importBatch {
		return w.flushWithheld(ctx)
	}
	return nil
}

// flush writes what is buffered.
func (w *sessionWriter) flush(ctx context.Context) error {
	if err := w.flushSessions(ctx); err != nil {
		return err
	}
	return w.flushWithheld(ctx)
}

// refusedTotal returns how many keys were not stored.
func (w *sessionWriter) refusedTotal() int {
	n := 0
	for _, count := range w.refused {
		n += count
	}
	return n
}

// session returns the full inbound session of the i-th buffered row.
func (w *sessionWriter) session(i int) *crypto.InboundGroupSession {
	igs := *w.like
	igs.Internal, igs.SenderKey, igs.SigningKey = w.sessions[i], w.rows[i].SenderKey, w.rows[i].SigningKey
	return &igs
}

func (w *sessionWriter) flushSessions(ctx context.Context) error {
	if len(w.rows) == 0 {
		return nil
	}
	defer func() { w.rows, w.sessions = w.rows[:0], w.sessions[:0] }()
	held, err := w.inserter.Insert(ctx, w.rows)
	if err != nil {
		return err
	}
	next := 0 // into held, which is in order
	for i, row := range w.rows {
		if next < len(held) && held[next] == i {
			next++
			continue
		}
		w.p.Mach.MarkSessionReceived(ctx, w.like.RoomID, row.SessionID, w.sessions[i].FirstKnownIndex())
	}
	if len(held) == 0 {
		return nil
	}
	ids := make([]id.SessionID, len(held))
	for j, i := range held {
		ids[j] = w.rows[i].SessionID
	}
	rows, err := w.p.HeldSessions(ctx, w.like.RoomID, ids)
	if err != nil {
		return err
	}
	for _, i := range held {
		h, ok := rows[w.rows[i].SessionID]
		var hp *cryptostore.HeldSession
		if ok {
			hp = &h
		}
		if err = w.storeHeld(ctx, w.session(i), hp); err != nil {
			return err
		}
	}
	return nil
}

// storeHeld stores a bundle's copy of a session ID the puppet holds a row for, by StoreSession's
// rules, and counts what they refused.
func (w *sessionWriter) storeHeld(ctx context.Context, igs *crypto.InboundGroupSession, h *cryptostore.HeldSession) error {
	stored, reason, err := w.p.StoreSessionInTxn(ctx, igs, h)
	if err != nil {
		return err
	}
	switch {
	case stored:
		w.p.Mach.MarkSessionReceived(ctx, igs.RoomID, igs.ID(), igs.Internal.FirstKnownIndex())
	case reason == e2ee.ReasonHeldNoBetter:
		// Held already, as good: nothing to change, nothing refused.
	default:
		w.refused[reason]++
		zerolog.Ctx(ctx).Warn().Stringer("session_id", igs.ID()).Str("reason", reason).Msg("Not importing bundle key")
	}
	return nil
}

// flushWithheld stores withheld entries, marked with the bundle's sender so that only these are
// passed on in the puppet's own bundles; an entry for a session the puppet holds changes nothing.
func (w *sessionWriter) flushWithheld(ctx context.Context) error {
	if len(w.withheld) == 0 {
		return nil
	}
	defer func() { w.withheld = w.withheld[:0] }()
	return w.p.InsertBundleWithheld(ctx, w.withheld, w.like.SourceUser, w.withheldAt)
}
