package e2ee

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// sweepFilter keeps a puppet's /sync to its to-device messages: no rooms, presence or account data.
const sweepFilter = `{"room":{"rooms":[]},"presence":{"not_types":["*"]},"account_data":{"not_types":["*"]}}`

// sweepMinInterval keeps on-demand sweeps of one puppet from hammering the homeserver.
const sweepMinInterval = 10 * time.Second

// SweepToDevice fetches the to-device messages waiting in the puppet device's inbox with /sync and
// handles them like pushed ones.
//
// Synapse pushes to-device messages to appservices (MSC2409) for the recipients of each
// notification only, then advances one stream position for the whole appservice: when several
// senders' messages interleave, messages for puppets outside the current notification are skipped
// for good (seen with 10 concurrent js-sdk senders and 200 puppets: 40 of 200 room keys never
// pushed). The messages stay in the device inbox, so a sync as the puppet's device recovers them;
// ones already pushed are recognised by the Olm machine and ignored. The since token is kept per
// puppet in mautrix's crypto store, so each sync also clears what was delivered.
//
// The appservice's sender has no inbox to sweep: Synapse answers its /sync with a 500. It sweeps
// nothing and asks for a missing key instead (forward.go).
func (p *Puppet) SweepToDevice(ctx context.Context, force bool) (int, error) {
	if p.IsSender() {
		return 0, nil
	}
	p.sweepLock.Lock()
	defer p.sweepLock.Unlock()
	if !force && time.Since(p.lastSweep) < sweepMinInterval {
		return 0, nil
	}
	p.lastSweep = time.Now()
	log := zerolog.Ctx(ctx).With().Stringer("puppet", p.UserID).Logger()
	total, recovered := 0, 0
	for range 20 { // at most 20 pages of (Synapse's) 100 messages per sweep
		if p.mgr.tasks.Stopping() {
			break
		}
		since, err := p.Store.GetNextBatch(ctx)
		if err != nil {
			return total, fmt.Errorf("failed to read sync token: %w", err)
		}
		resp, err := p.Client.SyncRequest(ctx, 0, since, sweepFilter, false, event.PresenceOffline)
		if err != nil {
			return total, fmt.Errorf("failed to sync to-device messages: %w", err)
		}
		for _, evt := range resp.ToDevice.Events {
			evt.Type.Class = event.ToDeviceEventType
			evt.ToUserID, evt.ToDeviceID = p.UserID, p.DeviceID
			if err := evt.Content.ParseRaw(evt.Type); err != nil && !errors.Is(err, event.ErrUnsupportedContentType) {
				log.Warn().Err(err).Str("type", evt.Type.Type).Msg("Skipping malformed to-device event from sync")
				continue
			}
			if p.neverHandled(ctx, evt) {
				recovered++
			}
			evtLog := zerolog.Ctx(ctx).With().Stringer("sender", evt.Sender).Str("type", evt.Type.Type).Logger()
			p.handleToDevice(evtLog.WithContext(ctx), evt)
		}
		if err = p.Store.PutNextBatch(ctx, resp.NextBatch); err != nil {
			return total, fmt.Errorf("failed to save sync token: %w", err)
		}
		total += len(resp.ToDevice.Events)
		if len(resp.ToDevice.Events) == 0 || since == "" && resp.NextBatch == "" {
			break
		}
	}
	p.mgr.Metrics.Recovered(recovered)
	if total > 0 {
		log.Info().Int("count", total).Int("recovered", recovered).Msg("Swept to-device messages from the device inbox")
	}
	return total, nil
}

// neverHandled reports whether a swept Olm message is one the push never brought: mautrix records
// the hash of every Olm ciphertext it decrypts, so a message the push delivered is known.
func (p *Puppet) neverHandled(ctx context.Context, evt *event.Event) bool {
	content, ok := evt.Content.Parsed.(*event.EncryptedEventContent)
	if !ok || evt.Type != event.ToDeviceEncrypted {
		return false
	}
	ciphertext, ok := content.OlmCiphertext[p.Mach.OwnIdentity().IdentityKey]
	if !ok {
		return false
	}
	raw, err := base64.RawStdEncoding.DecodeString(ciphertext.Body)
	if err != nil {
		return false
	}
	seen, err := p.Store.GetOlmHash(ctx, sha256.Sum256(raw))
	return err == nil && seen.IsZero()
}

