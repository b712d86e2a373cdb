package keybundle

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"
)

// Withheld codes for sessions whose creator did not agree to share history. heirloom sends the
// stable code and accepts both.
const (
	CodeHistoryNotShared         = "m.history_not_shared"
	CodeHistoryNotSharedUnstable = "io.element.msc4268.history_not_shared"
	reasonHistoryNotShared       = "The sender disabled sharing encrypted history."
)

// IsHistoryNotShared reports whether code is MSC4268's withheld code, stable or unstable.
func IsHistoryNotShared(code string) bool {
	return code == CodeHistoryNotShared || code == CodeHistoryNotSharedUnstable
}

// RoomKey is one exported session in a bundle's room_keys: mautrix's key-export entry, which is
// the same wire format. MSC4268 omits the history flag and the forwarding chain in bundles; the
// builder leaves those pointers nil, so they are not written.
type RoomKey = crypto.ExportedSession

// SenderClaimedKeys holds the session creator's claimed Ed25519 key.
type SenderClaimedKeys = crypto.SenderClaimedKeys

// Withheld is one entry of a bundle's withheld list, shaped like m.room_key.withheld content. It is
// not mautrix's event.RoomKeyWithheldEventContent: that has no from_device, which the spec's
// m.room_key.withheld and rust-sdk's bundle entries carry.
type Withheld struct {
	Algorithm  id.Algorithm `json:"algorithm"`
	Code       string       `json:"code"`
	Reason     string       `json:"reason,omitempty"`
	FromDevice id.DeviceID  `json:"from_device,omitempty"`
	RoomID     id.RoomID    `json:"room_id"`
	SenderKey  id.SenderKey `json:"sender_key"`
	SessionID  id.SessionID `json:"session_id"`
}

// Session is an inbound megolm session as the builder sees it. Export is called only for sessions
// that go into room_keys, so withheld sessions are never decrypted from the store.
type Session struct {
	RoomID        id.RoomID
	SessionID     id.SessionID
	SenderKey     id.SenderKey
	SigningKey    id.Ed25519
	SharedHistory bool
	// Export returns the session key in export format at its first known index.
	Export func() (string, error)
}

// Counts says what a bundle holds.
type Counts struct {
	Sessions int `json:"sessions"`
	Withheld int `json:"withheld"`
}

// Empty reports whether the bundle would carry nothing at all.
func (c Counts) Empty() bool { return c.Sessions == 0 && c.Withheld == 0 }

// Builder writes a bundle's JSON as the sessions stream past it, so a bundle of any size is never
// held in memory: only the session IDs already written are kept, to write none twice. The
// withheld list is written first, then room_keys (JSON objects are unordered; rust-sdk, like
// every JSON parser, reads the fields in any order). So a caller adds every session without
// shared history and every withheld entry it passes on first, then the shared sessions, then
// calls Close; a withheld entry after the first key is an error (ErrWithheldAfterKeys).
//
// What goes where is Place's to say (MSC4268, as matrix-rust-sdk applies it); a session already
// written is never written again, in either list. Both arrays are always present, since rust-sdk
// fails to parse a bundle that lacks either.
type Builder struct {
	roomID  id.RoomID
	device  id.DeviceID
	w       *bufio.Writer
	seen    map[id.SessionID]struct{}
	counts  Counts
	left    map[string]int
	signing signingKeys
	scratch []byte
	phase   builderPhase
	err     error
}

type builderPhase int

const (
	phaseStart    builderPhase = iota // nothing written
	phaseWithheld                     // inside the withheld array
	phaseKeys                         // inside the room_keys array
)

// ErrWithheldAfterKeys means a withheld entry came after the first room key (see Builder).
var ErrWithheldAfterKeys = errors.New("withheld entries must be added before shared sessions")

// NewBuilder starts a bundle for roomID, built by device, written to w.
func NewBuilder(w io.Writer, roomID id.RoomID, device id.DeviceID) *Builder {
	return &Builder{roomID: roomID, device: device, w: bufio.NewWriterSize(w, 64<<10), seen: make(map[id.SessionID]struct{})}
}

func (b *Builder) write(s string) {
	if b.err == nil {
		_, b.err = b.w.WriteString(s)
	}
}

func (b *Builder) writeJSON(v any) {
	if b.err != nil {
		return
	}
	data, err := json.Marshal(v)
	if err != nil {
		b.err = err
		return
	}
	_, b.err = b.w.Write(data)
}

// AddSession adds one inbound session where Place puts it. It reports an error only for a failed
// write or export.
func (b *Builder) AddSession(s Session) error {
	return b.Add(Held{RoomID: s.RoomID, SessionID: s.SessionID, SenderKey: s.SenderKey, SigningKey: s.SigningKey,
		HasKey: true, SharedHistory: s.SharedHistory}, s.Export)
}

