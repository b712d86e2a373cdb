package gateway

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

const (
	// keyRecoveryAfter is how long an event for the bridge waits for its room key before heirloom
	// goes to fetch it: well within gateway.decrypt_wait's default, so the event is usually
	// delivered decrypted, in order.
	keyRecoveryAfter = time.Second
	// keyRecoveryEvery is how often one session's key is fetched at most.
	keyRecoveryEvery = 10 * time.Minute
)

// recoveryKey names a session whose key heirloom goes to fetch: its room, the sender key the event
// names, and its ID. A session ID alone is any member's to name: an event of another room, or one
// naming another device, must not take the claim of the session a genuine event waits for.
type recoveryKey struct {
	roomID    id.RoomID
	senderKey id.SenderKey
	sessionID id.SessionID
}

// keyRecoveries remembers which sessions' keys heirloom went to fetch, and when.
type keyRecoveries struct {
	mu    sync.Mutex
	since map[recoveryKey]time.Time
}

// claim reports whether the session's key is not being fetched already (within keyRecoveryEvery),
// and marks it as being fetched. It forgets what is older.
func (k *keyRecoveries) claim(session recoveryKey, now time.Time) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.since == nil {
		k.since = map[recoveryKey]time.Time{}
	}
	for s, at := range k.since {
		if now.Sub(at) >= keyRecoveryEvery {
			delete(k.since, s)
		}
	}
	if _, ok := k.since[session]; ok {
		return false
	}
	k.since[session] = now
	return true
}

// recoverKey goes to fetch the room key of an encrypted event for the bridge that no bridge user
// could decrypt, in case the homeserver never pushed it (Synapse skips some to-device pushes to
// appservices): after keyRecoveryAfter, if the key has still not come, each bridge user in the room
// who may sync sweeps its device inbox (e2ee.SweepToDevice), and the appservice's sender (the
// bridge's bot), to which Synapse refuses /sync, asks the sending device for the session and takes
// only that device's forward of its own session that decrypts the event (e2ee.RequestRoomKeyForEvent). A key that comes
// reaches the waiting event through KeysArrived. Each session (room, sender key and session ID) is
// fetched once per keyRecoveryEvery.
func (g *Gateway) recoverKey(ctx context.Context, raw json.RawMessage) {
	var evt event.Event
	if json.Unmarshal(raw, &evt) != nil || evt.Content.ParseRaw(event.EventEncrypted) != nil {
		return
	}
	content, ok := evt.Content.Parsed.(*event.EncryptedEventContent)
	if !ok || content.SessionID == "" {
		return
	}
	if !g.recoveries.claim(recoveryKey{roomID: evt.RoomID, senderKey: content.SenderKey, sessionID: content.SessionID}, time.Now()) {
		return
	}
	log := zerolog.Ctx(ctx).With().Stringer("room_id", evt.RoomID).Stringer("session_id", content.SessionID).Logger()
	ctx = log.WithContext(context.WithoutCancel(ctx))
	go func() {
		time.Sleep(keyRecoveryAfter)
		g.fetchKey(ctx, &evt, content.SessionID)
	}()
}

// fetchKey is recoverKey's work, once the wait is over. The bridge's bot asks with the event
// itself (e2ee.RequestRoomKeyForEvent): only a forward that decrypts it is taken.
func (g *Gateway) fetchKey(ctx context.Context, evt *event.Event, sessionID id.SessionID) {
	roomID := evt.RoomID
	readers := g.readers(ctx, roomID, "")
	for _, p := range readers {
		if igs, err := p.Store.GetGroupSession(ctx, roomID, sessionID); err == nil && igs != nil {
			return // it came meanwhile
		}
	}
	for _, p := range readers {
		var err error
		switch {
		case p.IsSender() && g.db.StateStore.IsMembership(ctx, roomID, p.UserID, event.MembershipJoin, event.MembershipInvite):
			err = p.RequestRoomKeyForEvent(ctx, evt)
		case !p.IsSender():
			_, err = p.SweepToDevice(ctx, false)
		}
		if err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Stringer("reader", p.UserID).Msg("Failed to fetch a room key the bridge is missing")
		}
	}
}
