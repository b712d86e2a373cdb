package gateway

import (
	"context"
	"time"

	"maunium.net/go/mautrix/id"
)

// ExposeMedia is exposeMedia, for the tests of serveMedia.
func (g *Gateway) ExposeMedia(ctx context.Context, content map[string]any) error {
	return g.exposeMedia(ctx, content)
}

// RoomEncrypted is roomEncrypted, for the tests of what heirloom believes of a room it half knows.
func (g *Gateway) RoomEncrypted(ctx context.Context, user id.UserID, roomID id.RoomID) (bool, error) {
	return g.roomEncrypted(ctx, user, roomID)
}

// Nudge wakes the delivery loop, as new events do: for tests that move the database's clock.
func (g *Gateway) Nudge() { g.nudge() }

// BeforeStore runs f in Ingest between decrypting the events and storing them.
func (g *Gateway) BeforeStore(f func()) { g.beforeStore = f }

// NotedSessions is how many sessions wait for the delivery loop to look at.
func (g *Gateway) NotedSessions() int {
	g.keysLock.Lock()
	defer g.keysLock.Unlock()
	return len(g.keys)
}

// SetAnswerTimeouts shortens how long heirloom waits for the bridge's answers (the first attempt
// of a transaction, later ones, and the empty transaction asking whether the bridge is up).
func (g *Gateway) SetAnswerTimeouts(first, retry, probe time.Duration) {
	g.timeouts.first, g.timeouts.retry, g.timeouts.probe = first, retry, probe
}

// SetQueryWait shortens how long the homeserver's query waits for the bridge's answer.
func (g *Gateway) SetQueryWait(d time.Duration) { g.timeouts.query = d }

// RecoveryClaims is how many sessions' missing keys heirloom went to fetch, within
// keyRecoveryEvery.
func (g *Gateway) RecoveryClaims() int {
	g.recoveries.mu.Lock()
	defer g.recoveries.mu.Unlock()
	return len(g.recoveries.since)
}
