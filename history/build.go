package history

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

type ioWriter = io.Writer

// storedSession is one inbound session row as the builder needs it. Only shared sessions are
// unpickled, and that happens on every core: it is most of a bundle's cost.
type storedSession struct {
	sessionID  id.SessionID
	senderKey  id.SenderKey
	signingKey id.Ed25519
	pickled    []byte
	exported   string
	err        error
}

// writeBundle streams every inbound session the puppet holds for the room through the builder:
// first what goes into the withheld list (sessions without shared history, then the
// m.history_not_shared entries the puppet imported from accepted bundles), then the shared
// sessions, so the builder never holds either list. It reads mautrix's
// crypto_megolm_inbound_session rows itself (read-only) so the sessions that go into room_keys can
// be unpickled and exported in parallel.
func (s *Service) writeBundle(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID, w io.Writer) (keybundle.Counts, error) {
	builder := keybundle.NewBuilder(w, roomID, p.DeviceID)
	err := s.withheldSessions(ctx, p, roomID, func(st *storedSession) error {
		return builder.AddSession(keybundle.Session{RoomID: roomID, SessionID: st.sessionID, SenderKey: st.senderKey})
	})
	if err == nil {
		err = s.receivedWithheld(ctx, p, roomID, builder.AddWithheld)
	}
	if err == nil {
		err = s.exportSessions(ctx, p, roomID, func(st *storedSession) error {
			return builder.AddSession(keybundle.Session{
				RoomID: roomID, SessionID: st.sessionID, SenderKey: st.senderKey, SigningKey: st.signingKey,
				SharedHistory: true,
				Export:        func() (string, error) { return st.exported, st.err },
			})
		})
	}
	if err != nil {
		counts, _ := builder.Close()
		return counts, fmt.Errorf("failed to read sessions: %w", err)
	}
	return builder.Close()
}

// withheldSessions calls each for every session of the room the puppet holds without shared
// history: those go into the withheld list, and their keys are never decrypted from the store.
func (s *Service) withheldSessions(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID, each func(*storedSession) error) error {
	rows, err := p.Store.DB.Query(ctx, `
		SELECT session_id, sender_key FROM crypto_megolm_inbound_session
		WHERE room_id=$1 AND account_id=$2 AND session IS NOT NULL AND shared_history IS NOT TRUE`, roomID, p.Store.AccountID)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		st := &storedSession{}
		if err = rows.Scan(&st.sessionID, &st.senderKey); err != nil {
			return err
		}
		if err = each(st); err != nil {
			return err
		}
	}
	return rows.Err()
}

// exportSessions reads the room's shared sessions and calls each for every one, exported at its
// first known index by a pool of workers. Order is not kept: a bundle's order carries no meaning.
func (s *Service) exportSessions(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID, each func(*storedSession) error) error {
	rows, err := p.Store.DB.Query(ctx, `
		SELECT session_id, sender_key, signing_key, session
		FROM crypto_megolm_inbound_session
		WHERE room_id=$1 AND account_id=$2 AND session IS NOT NULL AND shared_history IS TRUE`, roomID, p.Store.AccountID)
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
			if err := rows.Scan(&st.sessionID, &st.senderKey, &st.signingKey, &st.pickled); err != nil {
				readErr <- err
				return
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

// receivedWithheld calls each for every m.history_not_shared entry the puppet imported for the
// room from an accepted bundle (marked with the bundle's sender as source_user). Withheld messages
// that arrived over to-device are never passed on: anyone can send one, and MSC4268 does not use
// that code there. mautrix keeps withheld entries as inbound-session rows with a withheld code and
// no session; it has no query for them by room.
func (s *Service) receivedWithheld(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID, each func(keybundle.Withheld) error) error {
	rows, err := s.db.Raw.Query(ctx, `
		SELECT session_id, sender_key, withheld_code, COALESCE(withheld_reason, '')
		FROM crypto_megolm_inbound_session
		WHERE account_id=$1 AND room_id=$2 AND session IS NULL AND withheld_code IN ($3, $4) AND source_user <> ''`,
		p.UserID.String(), roomID, keybundle.CodeHistoryNotShared, keybundle.CodeHistoryNotSharedUnstable)
	if err != nil {
		return fmt.Errorf("failed to read withheld sessions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		w := keybundle.Withheld{RoomID: roomID, Algorithm: id.AlgorithmMegolmV1}
		if err = rows.Scan(&w.SessionID, &w.SenderKey, &w.Code, &w.Reason); err != nil {
			return err
		}
		if err = each(w); err != nil {
			return err
		}
	}
	return rows.Err()
}

// countSessions counts the room's sessions, for reporting what an invite did not share.
func (s *Service) countSessions(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID) (int, error) {
	var n int
	err := s.db.Raw.QueryRow(ctx, `SELECT COUNT(*) FROM crypto_megolm_inbound_session WHERE account_id=$1 AND room_id=$2`,
		p.UserID.String(), roomID).Scan(&n)
	return n, err
}

// maxBundleSize is the configured cap, lowered to the homeserver's media limit if that is smaller:
// a bundle over it fails with a clear error before anything is uploaded.
func (s *Service) maxBundleSize(ctx context.Context, p *e2ee.Puppet) int64 {
	limit := s.cfg.HistorySharing.MaxBundleSize
	if mc, err := p.Client.GetMediaConfig(ctx); err == nil && mc.UploadSize > 0 && mc.UploadSize < limit {
		zerolog.Ctx(ctx).Debug().Int64("homeserver_limit", mc.UploadSize).Msg("Homeserver media limit caps the bundle size")
		limit = mc.UploadSize
	}
	return limit
}
