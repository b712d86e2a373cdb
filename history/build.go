package history

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/crypto"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

type ioWriter = io.Writer

// storedSession is one inbound session row as the builder needs it. Only shared sessions are
// unpickled, and that happens on every core: it is most of a bundle's cost.
type storedSession struct {
	sessionID  id.SessionID
	senderKey  id.SenderKey
	signingKey id.Ed25519
	shared     bool
	pickled    []byte
	exported   string
	err        error
}

// writeBundle streams every inbound session the puppet holds for the room through the builder,
// then the m.history_not_shared entries it received in earlier bundles. It reads mautrix's
// crypto_megolm_inbound_session rows itself (read-only) so the sessions that go into room_keys can
// be unpickled and exported in parallel.
func (s *Service) writeBundle(ctx context.Context, p *crypto.Puppet, roomID id.RoomID, w io.Writer) (keybundle.Counts, error) {
	builder := keybundle.NewBuilder(w, roomID, p.DeviceID)
	err := s.exportSessions(ctx, p, roomID, func(st *storedSession) error {
		return builder.AddSession(keybundle.Session{
			RoomID: roomID, SessionID: st.sessionID, SenderKey: st.senderKey, SigningKey: st.signingKey,
			SharedHistory: st.shared,
			Export:        func() (string, error) { return st.exported, st.err },
		})
	})
	if err != nil {
		counts, _ := builder.Close()
		return counts, fmt.Errorf("failed to read sessions: %w", err)
	}
	withheld, err := s.receivedWithheld(ctx, p, roomID)
	if err != nil {
		counts, _ := builder.Close()
		return counts, err
	}
	for _, w := range withheld {
		builder.AddWithheld(w)
	}
	return builder.Close()
}

// exportSessions reads the room's sessions and calls each for every one, with shared sessions
// exported at their first known index by a pool of workers. Order is not kept: a bundle's order
// carries no meaning.
func (s *Service) exportSessions(ctx context.Context, p *crypto.Puppet, roomID id.RoomID, each func(*storedSession) error) error {
	rows, err := p.Store.DB.Query(ctx, `
		SELECT session_id, sender_key, signing_key, session, shared_history
		FROM crypto_megolm_inbound_session
		WHERE room_id=$1 AND account_id=$2 AND session IS NOT NULL`, roomID, p.Store.AccountID)
	if err != nil {
		return err
	}
	defer rows.Close()
	jobs := make(chan *storedSession, 256)
	done := make(chan *storedSession, 256)
	var wg sync.WaitGroup
	for range max(1, runtime.GOMAXPROCS(0)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for st := range jobs {
				st.exported, st.err = s.mgr.Pickles.ExportPickled(st.pickled)
				st.pickled = nil
				done <- st
			}
		}()
	}
	readErr := make(chan error, 1)
	go func() {
		defer close(jobs)
		for rows.Next() {
			st := &storedSession{}
			var shared *bool
			if err := rows.Scan(&st.sessionID, &st.senderKey, &st.signingKey, &st.pickled, &shared); err != nil {
				readErr <- err
				return
			}
			st.shared = shared != nil && *shared
			if !st.shared {
				done <- st // withheld: the key is never decrypted from the store
				continue
			}
			jobs <- st
		}
		readErr <- rows.Err()
	}()
	go func() {
		wg.Wait()
		// All workers are done; the reader finished before closing jobs.
		close(done)
	}()
	var firstErr error
	for st := range done {
		if firstErr == nil {
			firstErr = each(st)
		}
	}
	if err := <-readErr; err != nil && firstErr == nil {
		firstErr = err
	}
	return firstErr
}

// receivedWithheld reads the withheld entries the puppet stored for the room. mautrix keeps them
// as inbound-session rows with a withheld code and no session; it has no query for them by room.
func (s *Service) receivedWithheld(ctx context.Context, p *crypto.Puppet, roomID id.RoomID) ([]keybundle.Withheld, error) {
	rows, err := s.db.Raw.Query(ctx, `
		SELECT session_id, sender_key, withheld_code, COALESCE(withheld_reason, '')
		FROM crypto_megolm_inbound_session
		WHERE account_id=$1 AND room_id=$2 AND session IS NULL AND withheld_code IN ($3, $4)`,
		p.UserID.String(), roomID, keybundle.CodeHistoryNotShared, keybundle.CodeHistoryNotSharedUnstable)
	if err != nil {
		return nil, fmt.Errorf("failed to read withheld sessions: %w", err)
	}
	defer rows.Close()
	var out []keybundle.Withheld
	for rows.Next() {
		w := keybundle.Withheld{RoomID: roomID, Algorithm: id.AlgorithmMegolmV1}
		if err = rows.Scan(&w.SessionID, &w.SenderKey, &w.Code, &w.Reason); err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

// countSessions counts the room's sessions, for reporting what an invite did not share.
func (s *Service) countSessions(ctx context.Context, p *crypto.Puppet, roomID id.RoomID) (int, error) {
	var n int
	err := s.db.Raw.QueryRow(ctx, `SELECT COUNT(*) FROM crypto_megolm_inbound_session WHERE account_id=$1 AND room_id=$2`,
		p.UserID.String(), roomID).Scan(&n)
	return n, err
}

// maxBundleSize is the configured cap, lowered to the homeserver's media limit if that is smaller:
// a bundle over it fails with a clear error before anything is uploaded.
func (s *Service) maxBundleSize(ctx context.Context, p *crypto.Puppet) int64 {
	limit := s.cfg.HistorySharing.MaxBundleSize
	if mc, err := p.Client.GetMediaConfig(ctx); err == nil && mc.UploadSize > 0 && mc.UploadSize < limit {
		zerolog.Ctx(ctx).Debug().Int64("homeserver_limit", mc.UploadSize).Msg("Homeserver media limit caps the bundle size")
		limit = mc.UploadSize
	}
	return limit
}
