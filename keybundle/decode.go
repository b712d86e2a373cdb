package keybundle

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unsafe"

	"maunium.net/go/mautrix/id"
)

// Decode reads a bundle's JSON from r, calling onKey for each room key and onWithheld for each
// withheld entry as they stream past, so a large bundle is never held whole. An entry that does not
// parse is counted in skipped and the rest go on; a document that is not a bundle (not an object,
// either array missing or not an array) fails with ErrMalformedBundle.
//
// Each entry means exactly what encoding/json makes of it (json.Unmarshal into RoomKey or
// Withheld: unknown fields ignored, names matched without regard to case, the last of duplicate
// fields kept, escapes decoded, invalid UTF-8 replaced). Entries in the form every implementation
// writes (the known fields, each once, with plain ASCII strings) are read by a parser of that
// form alone, which is several times cheaper for a 100,000-entry bundle; anything else is handed
// to json.Unmarshal. FuzzDecodeMatchesEncodingJSON holds Decode to what it did with
// encoding/json's streaming decoder alone.
func Decode(r io.Reader, onKey func(RoomKey) error, onWithheld func(Withheld) error) (skipped int, err error) {
	s := &jsonStream{r: r, buf: make([]byte, 0, 64<<10)}
	if err = s.expect('{'); err != nil {
		return 0, err
	}
	var sawKeys, sawWithheld bool
	for first := true; ; first = false {
		c, err := s.peek()
		if err != nil {
			return skipped, s.malformed(err)
		}
		if c == '}' {
			s.pos++
			break
		}
		if !first {
			if c != ',' {
				return skipped, fmt.Errorf("%w: expected ',' or '}' after an object member", ErrMalformedBundle)
			}
			s.pos++
		}
		name, err := s.objectKey()
		if err != nil {
			return skipped, err
		}
		switch name {
		case "room_keys":
			sawKeys = true
			err = decodeEntries(s, &skipped, parseRoomKey, onKey)
		case "withheld":
			sawWithheld = true
			err = decodeEntries(s, &skipped, parseWithheld, onWithheld)
		default:
			var raw []byte
			if raw, err = s.value(); err == nil && !json.Valid(raw) {
				err = fmt.Errorf("%w: invalid JSON in %q", ErrMalformedBundle, name)
			}
		}
		if err != nil {
			return skipped, err
		}
	}
	if _, err = s.peek(); err != io.EOF {
		return skipped, fmt.Errorf("%w: data after the bundle object", ErrMalformedBundle)
	}
	if !sawKeys || !sawWithheld {
		return skipped, fmt.Errorf("%w: room_keys and withheld must both be present", ErrMalformedBundle)
	}
	return skipped, nil
}

// decodeEntries reads one of the bundle's arrays, handing each entry with a session ID to each.
func decodeEntries[T RoomKey | Withheld](s *jsonStream, skipped *int, parse func([]byte, *T) bool, each func(T) error) error {
	if err := s.expect('['); err != nil {
		return err
	}
	for first := true; ; first = false {
		c, err := s.peek()
		if err != nil {
			return s.malformed(err)
		}
		if c == ']' {
			s.pos++
			return nil
		}
		if !first {
			if c != ',' {
				return fmt.Errorf("%w: expected ',' or ']' after an array element", ErrMalformedBundle)
			}
			s.pos++
		}
		raw, err := s.value()
		if err != nil {
			return err
		}
		var item T
		if !parse(raw, &item) {
			item = *new(T)
			if err = json.Unmarshal(raw, &item); err != nil {
				// A field of the wrong type is this entry's fault; broken JSON is the bundle's.
				var typeErr *json.UnmarshalTypeError
				if !errors.As(err, &typeErr) {
					return fmt.Errorf("%w: %w", ErrMalformedBundle, err)
				}
				*skipped++
				continue
			}
		}
		if sessionID(item) == "" {
			*skipped++ // null, {} or no session_id: nothing to import or pass on
			continue
		}
		if err = each(item); err != nil {
			return err
		}
	}
}

func sessionID(entry any) id.SessionID {
	switch e := entry.(type) {
	case RoomKey:
		return e.SessionID
	case Withheld:
		return e.SessionID
	}
	return ""
}

// maxNesting is encoding/json's limit on nested arrays and objects within one value.
const maxNesting = 10000

// jsonStream reads JSON values from a reader through a buffer: buf[pos:] is what is read and not
// yet consumed. A value is returned whole, as a slice of buf valid until the next read.
type jsonStream struct {
	r   io.Reader
	buf []byte
	pos int
	err error // the reader's, once it failed or ended
}

// more reads more input into buf, keeping buf[pos:]; it returns false at the end or an error.
func (s *jsonStream) more() bool {
	if s.err != nil {
		return false
	}
	if s.pos > 0 {
		n := copy(s.buf, s.buf[s.pos:])
		s.buf, s.pos = s.buf[:n], 0
	}
	if len(s.buf) == cap(s.buf) {
		s.buf = append(s.buf, make([]byte, cap(s.buf))...)[:len(s.buf)]
	}
	n, err := s.r.Read(s.buf[len(s.buf):cap(s.buf)])
	s.buf = s.buf[:len(s.buf)+n]
	if err != nil {
		s.err = err
	}
	return n > 0 || err == nil
}

