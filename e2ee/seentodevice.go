package e2ee

import (
	"crypto/sha256"
	"sync"

	"maunium.net/go/mautrix/event"
)

// recentSetSize is how many to-device messages a puppet remembers: a sweep reads at most a few
// pages of what the transaction stream pushed moments before.
const recentSetSize = 512

// recentSet is a bounded set of message digests; the oldest is forgotten first.
type recentSet struct {
	mu    sync.Mutex
	seen  map[[32]byte]struct{}
	order [][32]byte
}

// add records key and reports whether it was new.
func (s *recentSet) add(key [32]byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = make(map[[32]byte]struct{}, recentSetSize)
	}
	if _, ok := s.seen[key]; ok {
		return false
	}
	if len(s.order) == recentSetSize {
		delete(s.seen, s.order[0])
		s.order = s.order[1:]
	}
	s.seen[key] = struct{}{}
	s.order = append(s.order, key)
	return true
}

// toDeviceKey is the digest of an encrypted to-device message as it arrived: sender and content.
func toDeviceKey(evt *event.Event) [32]byte {
	h := sha256.New()
	h.Write([]byte(evt.Sender))
	h.Write([]byte{0})
	h.Write(evt.Content.VeryRaw)
	var out [32]byte
	h.Sum(out[:0])
	return out
}
