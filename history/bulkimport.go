package history

import (
	"context"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// importBatch is how many bundle entries are written per statement. SQLite binds at most 32,766
// parameters per statement; 500 rows × 16 columns stays far below.
const importBatch = 500

// sessionWriter stores a bundle's sessions in batches, inside the import's transaction and under
// the puppet's exclusive session lock. Sessions the puppet holds under no row yet are inserted with
// one multi-row statement per batch (e2ee.Puppet.InsertNewSessions, in the row format of mautrix's
// SQL crypto store). A session ID the puppet holds already goes through e2ee.Puppet.StoreSessionInTxn: a key held
// for another room is never touched, and a copy of the same room is merged by MergeSessions.
type sessionWriter struct {
	p       *e2ee.Puppet
	sender  id.UserID
	session []*crypto.InboundGroupSession
	pickles [][]byte
	// seen holds the session IDs of entries that passed validation: a later entry with the same
	// ID is a duplicate, an earlier invalid one never counted.
	seen     map[id.SessionID]struct{}
	withheld []keybundle.Withheld
	// refused counts keys not stored, by reason: duplicates, another room's session, forgeries.
	refused map[string]int
}

func newSessionWriter(p *e2ee.Puppet, sender id.UserID) *sessionWriter {
	return &sessionWriter{p: p, sender: sender, seen: make(map[id.SessionID]struct{}), refused: make(map[string]int)}
}

const reasonDuplicate = "duplicate session in the bundle"

// addPrepared buffers a validated session and its pickle (made by a worker) and writes a full
// batch. It reports false if the session was not taken (a duplicate of an earlier valid entry).
func (w *sessionWriter) addPrepared(ctx context.Context, igs *crypto.InboundGroupSession, pickled []byte) (bool, error) {
	if _, dup := w.seen[igs.ID()]; dup {
		w.refused[reasonDuplicate]++
		return false, nil
	}
	w.seen[igs.ID()] = struct{}{}
	w.session = append(w.session, igs)
	w.pickles = append(w.pickles, pickled)
	if len(w.session) >= importBatch {
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

// flush writes what is buffered: sessions first, so a withheld entry never shadows a key.
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

func (w *sessionWriter) flushSessions(ctx context.Context) error {
	if len(w.session) == 0 {
		return nil
	}
	defer func() { w.session, w.pickles = w.session[:0], w.pickles[:0] }()
	ids := make([]id.SessionID, len(w.session))
	for i, igs := range w.session {
		ids[i] = igs.ID()
	}
	held, err := w.p.HeldSessions(ctx, ids)
	if err != nil {
		return err
	}
	fresh := make([]*crypto.InboundGroupSession, 0, len(w.session))
	pickles := make([][]byte, 0, len(w.session))
	for i, igs := range w.session {
		if h, ok := held[igs.ID()]; ok {
			if err = w.storeHeld(ctx, igs, h); err != nil {
				return err
			}
			continue
		}
		fresh = append(fresh, igs)
		pickles = append(pickles, w.pickles[i])
	}
	// No row existed a moment ago in this transaction, under the exclusive lock.
	if err = w.p.InsertNewSessions(ctx, fresh, pickles); err != nil {
		return err
	}
	for _, igs := range fresh {
		w.p.Mach.MarkSessionReceived(ctx, igs.RoomID, igs.ID(), igs.Internal.FirstKnownIndex())
	}
	return nil
}

// storeHeld stores a bundle's copy of a session ID the puppet holds a row for, by StoreSession's
// rules, and counts what they refused.
func (w *sessionWriter) storeHeld(ctx context.Context, igs *crypto.InboundGroupSession, h e2ee.HeldSession) error {
	stored, reason, err := w.p.StoreSessionInTxn(ctx, igs, &h)
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
		zerolog.Ctx(ctx).Warn().Stringer("session_id", igs.ID()).Stringer("held_room_id", h.RoomID).
			Str("reason", reason).Msg("Not importing bundle key")
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
	return w.p.InsertBundleWithheld(ctx, w.withheld, w.sender, time.Now())
}
