package history

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	mcrypto "maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/crypto"
)

// importBatch is how many bundle entries are written per statement. SQLite binds at most 32,766
// parameters per statement; 500 rows × 16 columns stays far below.
const importBatch = 500

// sessionWriter stores a bundle's sessions in batches. Sessions the puppet does not hold yet are
// inserted with one multi-row statement per batch, in the row format of mautrix's SQL crypto store
// (crypto_megolm_inbound_session, schema v22 of mautrix-go v0.32.0, checked by a round-trip test);
// sessions it already holds go through OlmMachine.StoreGroupSession, whose merge rules keep the
// better copy. A 10,000-session import is otherwise dominated by two statement preparations per
// session.
type sessionWriter struct {
	p        *crypto.Puppet
	sessions []*mcrypto.InboundGroupSession
	pickles  [][]byte
	// mismatched counts bundle keys dropped because they contradict a held session.
	mismatched int
	withheld   []event.RoomKeyWithheldEventContent
}

// addPrepared buffers a session and its pickle (made by a worker) and writes a full batch.
func (w *sessionWriter) addPrepared(ctx context.Context, igs *mcrypto.InboundGroupSession, pickled []byte) error {
	w.sessions = append(w.sessions, igs)
	w.pickles = append(w.pickles, pickled)
	if len(w.sessions) >= importBatch {
		return w.flushSessions(ctx)
	}
	return nil
}

func (w *sessionWriter) addWithheld(ctx context.Context, content event.RoomKeyWithheldEventContent) error {
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

var placeholderCache sync.Map // [2]int{rows, cols} → string

// placeholders returns "($1,…,$cols),(…)" for rows rows, numbered on; built once per shape.
func placeholders(rows, cols int) string {
	key := [2]int{rows, cols}
	if cached, ok := placeholderCache.Load(key); ok {
		return cached.(string)
	}
	buf := make([]byte, 0, rows*cols*6)
	n := 1
	for r := 0; r < rows; r++ {
		if r > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, '(')
		for c := 0; c < cols; c++ {
			if c > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, '$')
			buf = strconv.AppendInt(buf, int64(n), 10)
			n++
		}
		buf = append(buf, ')')
	}
	placeholderCache.Store(key, string(buf))
	return string(buf)
}

// held returns which of the sessions the puppet already has a row for (key or withheld entry).
func (w *sessionWriter) held(ctx context.Context) (map[id.SessionID]bool, error) {
	args := make([]any, 0, len(w.sessions)+1)
	for _, igs := range w.sessions {
		args = append(args, igs.ID())
	}
	args = append(args, w.p.Store.AccountID)
	// One parenthesised list of $1…$n: the placeholders of a single row of n columns.
	list := placeholders(1, len(w.sessions))
	rows, err := w.p.Store.DB.Query(ctx, `SELECT session_id FROM crypto_megolm_inbound_session
		WHERE session_id IN `+list+` AND account_id=$`+strconv.Itoa(len(args)), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[id.SessionID]bool)
	for rows.Next() {
		var sid id.SessionID
		if err = rows.Scan(&sid); err != nil {
			return nil, err
		}
		out[sid] = true
	}
	return out, rows.Err()
}

func (w *sessionWriter) flushSessions(ctx context.Context) error {
	if len(w.sessions) == 0 {
		return nil
	}
	defer func() { w.sessions, w.pickles = w.sessions[:0], w.pickles[:0] }()
	held, err := w.held(ctx)
	if err != nil {
		return fmt.Errorf("failed to check held sessions: %w", err)
	}
	const cols = 16
	args := make([]any, 0, len(w.sessions)*cols)
	fresh := make([]*mcrypto.InboundGroupSession, 0, len(w.sessions))
	for i, igs := range w.sessions {
		if held[igs.ID()] {
			if err = w.mergeHeld(ctx, igs); err != nil {
				return err
			}
			continue
		}
		pickled := w.pickles[i]
		ratchetSafety, err := json.Marshal(&igs.RatchetSafety)
		if err != nil {
			return err
		}
		args = append(args, igs.ID(), igs.SenderKey, igs.SigningKey, igs.RoomID, pickled,
			strings.Join(igs.ForwardingChains, ","), igs.SharedHistory, ratchetSafety, igs.ReceivedAt,
			igs.MaxAge, igs.MaxMessages, igs.IsScheduled, igs.KeyBackupVersion, igs.KeySource, igs.SourceUser,
			w.p.Store.AccountID)
		fresh = append(fresh, igs)
	}
	if len(fresh) == 0 {
		return nil
	}
	_, err = w.p.Store.DB.Exec(ctx, `INSERT INTO crypto_megolm_inbound_session (
			session_id, sender_key, signing_key, room_id, session, forwarding_chains, shared_history,
			ratchet_safety, received_at, max_age, max_messages, is_scheduled, key_backup_version, key_source,
			source_user, account_id
		) VALUES `+placeholders(len(fresh), cols)+` ON CONFLICT (session_id, account_id) DO NOTHING`, args...)
	if err != nil {
		return fmt.Errorf("failed to insert sessions: %w", err)
	}
	for _, igs := range fresh {
		w.p.Mach.MarkSessionReceived(ctx, igs.RoomID, igs.ID(), igs.Internal.FirstKnownIndex())
	}
	return nil
}

// flushWithheld stores withheld entries; an entry for a session the puppet holds changes nothing.
func (w *sessionWriter) flushWithheld(ctx context.Context) error {
	if len(w.withheld) == 0 {
		return nil
	}
	defer func() { w.withheld = w.withheld[:0] }()
	const cols = 7
	args := make([]any, 0, len(w.withheld)*cols)
	now := time.Now().UTC()
	for _, c := range w.withheld {
		args = append(args, c.SessionID, c.SenderKey, c.RoomID, c.Code, c.Reason, now, w.p.Store.AccountID)
	}
	_, err := w.p.Store.DB.Exec(ctx, `INSERT INTO crypto_megolm_inbound_session
			(session_id, sender_key, room_id, withheld_code, withheld_reason, received_at, account_id)
		VALUES `+placeholders(len(w.withheld), cols)+` ON CONFLICT (session_id, account_id) DO NOTHING`, args...)
	if err != nil {
		return fmt.Errorf("failed to insert withheld entries: %w", err)
	}
	return nil
}

// mergeHeld merges a bundle's copy of a session the puppet already holds. A copy that is not the
// same ratchet as the held one is a forgery (or a mistake) and is dropped: otherwise mautrix's
// merge, which compares only first indexes, would let an earlier-index fake replace a real key.
func (w *sessionWriter) mergeHeld(ctx context.Context, igs *mcrypto.InboundGroupSession) error {
	existing, err := w.p.Store.GetGroupSession(ctx, igs.RoomID, igs.ID())
	var withheld *event.RoomKeyWithheldEventContent
	if err != nil && !errors.As(err, &withheld) && !errors.Is(err, mcrypto.ErrGroupSessionWithheld) {
		return err
	}
	if existing != nil && !crypto.SameRatchet(existing.Internal, igs.Internal) {
		w.mismatched++
		zerolog.Ctx(ctx).Warn().Stringer("session_id", igs.ID()).
			Msg("Dropping bundle key that does not match the session already held")
		return nil
	}
	return w.p.Mach.StoreGroupSession(ctx, igs)
}
