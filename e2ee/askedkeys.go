package e2ee

import (
	"sync"
	"time"

	"maunium.net/go/mautrix/id"
)

// A forwarded room key is someone's word: the session in export format, a ratchet nobody signed.
// heirloom's bot and the appservice's sender take one only in answer to a key request they sent
// (RequestRoomKeyFromSender), from the very device they asked: anyone else's forward, or one
// nobody asked for, could park a junk ratchet under a session ID seen in a room and block the
// creator's own key.

const (
	// askedKeyTTL is how long a key request waits for its answer: a device online answers within
	// seconds, one that comes back later within the hour.
	askedKeyTTL = time.Hour
	// askedKeysMax bounds the requests a puppet remembers; past it, the oldest is forgotten.
	askedKeysMax = 4096
)

// askedKey is what a key request asked for: a session of a room.
type askedKey struct {
	room    id.RoomID
	session id.SessionID
}

// askedOf is whom a key request asked, and until when its answer is taken.
type askedOf struct {
	user      id.UserID
	senderKey id.SenderKey
	until     time.Time
}

// askedKeys holds a puppet's key requests that wait for their answer.
type askedKeys struct {
	mu      sync.Mutex
	pending map[askedKey]askedOf
}

// add records a request for the room's session to user's device with senderKey.
func (a *askedKeys) add(room id.RoomID, session id.SessionID, user id.UserID, senderKey id.SenderKey) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	if a.pending == nil {
		a.pending = make(map[askedKey]askedOf)
	}
	if len(a.pending) >= askedKeysMax {
		a.forgetOldest(now)
	}
	a.pending[askedKey{room, session}] = askedOf{user: user, senderKey: senderKey, until: now.Add(askedKeyTTL)}
}

// forgetOldest drops every expired request, or if none has expired the one asked first.
func (a *askedKeys) forgetOldest(now time.Time) {
	var oldest askedKey
	var oldestUntil time.Time
	for k, v := range a.pending {
		if now.After(v.until) {
			delete(a.pending, k)
		} else if oldestUntil.IsZero() || v.until.Before(oldestUntil) {
			oldest, oldestUntil = k, v.until
		}
	}
	if len(a.pending) >= askedKeysMax {
		delete(a.pending, oldest)
	}
}

// answer reports whether a forward of the room's session from user's device with senderKey answers
// a request that waits, and if so takes the request off the list.
func (a *askedKeys) answer(room id.RoomID, session id.SessionID, user id.UserID, senderKey id.SenderKey) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := askedKey{room, session}
	asked, ok := a.pending[k]
	if !ok || asked.user != user || asked.senderKey != senderKey {
		return false
	}
	delete(a.pending, k)
	return time.Now().Before(asked.until)
}
