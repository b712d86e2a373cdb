package e2ee

import "context"

// Shutdown stops the manager from starting background work (device checks) and waits until the
// work already started has finished, or ctx ends (then it returns ctx's error). Call it after the
// HTTP listener stopped and before the database closes.
func (m *Manager) Shutdown(ctx context.Context) error {
	m.heldRetries.stop()
	return m.tasks.Stop(ctx)
}
