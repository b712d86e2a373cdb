package e2ee

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Bounds of the room keys held until a join: per sender in a puppet's room, per puppet and room,
// and in all, in number and in bytes. A held key keeps only what its checks read again at the join
// (heldKey), never the Olm envelope as it arrived, whose size the sender chooses up to the
// homeserver's 64 KiB to-device limit.
const (
	heldKeysPerSender = 16
	heldKeysPerRoom   = 256
	heldKeysTotal     = 4096
	heldBytesPerRoom  = 512 << 10
	heldBytesTotal    = 8 << 20
	heldKeyMaxAge     = 24 * time.Hour
	// heldKeyMaxText bounds each text a held key keeps: a megolm session key (in the format an
	// m.room_key carries) is 306 characters, user and device IDs at most 255 bytes.
	heldKeyMaxText = 512
	// heldKeyOverhead is what a held key costs besides its texts: the structs, pointers and map
	// slots, rounded up.
	heldKeyOverhead = 512
)

// heldKey is a room key a puppet received for a room it is only invited to, from a sender whose
// membership nobody can tell it yet: the fields of the Olm message and the m.room_key that
// receiveRoomKey reads, copied out of them.
type heldKey struct {
	sender     id.UserID
	senderKey  id.SenderKey
	signingKey id.Ed25519
	device     *id.Device
	content    RoomKeyContent
	at         time.Time
	size       int
}

type puppetRoom struct {
	puppet id.UserID
	room   id.RoomID
}

// newHeldKey copies what a held key keeps; false if one of its texts is longer than any valid one.
func newHeldKey(evt *crypto.DecryptedOlmEvent, content *RoomKeyContent) (heldKey, bool) {
	k := heldKey{sender: evt.Sender, senderKey: evt.SenderKey, signingKey: evt.Keys.Ed25519, at: time.Now(),
		content: RoomKeyContent{RoomKeyEventContent: event.RoomKeyEventContent{Algorithm: content.Algorithm,
			RoomID: content.RoomID, SessionID: content.SessionID, SessionKey: content.SessionKey,
			IsScheduled: content.IsScheduled}, HistoryShared: content.HistoryShared}}
	k.content.SharedHistory = &k.content.HistoryShared
	texts := []string{string(k.sender), string(k.senderKey), string(k.signingKey), string(content.Algorithm),
		string(content.RoomID), string(content.SessionID), content.SessionKey}
	if d := evt.SenderDevice; d != nil {
		k.device = &id.Device{UserID: d.UserID, DeviceID: d.DeviceID, IdentityKey: d.IdentityKey, SigningKey: d.SigningKey}
		texts = append(texts, string(d.UserID), string(d.DeviceID), string(d.IdentityKey), string(d.SigningKey))
	}
	k.size = heldKeyOverhead
	for _, s := range texts {
		if len(s) > heldKeyMaxText {
			return heldKey{}, false
		}
		k.size += len(s)
	}
	return k, true
}

// event is the Olm message as receiveRoomKey reads it.
func (k *heldKey) event() *crypto.DecryptedOlmEvent {
	return &crypto.DecryptedOlmEvent{Sender: k.sender, SenderKey: k.senderKey, SenderDevice: k.device,
		Keys: crypto.OlmEventKeys{Ed25519: k.signingKey}}
}

// heldKeys keeps such keys in memory until the puppet joins the room, when its sender's
// membership can be asked again (ReleaseHeldKeys): the key of a message sent while the puppet is
// invited is sent only then, and would otherwise be lost. A restart forgets them, as it forgets a
// message the homeserver never delivered.
//
// When a bound is reached, a new key takes the place of a key of whoever holds the most (evict):
// senders who hold fewer keys are never pushed out by one who holds more, and senders are counted
// per homeserver group first (serverGroup), so that accounts made by the dozen on one server, and
// server names made by the hundred on one host, share one part.
type heldKeys struct {
	mu    sync.Mutex
	rooms map[puppetRoom][]heldKey
	total int
	bytes int
}

// hold keeps a key until the puppet joins; it reports false when the key is not kept.
func (h *heldKeys) hold(puppet id.UserID, evt *crypto.DecryptedOlmEvent, content *RoomKeyContent) bool {
	k, ok := newHeldKey(evt, content)
	if !ok {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	key := puppetRoom{puppet, content.RoomID}
	if h.fromSender(key, k.sender) >= heldKeysPerSender {
		return false
	}
	if h.totalFull(k.size) {
		h.dropStale() // keys of rooms a puppet never joined
	}
	for {
		switch {
		case h.roomFull(key, k.size):
			ok = h.evict(k.sender, &key)
		case h.totalFull(k.size):
			ok = h.evict(k.sender, nil)
		default:
			h.add(key, k)
			return true
		}
		if !ok {
			return false
		}
	}
}

func (h *heldKeys) add(key puppetRoom, k heldKey) {
	if h.rooms == nil {
		h.rooms = map[puppetRoom][]heldKey{}
	}
	h.rooms[key] = append(h.rooms[key], k)
	h.total++
	h.bytes += k.size
}

func (h *heldKeys) fromSender(key puppetRoom, sender id.UserID) int {
	n := 0
	for i := range h.rooms[key] {
		if h.rooms[key][i].sender == sender {
			n++
		}
	}
	return n
}

func (h *heldKeys) roomFull(key puppetRoom, size int) bool {
	bytes := size
	for i := range h.rooms[key] {
		bytes += h.rooms[key][i].size
	}
	return len(h.rooms[key]) >= heldKeysPerRoom || bytes > heldBytesPerRoom
}

func (h *heldKeys) totalFull(size int) bool {
	return h.total >= heldKeysTotal || h.bytes+size > heldBytesTotal
}

// dropStale forgets every key held for longer than heldKeyMaxAge.
func (h *heldKeys) dropStale() {
	for key, keys := range h.rooms {
		fresh := keys[:0]
		for _, k := range keys {
			if time.Since(k.at) < heldKeyMaxAge {
				fresh = append(fresh, k)
			} else {
				h.total--
				h.bytes -= k.size
			}
		}
		if len(fresh) == 0 {
			delete(h.rooms, key)
		} else {
			h.rooms[key] = fresh
		}
	}
}

// holdsFor reports whether any key is held for the puppet in the room.
func (h *heldKeys) holdsFor(puppet id.UserID, roomID id.RoomID) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.rooms[puppetRoom{puppet, roomID}]) > 0
}

