package e2ee

import (
	"context"
	"errors"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/internal/tasks"
	"github.com/heirloom-matrix/heirloom/metrics"
)

// RouteToDevice hands a to-device event to the machine of the puppet device it is addressed to.
// It reports whether a puppet took it.
func (m *Manager) RouteToDevice(ctx context.Context, evt *event.Event) bool {
	log := zerolog.Ctx(ctx).With().
		Stringer("to_user_id", evt.ToUserID).Stringer("to_device_id", evt.ToDeviceID).
		Stringer("sender", evt.Sender).Str("type", evt.Type.Type).Logger()
	// handleToDevice and what it calls add no field of these again.
	if !m.managesDevice(evt.ToUserID) {
		log.Debug().Msg("Ignoring to-device event for a user that is not a puppet")
		return false
	}
	p, err := m.Get(ctx, evt.ToUserID)
	if errors.Is(err, ErrNotProvisioned) {
		log.Debug().Msg("Ignoring to-device event for an unprovisioned puppet")
		return false
	} else if err != nil {
		log.Err(err).Msg("Failed to load puppet for to-device event")
		return false
	} else if evt.ToDeviceID != "" && evt.ToDeviceID != p.DeviceID {
		log.Debug().Msg("Ignoring to-device event for another device of the puppet")
		return false
	}
	p.handleToDevice(log.WithContext(ctx), evt)
	return true
}

// RouteOTKCounts tells a puppet's machine how many one-time keys the homeserver holds for it,
// so it uploads more when they run low.
func (m *Manager) RouteOTKCounts(ctx context.Context, userID id.UserID, deviceID id.DeviceID, count mautrix.OTKCount) {
	if !m.managesDevice(userID) {
		return
	}
	p, err := m.Get(ctx, userID)
	if err != nil || p.DeviceID != deviceID {
		return
	}
	count.UserID, count.DeviceID = userID, deviceID
	p, unlock, err := m.lockCurrent(ctx, p)
	if err != nil {
		return
	}
	defer unlock()
	p.Mach.HandleOTKCounts(ctx, &count)
}

// RouteDeviceListChanges marks the changed users' device lists outdated. Device tables in the
// crypto store are shared by all puppets, so one mark reaches every machine, loaded now or later:
// each re-queries the keys before it next shares a room key with that user (memberDevices), and a
// new device gets the room key then. A change of a puppet's own device list may be the homeserver
// deleting its device: its device is checked, and restored if it is gone (restore.go).
func (m *Manager) RouteDeviceListChanges(ctx context.Context, changed []id.UserID) {
	if len(changed) == 0 {
		return
	}
	// First the count, then the mark: a fetch in flight that misses the mark sees the count.
	m.deviceChanges.note(changed)
	if err := m.shared.MarkTrackedUsersOutdated(ctx, changed); err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to mark device lists outdated")
	}
	var own []id.UserID
	for _, userID := range changed {
		if m.managesDevice(userID) {
			own = append(own, userID)
		}
	}
	if len(own) > 0 {
		m.tasks.Run(ctx, "check_devices", func(ctx context.Context) { m.checkDevices(ctx, own, metrics.TriggerDeviceList) })
	}
}

// managesDevice reports whether heirloom holds the user's device: a puppet, a bridge user in
// gateway mode, or heirloom's bot.
func (m *Manager) managesDevice(userID id.UserID) bool {
	return m.cfg.IsManaged(userID) || userID == m.cfg.BotUserID()
}

// replenishKeys checks each loaded puppet's one-time key count with the homeserver and uploads
// more where needed. Synapse does not report every claim in transactions, so this runs on a timer.
// A device without a fallback key on the homeserver (one provisioned before heirloom uploaded
// them, or whose upload failed) gets it here.
func (m *Manager) replenishKeys(ctx context.Context) {
	for _, p := range m.loaded() {
		m.replenishKeysOf(ctx, p)
	}
}

// replenishKeysOf tops up the puppet's one-time keys and uploads its fallback key if the
// homeserver lacks it, on the machine loaded for it now (p may have been unloaded since).
func (m *Manager) replenishKeysOf(ctx context.Context, p *Puppet) {
	current, unlock, err := m.lockCurrent(ctx, p)
	if err == nil {
		err = current.Mach.ShareKeys(ctx, -1)
		unlock()
	}
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Stringer("puppet", p.UserID).Msg("Failed to replenish one-time keys")
	}
	if err = m.ensureFallbackKey(ctx, p, fallbackPresent); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Stringer("puppet", p.UserID).Msg("Failed to upload a fallback key")
	}
}

// RunMaintenance replenishes one-time keys and evicts idle machines until ctx ends. Every
// deviceListMaxAge it marks each tracked device list outdated, as a bound on how long a change the
// homeserver never reported can go unseen.
func (m *Manager) RunMaintenance(ctx context.Context, every time.Duration) {
	refreshed := time.Now()
	tasks.Every(ctx, every, nil, func() {
		if time.Since(refreshed) >= deviceListMaxAge {
			refreshed = time.Now()
			if err := m.MarkDeviceListsOutdated(ctx); err != nil {
				zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to mark device lists outdated")
			}
		}
		m.replenishKeys(ctx)
		m.sweepLoaded(ctx, false)
		if n := m.evictIdle(); n > 0 {
			zerolog.Ctx(ctx).Debug().Int("count", n).Msg("Evicted idle puppet machines")
		}
	})
}
