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
}

// NewService creates the service. The bundles puppets receive reach it through ReceiveBundle,
// which the caller hands to the manager (e2ee.Manager.OnRoomKeyBundle).
func NewService(cfg *config.Config, db *database.Database, mgr *e2ee.Manager) *Service {
	s := &Service{
		cfg: cfg, db: db, mgr: mgr, TempDir: os.TempDir(),
		retryBase: 5 * time.Second, maxAttempts: 8,
		wake: make(chan struct{}, 1),
	}
	return s
}

// Run resumes what a restart interrupted (deliveries in progress, imports of accepted invites),
// then retries failed downloads with backoff until ctx ends.
func (s *Service) Run(ctx context.Context) {
	log := zerolog.Ctx(ctx).With().Str("component", "history_sharing").Logger()
	ctx = log.WithContext(ctx)
	s.resumeSending(ctx)
	s.resumeReceiving(ctx)
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	lastExpiry := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-s.wake:
		}
		s.retryDue(ctx)
		if time.Since(lastExpiry) > time.Minute {
			lastExpiry = time.Now()
			s.expire(ctx)
		}
	}
}

// InviteSent gives a bundle to an invite a puppet sent by a path other than the API.
func (s *Service) InviteSent(ctx context.Context, evt *event.Event) {
	go s.shareForInvite(context.WithoutCancel(ctx), evt)
}