// peek skips whitespace and returns the next byte without consuming it (io.EOF at the end).
func (s *jsonStream) peek() (byte, error) {
	for {
		for ; s.pos < len(s.buf); s.pos++ {
			if c := s.buf[s.pos]; !isSpace(c) {
				return c, nil
			}
		}
		if !s.more() {
			return 0, s.err
		}
	}
}

// malformed wraps a read error (an early end included) as the bundle's.
func (s *jsonStream) malformed(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%w: %w", ErrMalformedBundle, err)
}

// expect consumes the next byte, which must be c.
func (s *jsonStream) expect(c byte) error {
	got, err := s.peek()
	if err != nil {
		return s.malformed(err)
	}
	if got != c {
		return fmt.Errorf("%w: expected %q", ErrMalformedBundle, c)
	}
	s.pos++
	return nil
}

// objectKey reads an object member's name and its colon.
func (s *jsonStream) objectKey() (string, error) {
	raw, err := s.value()
	if err != nil {
		return "", err
	}
	if raw[0] != '"' {
		return "", fmt.Errorf("%w: an object member's name must be a string", ErrMalformedBundle)
	}
	name, ok := plainString(raw)
	if !ok {
		if err = json.Unmarshal(raw, &name); err != nil {
			return "", fmt.Errorf("%w: %w", ErrMalformedBundle, err)
		}
	}
	if err = s.expect(':'); err != nil {
		return "", err
	}
	return name, nil
}

// value returns the next JSON value whole: its extent, found by matching brackets outside strings
// (whether it is valid JSON is for json.Valid or json.Unmarshal to say).
func (s *jsonStream) value() ([]byte, error) {
	if _, err := s.peek(); err != nil {
		return nil, s.malformed(err)
	}
	start := s.pos
	i := start // the scan position, kept relative to start across reads
	depth, inString, escaped := 0, false, false
	for {
		for ; s.pos+(i-start) < len(s.buf); i++ {
			c := s.buf[s.pos+(i-start)]
			if inString && !escaped && c != '"' && c != '\\' {
				// Most of a bundle is long strings: skip to the next quote or backslash at once.
				rest := s.buf[s.pos+(i-start):]
				n := bytes.IndexByte(rest, '"')
				if n < 0 {
					n = len(rest)
				}
				if b := bytes.IndexByte(rest[:n], '\\'); b >= 0 {
					n = b
				}
				i += n - 1
				continue
			}
			switch {
			case inString:
				switch {
				case escaped:
					escaped = false
				case c == '\\':
					escaped = true
				case c == '"':
					inString = false
					if depth == 0 {
						return s.take(i - start + 1), nil
					}
				}
			case depth == 0 && (c == ',' || c == ':' || c == '}' || c == ']' || isSpace(c)):
				// The end of a number or literal (or nothing where a value belongs).
				if i == start {
					return nil, fmt.Errorf("%w: unexpected %q", ErrMalformedBundle, c)
				}
				return s.take(i - start), nil
			case c == '"':
				inString = true
			case c == '{' || c == '[':
				if depth++; depth > maxNesting {
					return nil, fmt.Errorf("%w: exceeded max depth", ErrMalformedBundle)
				}
			case c == '}' || c == ']':
				if depth--; depth == 0 {
					return s.take(i - start + 1), nil
				}
			}
		}
		offset := i - start
		if !s.more() {
			if s.err == io.EOF && depth == 0 && !inString && offset > 0 {
				return s.take(offset), nil // a number or literal at the very end
			}
			return nil, s.malformed(s.err)
		}
		start = s.pos
		i = start + offset
	}
}

// take consumes and returns the next n bytes.
func (s *jsonStream) take(n int) []byte {
	v := s.buf[s.pos : s.pos+n]
	s.pos += n
	return v
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// plainString returns the content of a JSON string of printable ASCII without escapes: what
// encoding/json decodes such a string to, byte for byte. It reports false for anything else.
func plainString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	inner := raw[1 : len(raw)-1]
	for _, c := range inner {
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return "", false
		}
	}
	return string(inner), true
}

// objectParser reads one JSON object in the plain form: members named among the known ones, each
// at most once, whose values are plain strings (or, for sender_claimed_keys, an object of them).
// The strings are cut out of one copy of the entry (text): an entry's fields live and die together,
// except the session ID, which a caller keeps longer and gets a copy of its own.
type objectParser struct {
	b    []byte
	text string // b as a string, made on the first string read
	pos  int
	// member's state: whether the object was opened, the bits of the members read, and, once
	// member reports no more, whether the object was well formed with nothing after it.
	opened bool
	seen   uint8
	valid  bool
}

func (p *objectParser) space() {
	for p.pos < len(p.b) && isSpace(p.b[p.pos]) {
		p.pos++
	}
}