// AddWithheld passes on a withheld entry the builder's owner received in an earlier bundle, where
// Place puts it. It reports an error only for a failed write or an entry after the first key.
func (b *Builder) AddWithheld(w Withheld) error {
	return b.Add(Held{RoomID: w.RoomID, SessionID: w.SessionID, SenderKey: w.SenderKey, Code: w.Code, Reason: w.Reason,
		FromBundle: true}, nil)
}

// Add writes one row the store holds for the room where Place puts it, unless a row of the same
// session was written already; export is called only for a key. It reports an error only for a
// failed write or export, or a withheld entry after the first key.
func (b *Builder) Add(h Held, export func() (string, error)) error {
	placement, reason := place(b.roomID, h, b.signing.valid)
	if placement == Left {
		if reason != LeftOtherRoom && reason != LeftToDevice {
			if b.left == nil {
				b.left = map[string]int{}
			}
			b.left[reason]++
		}
		return nil
	}
	if _, dup := b.seen[h.SessionID]; dup {
		return nil
	}
	if placement == AsWithheld {
		b.seen[h.SessionID] = struct{}{}
		b.writeWithheld(withheldEntry(h, b.device))
		return b.err
	}
	key, err := export()
	if err != nil {
		return fmt.Errorf("failed to export session %s: %w", h.SessionID, err)
	}
	b.seen[h.SessionID] = struct{}{}
	switch b.phase {
	case phaseStart:
		b.write(`{"withheld":[],"room_keys":[`)
	case phaseWithheld:
		b.write(`],"room_keys":[`)
	default:
		b.write(",")
	}
	b.phase = phaseKeys
	b.writeRoomKey(h, key)
	b.counts.Sessions++
	return b.err
}

// writeRoomKey writes one room_keys entry by hand: the same JSON encoding/json writes for a
// RoomKey (field order included), at a fraction of the cost for 100,000 entries.
func (b *Builder) writeRoomKey(s Held, key string) {
	if b.err != nil {
		return
	}
	buf := b.scratch[:0]
	buf = append(buf, `{"algorithm":`...)
	buf = appendJSONString(buf, string(id.AlgorithmMegolmV1))
	buf = append(buf, `,"room_id":`...)
	buf = appendJSONString(buf, string(s.RoomID))
	buf = append(buf, `,"sender_key":`...)
	buf = appendJSONString(buf, string(s.SenderKey))
	buf = append(buf, `,"sender_claimed_keys":{"ed25519":`...)
	buf = appendJSONString(buf, string(s.SigningKey))
	buf = append(buf, `},"session_id":`...)
	buf = appendJSONString(buf, string(s.SessionID))
	buf = append(buf, `,"session_key":`...)
	buf = appendJSONString(buf, key)
	buf = append(buf, "}"...)
	b.scratch = buf
	_, b.err = b.w.Write(buf)
}

// jsonPlain marks the bytes encoding/json writes as they are: ASCII from space on, but for the
// quote, the backslash and the HTML characters it escapes.
var jsonPlain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return
}()

// appendJSONString appends s as a JSON string, escaped as encoding/json escapes it.
func appendJSONString(buf []byte, s string) []byte {
	const hex = "0123456789abcdef"
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if jsonPlain[c] {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			buf = append(buf, s[start:i]...)
			switch c {
			case '"', '\\':
				buf = append(buf, '\\', c)
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			case '\b':
				buf = append(buf, '\\', 'b')
			case '\f':
				buf = append(buf, '\\', 'f')
			default:
				buf = append(buf, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || r == '\u2028' || r == '\u2029' {
			buf = append(buf, s[start:i]...)
			if r == utf8.RuneError {
				buf = append(buf, `\ufffd`...)
			} else {
				buf = append(buf, '\\', 'u', '2', '0', '2', hex[r&0xF])
			}
			i += size
			start = i
			continue
		}
		i += size
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}

// writeWithheld writes one entry of the withheld list.
func (b *Builder) writeWithheld(w Withheld) {
	switch b.phase {
	case phaseKeys:
		if b.err == nil {
			b.err = ErrWithheldAfterKeys
		}
		return
	case phaseStart:
		b.write(`{"withheld":[`)
	default:
		b.write(",")
	}
	b.phase = phaseWithheld
	b.writeJSON(w)
	b.counts.Withheld++
}

// LeftOut returns how many rows of the room the builder left out, by reason: rows whose keys
// rust-sdk would not parse, and withheld entries heirloom does not pass on but for those of
// withheld messages that came over to-device (never passed on, by design).
func (b *Builder) LeftOut() map[string]int { return b.left }

// Close writes the closing brackets, and returns what the bundle holds.
func (b *Builder) Close() (Counts, error) {
	switch b.phase {
	case phaseStart:
		b.write(`{"withheld":[],"room_keys":[]}`)
	case phaseWithheld:
		b.write(`],"room_keys":[]}`)
	default:
		b.write("]}")
	}
	if b.err == nil {
		b.err = b.w.Flush()
	}
	return b.counts, b.err
}

// ErrMalformedBundle wraps every reason a bundle's JSON is refused as a whole.
var ErrMalformedBundle = errors.New("malformed key bundle")
