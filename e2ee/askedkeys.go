package e2ee

import (
	"sync"
	"time"

	"maunium.net/go/mautrix/id"
)

// A forwarded room key is someone's word: the session in export format, a ratchet nobody signed.
// heirloom's bot and the appservice's sender take one only in answer to a key request they sent
// (requestRoomKeyFromSender), from the very device they asked: anyone else's forward, or one
// nobody asked for, could park a junk ratchet under a session ID seen in a room and block the
// creator's own key.

const (
	// askedKeyTTL is how long a key request waits for its answer: a device online answers within
	// seconds, one that comes back later within the hour.
	askedKeyTTL = time.Hour
	// askedKeysMax bounds the requests a puppet remembers; past it, the oldest is forgotten.
	askedKeysMax = 4096
	// askedProofMax bounds the ciphertext a request keeps to check its answer with (askedOf.proof):
	// a longer one is not kept, and that request's answer is taken unchecked.
	askedProofMax = 16 << 10
)

// askedKey is what a key request asked for: a session of a room, from the device with senderKey.
// Requests for the same session ID to two devices (anyone can name a session ID he saw in the
// room, under his own device's key) are two requests: one never replaces the other.
type askedKey struct {
	room      id.RoomID
	session   id.SessionID
	senderKey id.SenderKey
}

// askedOf is whom a key request asked, what it must decrypt, and until when its answer is taken.
type askedOf struct {
	user id.UserID
	// proof is the megolm ciphertext of the event the request is for (nil: not known): a forward
	// answers it only if its ratchet decrypts that event (receiveOwnForward).
	proof []byte
	until time.Time
}

// askedKeys holds a puppet's key requests that wait for their answer.
type askedKeys struct {
	mu      sync.Mutex
	pending map[askedKey]askedOf
}

// add records a request for the room's session to user's device with senderKey, for the event
// whose megolm ciphertext is proof (nil if not known).
func (a *askedKeys) add(room id.RoomID, session id.SessionID, user id.UserID, senderKey id.SenderKey, proof []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	if a.pending == nil {
		a.pending = make(map[askedKey]askedOf)
	}
	if len(a.pending) >= askedKeysMax {
		a.forgetOldest(now)
	}
	if len(proof) > askedProofMax {
		proof = nil
	}
	a.pending[askedKey{room, session, senderKey}] = askedOf{user: user, proof: proof, until: now.Add(askedKeyTTL)}
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
// a request that waits, and if so takes the request off the list and returns what the forward
// must decrypt (nil: nothing known).
func (a *askedKeys) answer(room id.RoomID, session id.SessionID, user id.UserID, senderKey id.SenderKey) ([]byte, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := askedKey{room, session, senderKey}
	asked, ok := a.pending[k]
	if !ok || asked.user != user {
		return nil, false
	}
	delete(a.pending, k)
	return asked.proof, time.Now().Before(asked.until)
}
