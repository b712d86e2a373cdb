package e2ee

import (
	"context"
	"errors"
	"fmt"
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
func (p *Puppet) SweepToDevice(ctx context.Context, force bool) (int, error) {
	p.sweepLock.Lock()
	defer p.sweepLock.Unlock()
	if !force && time.Since(p.lastSweep) < sweepMinInterval {
		return 0, nil
	}
	p.lastSweep = time.Now()
	log := zerolog.Ctx(ctx).With().Stringer("puppet", p.UserID).Logger()
	total := 0
	for range 20 { // at most 20 pages of (Synapse's) 100 messages per sweep
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
			evtLog := zerolog.Ctx(ctx).With().Stringer("sender", evt.Sender).Str("type", evt.Type.Type).Logger()
			p.HandleToDevice(evtLog.WithContext(ctx), evt)
		}
		if err = p.Store.PutNextBatch(ctx, resp.NextBatch); err != nil {
			return total, fmt.Errorf("failed to save sync token: %w", err)
		}
		total += len(resp.ToDevice.Events)
		if len(resp.ToDevice.Events) == 0 || since == "" && resp.NextBatch == "" {
			break
		}
	}
	if total > 0 {
		log.Info().Int("count", total).Msg("Swept to-device messages from the device inbox")
	}
	return total, nil
}

// SweepLoaded sweeps the inbox of every loaded puppet.
func (m *Manager) SweepLoaded(ctx context.Context) {
	for _, p := range m.Loaded() {
		if _, err := p.SweepToDevice(ctx, false); err != nil && !errors.Is(err, context.Canceled) {
			var he mautrix.HTTPError
			if errors.As(err, &he) || errors.Is(err, mautrix.MUnknownToken) {
				zerolog.Ctx(ctx).Debug().Err(err).Stringer("puppet", p.UserID).Msg("To-device sweep failed")
				continue
			}
			zerolog.Ctx(ctx).Warn().Err(err).Stringer("puppet", p.UserID).Msg("To-device sweep failed")
		}
	}
}
