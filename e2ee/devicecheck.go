package e2ee

import (
	"context"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/metrics"
)

// What a start costs must not grow with puppets that are provisioned but idle: a deployment may
// have 100,000 of them. So the devices are not all asked about at startup. Whatever the homeserver
// deletes while heirloom runs is noticed from the puppet's device-list change (or an
// M_UNKNOWN_DEVICE answer); what it deleted while heirloom was down, when the puppet is next
// needed: at startup for the puppets active within recentActivity (the ones peers talk to), and
// for any other when its machine first loads.

// recentActivity is how recently a puppet must have been active for the startup check to ask
// about its device.
const recentActivity = 24 * time.Hour

// CheckRecentDevices checks the devices of the puppets active within recentActivity, a batch of
// keysQueryBatch per query to the homeserver, until done or ctx ends. It costs one scan of the
// puppet table and nothing per idle puppet.
func (m *Manager) CheckRecentDevices(ctx context.Context) error {
	start := time.Now()
	rows, err := m.db.ListPuppetsActiveSince(ctx, start.Add(-recentActivity).UnixMilli())
	if err != nil {
		return err
	}
	users := make([]id.UserID, len(rows))
	for i, row := range rows {
		users[i] = row.UserID
	}
	m.devices.markChecked(users)
	for start := 0; start < len(rows) && ctx.Err() == nil; start += keysQueryBatch {
		m.checkRows(ctx, rows[start:min(start+keysQueryBatch, len(rows))], metrics.TriggerStartup)
	}
	zerolog.Ctx(ctx).Info().Int("puppets", len(rows)).Dur("took", time.Since(start)).
		Msg("Checked the devices of the puppets active within a day")
	return ctx.Err()
}

// markChecked records users as checked since the process started, and returns those that were not.
func (k *deviceKeeper) markChecked(users []id.UserID) []id.UserID {
	k.lock.Lock()
	defer k.lock.Unlock()
	if k.checked == nil {
		k.checked = map[id.UserID]struct{}{}
	}
	var fresh []id.UserID
	for _, userID := range users {
		if _, done := k.checked[userID]; !done {
			k.checked[userID] = struct{}{}
			fresh = append(fresh, userID)
		}
	}
	return fresh
}

// checkOnLoad checks the device of a puppet whose machine just loaded, unless it was checked since
// the process started. Checks queue up and go to the homeserver keysQueryBatch at a time, in the
// background: a transaction that loads a thousand machines costs ten queries, and waits for none.
func (m *Manager) checkOnLoad(ctx context.Context, userID id.UserID) {
	if len(m.devices.markChecked([]id.UserID{userID})) == 0 {
		return
	}
	m.devices.lock.Lock()
	m.devices.loadQueue = append(m.devices.loadQueue, userID)
	start := !m.devices.draining
	m.devices.draining = true
	m.devices.lock.Unlock()
	if start {
		ctx = m.log.WithContext(context.WithoutCancel(ctx))
		m.tasks.Run(ctx, "check_loaded_devices", m.drainLoadChecks)
	}
}

// loadCheckGather is how long the checks of machines loading together wait for one another, so
// that they go to the homeserver in full batches.
const loadCheckGather = 250 * time.Millisecond

// drainLoadChecks checks the queued devices until the queue is empty.
func (m *Manager) drainLoadChecks(ctx context.Context) {
	for {
		m.devices.lock.Lock()
		short := len(m.devices.loadQueue) < keysQueryBatch
		m.devices.lock.Unlock()
		if short {
			time.Sleep(loadCheckGather)
		}
		m.devices.lock.Lock()
		batch := m.devices.loadQueue[:min(keysQueryBatch, len(m.devices.loadQueue))]
		m.devices.loadQueue = m.devices.loadQueue[len(batch):]
		if len(batch) == 0 {
			m.devices.draining = false
			m.devices.loadQueue = nil
			m.devices.lock.Unlock()
			return
		}
		m.devices.lock.Unlock()
		m.checkDevices(ctx, batch, metrics.TriggerLoad)
	}
}

// devicesChecked reports how many puppets' devices were checked (or queued for a check) since the
// process started.
func (m *Manager) devicesChecked() int {
	m.devices.lock.Lock()
	defer m.devices.lock.Unlock()
	return len(m.devices.checked)
}