// member reads the name of the object's next member. It reports false at the object's end and at
// anything malformed; valid then says which (a well-formed object with nothing but whitespace
// after it).
func (p *objectParser) member() (string, bool) {
	if !p.opened {
		p.opened = true
		if !p.byte('{') {
			return "", false
		}
		if p.byte('}') {
			p.valid = p.end()
			return "", false
		}
	} else if more, ok := p.next(); !more {
		p.valid = ok && p.end()
		return "", false
	}
	return p.name()
}

// once marks a member's bit, and reports false if the member came before (an entry naming one
// twice goes to json.Unmarshal).
func (p *objectParser) once(bit uint8) bool {
	if p.seen&bit != 0 {
		return false
	}
	p.seen |= bit
	return true
}

// byte consumes c, after whitespace.
func (p *objectParser) byte(c byte) bool {
	p.space()
	if p.pos < len(p.b) && p.b[p.pos] == c {
		p.pos++
		return true
	}
	return false
}

// span reads a plain string after whitespace, and returns where its content starts and ends.
func (p *objectParser) span() (int, int, bool) {
	p.space()
	if p.pos >= len(p.b) || p.b[p.pos] != '"' {
		return 0, 0, false
	}
	for i := p.pos + 1; i < len(p.b); i++ {
		switch c := p.b[i]; {
		case c == '"':
			start := p.pos + 1
			p.pos = i + 1
			return start, i, true
		case c < 0x20 || c >= 0x7f || c == '\\':
			return 0, 0, false
		}
	}
	return 0, 0, false
}

// str reads a plain string (a member's value).
func (p *objectParser) str() (string, bool) {
	start, end, ok := p.span()
	if !ok {
		return "", false
	}
	if p.text == "" {
		p.text = string(p.b)
	}
	return p.text[start:end], true
}

// name reads a member's name and its colon: the name is only compared, never kept.
func (p *objectParser) name() (string, bool) {
	start, end, ok := p.span()
	if !ok || !p.byte(':') {
		return "", false
	}
	return unsafeString(p.b[start:end]), true
}

// next reads what follows a member: true if another member follows, false at the object's end;
// ok is false for anything else.
func (p *objectParser) next() (more, ok bool) {
	if p.byte(',') {
		return true, true
	}
	return false, p.byte('}')
}

// end reports whether nothing but whitespace is left.
func (p *objectParser) end() bool {
	p.space()
	return p.pos == len(p.b)
}

// parseRoomKey reads a room_keys entry in the plain form into key; false sends it to json.Unmarshal.
func parseRoomKey(raw []byte, key *RoomKey) bool {
	p := objectParser{b: raw}
	for name, ok := p.member(); ok; name, ok = p.member() {
		var bit uint8
		var v string
		switch name {
		case "algorithm":
			bit = 1
			v, ok = p.str()
			key.Algorithm = id.Algorithm(v)
		case "room_id":
			bit = 2
			v, ok = p.str()
			key.RoomID = id.RoomID(v)
		case "sender_key":
			bit = 4
			v, ok = p.str()
			key.SenderKey = id.SenderKey(v)
		case "session_id":
			bit = 8
			v, ok = p.str()
			key.SessionID = id.SessionID(strings.Clone(v))
		case "session_key":
			bit = 16
			v, ok = p.str()
			key.SessionKey = v
		case "sender_claimed_keys":
			bit = 32
			if !p.byte('{') {
				return false
			}
			if p.byte('}') {
				break
			}
			var inner string
			if inner, ok = p.name(); !ok || inner != "ed25519" {
				return false
			}
			v, ok = p.str()
			key.SenderClaimedKeys.Ed25519 = id.Ed25519(v)
			ok = ok && p.byte('}')
		default:
			return false
		}
		if !ok || !p.once(bit) {
			return false
		}
	}
	return p.valid
}

// parseWithheld reads a withheld entry in the plain form into w; false sends it to json.Unmarshal.
// It walks the members as parseRoomKey does (objectParser.member), not through a loop calling back
// per field: that would move the parser to the heap, an allocation per entry (BenchmarkDecode:
// 29,040 → 39,040 for 10,000 entries).
func parseWithheld(raw []byte, w *Withheld) bool {
	p := objectParser{b: raw}
	for name, ok := p.member(); ok; name, ok = p.member() {
		var field *string
		var bit uint8
		switch name {
		case "algorithm":
			field, bit = (*string)(&w.Algorithm), 1
		case "code":
			field, bit = &w.Code, 2
		case "reason":
			field, bit = &w.Reason, 4
		case "from_device":
			field, bit = (*string)(&w.FromDevice), 8
		case "room_id":
			field, bit = (*string)(&w.RoomID), 16
		case "sender_key":
			field, bit = (*string)(&w.SenderKey), 32
		case "session_id":
			field, bit = (*string)(&w.SessionID), 64
		default:
			return false
		}
		if !p.once(bit) {
			return false
		}
		if *field, ok = p.str(); !ok {
			return false
		}
	}
	return p.valid
}

// unsafeString views b as a string without copying: only for a comparison while b is unchanged.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
