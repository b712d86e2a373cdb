// Package history provides heirloom's MSC4268 history sharing at the edge: it builds, uploads and
// delivers key bundles when puppets invite, and stores, accepts, downloads and imports them when
// puppets are invited. The pure rules and wire formats live in package keybundle.
package history

import (
	"context"
	"os"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/exsync"
	"maunium.net/go/mautrix/event"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/tasks"
	"github.com/heirloom-matrix/heirloom/metrics"
)

// Service is heirloom's MSC4268 implementation at the edge: it builds, uploads and delivers bundles
// when puppets invite, and stores, accepts, downloads and imports bundles when puppets are invited.
type Service struct {
	cfg *config.Config
	db  *database.Database
	mgr *e2ee.Manager
	// TempDir holds encrypted bundles between building and uploading, and between download and import.
	TempDir string
	// retryBase is the first retry delay after a failed download; it doubles per attempt.
	retryBase   time.Duration
	maxAttempts int
	wake        chan struct{}
	acceptLock  exsync.KeyedMutex[string]
	// Metrics counts bundles and their timings (nil: nothing).
	Metrics *metrics.Metrics
	// redeliveries coalesces the redeliveries of one bundle (redeliver.go).
	redeliveries redeliveryQueue

	// tasks tracks the work started in the background (a bundle to share for an invite's echo, an
	// import after a join or a bundle's arrival, an auto-join), so that Shutdown can wait for it
	// before the database closes.
	tasks *tasks.Group
}

// NewService creates the service. The bundles puppets receive reach it through ReceiveBundle,
// which the caller hands to the manager (e2ee.Manager.OnRoomKeyBundle).
func NewService(cfg *config.Config, db *database.Database, mgr *e2ee.Manager) *Service {
	s := &Service{
		cfg: cfg, db: db, mgr: mgr, TempDir: os.TempDir(),
		retryBase: 5 * time.Second, maxAttempts: 8,
		wake:  make(chan struct{}, 1),
		tasks: &tasks.Group{Work: "history sharing work"},
	}
	return s
}

// Run resumes what a restart interrupted (deliveries in progress, imports of accepted invites),
// then retries failed downloads with backoff until ctx ends. Work it has begun (an import) is
// finished, not abandoned, when ctx ends.
func (s *Service) Run(ctx context.Context) {
	log := zerolog.Ctx(ctx).With().Str("component", "history_sharing").Logger()
	work := context.WithoutCancel(log.WithContext(ctx))
	s.resumeSending(work)
	s.resumeReceiving(work)
	lastExpiry := time.Now()
	tasks.Every(ctx, time.Second, s.wake, func() {
		s.retryDue(work)
		if time.Since(lastExpiry) > time.Minute {
			lastExpiry = time.Now()
			s.expire(work)
		}
	})
}

// background runs fn on its own goroutine, with a context that outlives ctx's cancellation,
// tracked for Shutdown. Once Shutdown began it runs nothing and says so.
func (s *Service) background(ctx context.Context, what string, fn func(ctx context.Context)) {
	s.tasks.Run(ctx, what, fn)
}

// Shutdown stops the service from starting background work and waits until the work already
// started has finished, or ctx ends (then it returns ctx's error). Call it after the HTTP listener
// stopped (requests in flight may start work) and before the database closes.
func (s *Service) Shutdown(ctx context.Context) error {
	return s.tasks.Stop(ctx)
}

// InviteSent gives a bundle to an invite a puppet sent by a path other than the API.
func (s *Service) InviteSent(ctx context.Context, evt *event.Event) {
	s.background(ctx, "share_for_invite", func(ctx context.Context) { s.shareForInvite(ctx, evt) })
}
