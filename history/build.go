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
	"github.com/heirloom-matrix/heirloom/e2ee/cryptostore"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

type ioWriter = io.Writer

// storedSession is one shared session on its way through the export workers. Only shared
// sessions are unpickled, and that happens on every core: it is most of a bundle's cost.
type storedSession struct {
	cryptostore.StoredSession
	exported string
	err      error
}

// writeBundle streams every row the puppet holds for the room through the builder, which puts
// each where keybundle.Place says: first what may go into the withheld list (sessions without
// shared history and the m.history_not_shared entries the puppet imported from accepted bundles,
// in one pass), then the shared sessions, so the builder never holds either list. The shared
// sessions' pickles are read (e2ee.Manager.EachSharedSessionOf) and unpickled and exported in
// parallel. A row the builder leaves out (keys rust-sdk would not parse) is logged.
//
// A bridge user's bundle is made of what all the bridge's users in the room hold (pooled.go): when
// only one of them holds anything, it is that account's rows, read as a puppet's own.
func (s *Service) writeBundle(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID, w io.Writer) (keybundle.Counts, error) {
	account := p.UserID.String()
	if s.cfg.IsBridgeUser(p.UserID) {
		accounts, err := s.bundleAccounts(ctx, p, roomID)
		if err != nil {
			return keybundle.Counts{}, err
		} else if len(accounts) > 1 {
			return s.writePooledBundle(ctx, p, accounts, roomID, w)
		} else if len(accounts) == 1 {
			account = accounts[0]
		}
	}
	builder := keybundle.NewBuilder(w, roomID, p.DeviceID)
	err := s.mgr.EachWithheldEntryOf(ctx, account, roomID, func(h keybundle.Held) error {
		return builder.Add(h, nil)
	})
	if err == nil {
		err = s.exportSessions(ctx, account, roomID, addExported(builder))
	}
	counts, err := closeBundle(ctx, builder, err)
	if err == nil && account != p.UserID.String() {
		zerolog.Ctx(ctx).Info().Int("accounts", 1).Strs("pooled_from", []string{account}).Int("sessions", counts.Sessions).
			Int("withheld", counts.Withheld).Msg("Built a bundle of what the bridge's users hold")
	}
	return counts, err
}

// addExported adds a session a worker exported to the bundle.
func addExported(builder *keybundle.Builder) func(*storedSession) error {
	return func(st *storedSession) error {
		return builder.Add(st.Held, func() (string, error) { return st.exported, st.err })
	}
}

// closeBundle ends a bundle whose reading ended with err, and logs what was left out of it.
func closeBundle(ctx context.Context, builder *keybundle.Builder, err error) (keybundle.Counts, error) {
	if left := builder.LeftOut(); len(left) > 0 {
		zerolog.Ctx(ctx).Warn().Any("left_out", left).Msg("Some stored sessions were left out of the bundle")
	}
	if err != nil {
		counts, _ := builder.Close()
		return counts, fmt.Errorf("failed to read sessions: %w", err)
	}
	return builder.Close()
}

// exportSessions reads the shared sessions the account holds for the room and calls each for
// every one, exported at its first known index by a pool of workers. Order is not kept: a bundle's
// order carries no meaning.
func (s *Service) exportSessions(ctx context.Context, account string, roomID id.RoomID, each func(*storedSession) error) error {
	jobs := make(chan *storedSession, 256)
	done := make(chan *storedSession, 256)
	var wg sync.WaitGroup
	for range max(1, runtime.GOMAXPROCS(0)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for st := range jobs {
				st.exported, st.err = s.mgr.Pickles.ExportPickled(st.Pickled)
				st.Pickled = nil
				done <- st
			}
		}()
	}
	readErr := make(chan error, 1)
	go func() {
		defer close(jobs)
		readErr <- s.mgr.EachSharedSessionOf(ctx, account, roomID, func(st cryptostore.StoredSession) error {
			jobs <- &storedSession{StoredSession: st}
			return nil
		})
	}()
	return collect(&wg, done, readErr, each)
}

// collect calls each for every session the workers export, until they are all done (wg) and
// closes done meanwhile; it returns the first error, each's or the reader's (readErr).
func collect(wg *sync.WaitGroup, done chan *storedSession, readErr <-chan error, each func(*storedSession) error) error {
	go func() {
		wg.Wait()
		// All workers are done; the reader finished before closing their input.
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