// take removes and returns the keys held for the puppet in the room that are not too old.
func (h *heldKeys) take(puppet id.UserID, roomID id.RoomID) []heldKey {
	h.mu.Lock()
	defer h.mu.Unlock()
	key := puppetRoom{puppet, roomID}
	keys := h.rooms[key]
	delete(h.rooms, key)
	fresh := keys[:0]
	for _, k := range keys {
		h.total--
		h.bytes -= k.size
		if time.Since(k.at) < heldKeyMaxAge {
			fresh = append(fresh, k)
		}
	}
	return fresh
}

// evict makes room for a key of sender by dropping one key of whoever holds the most in scope (a
// puppet's room, or every room if nil): the homeserver group (serverGroup) whose users hold the
// most keys, then its user who holds the most, whose oldest key goes; among those who hold as
// many, the one whose oldest key is oldest. It does so only if they hold more than the sender's
// group (or, within one group, the sender) does: a sender never pushes out one who holds fewer or
// as many, and a sender who holds nothing, a member's first key, always gets in.
func (h *heldKeys) evict(sender id.UserID, scope *puppetRoom) bool {
	servers, users := holdings[string]{}, holdings[id.UserID]{}
	h.each(scope, func(_ puppetRoom, k *heldKey) {
		servers.add(serverGroup(k.sender), k.at)
		users.add(k.sender, k.at)
	})
	own := serverGroup(sender)
	top := servers.largest(func(string) bool { return true })
	if top != own && servers[top].n <= servers[own].n {
		return false
	}
	victim := users.largest(func(u id.UserID) bool { return serverGroup(u) == top })
	if top == own && users[victim].n <= users[sender].n {
		return false
	}
	h.dropOldest(scope, victim)
	return true
}

// holding is how many keys a holder holds, and when its oldest came.
type holding struct {
	n      int
	oldest time.Time
}

// holdings counts the keys of each holder.
type holdings[T ~string] map[T]holding

func (hs holdings[T]) add(name T, at time.Time) {
	h := hs[name]
	if h.n == 0 || at.Before(h.oldest) {
		h.oldest = at
	}
	h.n++
	hs[name] = h
}

// largest returns the holder among those that count that holds the most; among equals, the one
// whose oldest key is oldest, then the first in order.
func (hs holdings[T]) largest(among func(T) bool) T {
	var best T
	found := false
	for name, h := range hs {
		if !among(name) {
			continue
		}
		b := hs[best]
		if !found || h.n > b.n || (h.n == b.n && (h.oldest.Before(b.oldest) || (h.oldest.Equal(b.oldest) && name < best))) {
			best, found = name, true
		}
	}
	return best
}

// each calls fn with every key held in scope (a puppet's room, or every room if nil).
func (h *heldKeys) each(scope *puppetRoom, fn func(puppetRoom, *heldKey)) {
	for key, keys := range h.rooms {
		if scope != nil && key != *scope {
			continue
		}
		for i := range keys {
			fn(key, &keys[i])
		}
	}
}

// dropOldest forgets the oldest key of sender in scope.
func (h *heldKeys) dropOldest(scope *puppetRoom, sender id.UserID) {
	var at puppetRoom
	index := -1
	var oldest time.Time
	h.each(scope, func(key puppetRoom, k *heldKey) {
		if k.sender == sender && (index < 0 || k.at.Before(oldest)) {
			at, oldest = key, k.at
			index = indexOf(h.rooms[key], k)
		}
	})
	if index < 0 {
		return
	}
	keys := h.rooms[at]
	h.total--
	h.bytes -= keys[index].size
	keys = append(keys[:index], keys[index+1:]...)
	if len(keys) == 0 {
		delete(h.rooms, at)
	} else {
		h.rooms[at] = keys
	}
}

// indexOf is the index of k in keys.
func indexOf(keys []heldKey, k *heldKey) int {
	for i := range keys {
		if &keys[i] == k {
			return i
		}
	}
	return -1
}

// serverGroup is what held keys are counted by first: the homeserver of a user ID, as one party
// could own many of it. A server name is cheap to multiply on one host (every port, every
// subdomain, every address of a network), so it is counted without its port, by its last two
// labels (evil.example for a.evil.example:8448), and an IP literal by its network (a /24, a /48).
// Servers that share a group only share its part of the bound.
func serverGroup(user id.UserID) string {
	_, server, err := user.Parse()
	if err != nil {
		return string(user)
	}
	host := server
	if h, _, err := net.SplitHostPort(server); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if addr, err := netip.ParseAddr(host); err == nil {
		bits := 48
		if addr.Is4() {
			bits = 24
		}
		prefix, _ := addr.Prefix(bits)
		return prefix.String()
	}
	labels := strings.Split(strings.ToLower(strings.TrimSuffix(host, ".")), ".")
	if len(labels) > 2 {
		labels = labels[len(labels)-2:]
	}
	return strings.Join(labels, ".")
}