// sweepLoaded sweeps the inbox of every loaded puppet but the appservice's sender, to which
// Synapse refuses /sync (it asks for a missing key instead, forward.go). force sweeps even the
// puppets swept within sweepMinInterval. It stops early once shutdown began, and returns how many
// messages it fetched.
func (m *Manager) sweepLoaded(ctx context.Context, force bool) int {
	total := 0
	for _, p := range m.loaded() {
		if p.IsSender() {
			continue
		}
		if m.tasks.Stopping() {
			break
		}
		n, err := p.SweepToDevice(ctx, force)
		total += n
		if err != nil && !errors.Is(err, context.Canceled) {
			var he mautrix.HTTPError
			if errors.As(err, &he) || errors.Is(err, mautrix.MUnknownToken) {
				zerolog.Ctx(ctx).Debug().Err(err).Stringer("puppet", p.UserID).Msg("To-device sweep failed")
				continue
			}
			zerolog.Ctx(ctx).Warn().Err(err).Stringer("puppet", p.UserID).Msg("To-device sweep failed")
		}
	}
	return total
}

// The sweeps after the homeserver held heirloom down: a pass starts heldDownGather after the latest
// trigger (the homeserver retries what it stored one transaction after another, and drops what it
// queues until the last is through), at the latest heldDownMaxDelay after the first one waiting
// (triggers that keep coming do not put it off for good), and never within heldDownGap of the end
// of the previous pass (a homeserver that holds heirloom down again and again, say over a flapping
// database, does not have every loaded puppet synced back to back).
const (
	heldDownGather   = 2 * time.Second
	heldDownMaxDelay = 10 * time.Second
	heldDownGap      = 10 * time.Second
)

// heldDownSweeps schedules SweepAfterHeldDown's passes, one at a time.
type heldDownSweeps struct {
	gather, maxDelay, gap time.Duration

	lock        sync.Mutex
	running     bool      // a goroutine waits for or runs a pass
	pending     bool      // a trigger came that no pass began after
	first, last time.Time // the first and the latest pending trigger
	reason      string    // the latest trigger's
	lastEnd     time.Time // when the previous pass ended
	passes      int       // passes run
}

// SweepAfterHeldDown sweeps the inbox of every loaded puppet, forced, in the background, after the
// homeserver held heirloom down. While Synapse holds an appservice down it keeps only the events
// of what it queues: the to-device messages meanwhile (room keys, bundles, key requests) were never
// pushed and wait in the devices' inboxes, where the maintenance loop would find them only on its
// timer, and an event only when it cannot be decrypted. reason says what showed the hold-down.
func (m *Manager) SweepAfterHeldDown(ctx context.Context, reason string) {
	s := &m.heldDownSweeps
	s.lock.Lock()
	defer s.lock.Unlock()
	now := time.Now()
	if !s.pending {
		s.first = now
	}
	s.pending, s.last, s.reason = true, now, reason
	if s.running {
		return
	}
	s.running = true
	m.tasks.Run(m.log.WithContext(ctx), "sweep_after_held_down", m.drainHeldDownSweeps)
}

// drainHeldDownSweeps runs passes while triggers are pending, each when heldDownSweeps allows.
func (m *Manager) drainHeldDownSweeps(ctx context.Context) {
	s := &m.heldDownSweeps
	log := zerolog.Ctx(ctx)
	for {
		s.lock.Lock()
		if !s.pending {
			s.running = false
			s.lock.Unlock()
			return
		}
		at := s.last.Add(s.gather)
		if limit := s.first.Add(s.maxDelay); limit.Before(at) {
			at = limit
		}
		if next := s.lastEnd.Add(s.gap); next.After(at) {
			at = next
		}
		if wait := time.Until(at); wait > 0 {
			s.lock.Unlock()
			if !m.tasks.Sleep(wait) {
				log.Debug().Msg("Not sweeping the loaded puppets' inboxes: shutting down")
				return // running stays set: nothing starts once shutdown began
			}
			continue
		}
		s.pending = false
		reason := s.reason
		s.lock.Unlock()

		start := time.Now()
		n := m.sweepLoaded(ctx, true)
		s.lock.Lock()
		s.lastEnd = time.Now()
		s.passes++
		s.lock.Unlock()
		if m.tasks.Stopping() {
			log.Debug().Int("count", n).Msg("Stopped sweeping the loaded puppets' inboxes: shutting down")
			return
		}
		log.Info().Str("reason", reason).Int("count", n).Dur("took", time.Since(start)).
			Msg("Swept the loaded puppets' inboxes after the homeserver held heirloom down")
	}
}
