package keybundle

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"

	"maunium.net/go/mautrix/id"
)

// referenceDecode is Decode as it was written on encoding/json's streaming decoder alone: the
// meaning Decode must keep, whatever it reads faster.
func referenceDecode(r io.Reader, onKey func(RoomKey) error, onWithheld func(Withheld) error) (skipped int, err error) {
	dec := json.NewDecoder(r)
	if err = referenceExpectDelim(dec, '{'); err != nil {
		return 0, err
	}
	var sawKeys, sawWithheld bool
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return skipped, fmt.Errorf("%w: %w", ErrMalformedBundle, err)
		}
		name, _ := tok.(string)
		switch name {
		case "room_keys":
			sawKeys = true
			err = referenceDecodeArray(dec, &skipped, onKey)
		case "withheld":
			sawWithheld = true
			err = referenceDecodeArray(dec, &skipped, onWithheld)
		default:
			var ignored json.RawMessage
			if err = dec.Decode(&ignored); err != nil {
				err = fmt.Errorf("%w: %w", ErrMalformedBundle, err)
			}
		}
		if err != nil {
			return skipped, err
		}
	}
	if err = referenceExpectDelim(dec, '}'); err != nil {
		return skipped, err
	}
	if _, err = dec.Token(); err != io.EOF {
		return skipped, fmt.Errorf("%w: data after the bundle object", ErrMalformedBundle)
	}
	if !sawKeys || !sawWithheld {
		return skipped, fmt.Errorf("%w: room_keys and withheld must both be present", ErrMalformedBundle)
	}
	return skipped, nil
}

func referenceExpectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrMalformedBundle, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("%w: expected %q", ErrMalformedBundle, want)
	}
	return nil
}

func referenceDecodeArray[T any](dec *json.Decoder, skipped *int, each func(T) error) error {
	if err := referenceExpectDelim(dec, '['); err != nil {
		return err
	}
	for dec.More() {
		// Decoding straight into the entry consumes the whole value even when a field has the
		// wrong type (that is reported as an UnmarshalTypeError); only broken JSON stops here.
		var item T
		if err := dec.Decode(&item); err != nil {
			var typeErr *json.UnmarshalTypeError
			if !errors.As(err, &typeErr) {
				return fmt.Errorf("%w: %w", ErrMalformedBundle, err)
			}
			*skipped++
			continue
		}
		if sessionID(item) == "" {
			*skipped++ // null, {} or no session_id: nothing to import or pass on
			continue
		}
		if err := each(item); err != nil {
			return err
		}
	}
	return referenceExpectDelim(dec, ']')
}

type decodedEntries struct {
	keys     []RoomKey
	withheld []Withheld
	skipped  int
	err      error
}

func decodeWith(decode func(io.Reader, func(RoomKey) error, func(Withheld) error) (int, error), r io.Reader) decodedEntries {
	var out decodedEntries
	out.skipped, out.err = decode(r,
		func(k RoomKey) error { out.keys = append(out.keys, k); return nil },
		func(w Withheld) error { out.withheld = append(out.withheld, w); return nil })
	return out
}

// oneByteReader returns its input one byte per Read, so every value straddles reads.
type oneByteReader struct{ b []byte }

func (r *oneByteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	p[0], r.b = r.b[0], r.b[1:]
	return 1, nil
}

// requireSameDecode fails if Decode and referenceDecode disagree on the input: both accept it with
// the same entries and the same count of skipped ones, or both refuse it, as a bundle's fault
// (ErrMalformedBundle) alike.
func requireSameDecode(t *testing.T, data []byte) {
	t.Helper()
	want := decodeWith(referenceDecode, bytes.NewReader(data))
	for _, r := range []io.Reader{bytes.NewReader(data), &oneByteReader{data}} {
		got := decodeWith(Decode, r)
		if (want.err == nil) != (got.err == nil) {
			t.Fatalf("input %q: encoding/json says %v, Decode says %v", data, want.err, got.err)
		}
		if want.err != nil {
			if errors.Is(want.err, ErrMalformedBundle) != errors.Is(got.err, ErrMalformedBundle) {
				t.Fatalf("input %q: encoding/json says %v, Decode says %v", data, want.err, got.err)
			}
			continue
		}
		if want.skipped != got.skipped || !reflect.DeepEqual(want.keys, got.keys) || !reflect.DeepEqual(want.withheld, got.withheld) {
			t.Fatalf("input %q:\nencoding/json: %+v\nDecode:        %+v", data, want, got)
		}
	}
}

// decodeCases are bundles in every form the fast parser takes or hands on: the plain form, and
// every way an entry can leave it (case, duplicates, escapes, non-ASCII, nulls, wrong types,
// unknown and optional fields, whitespace), and broken JSON at each level.
var decodeCases = []string{
	rustBundleForTest,
	`{"room_keys":[],"withheld":[]}`,
	` {"withheld" : [ ] , "room_keys" : [ {"session_id" : "a" , "sender_claimed_keys" : { "ed25519" : "e" } } ] } ` + "\n\t",
	`{"room_keys":[{"session_id":"a","SESSION_ID":"b"}],"withheld":[]}`,
	`{"room_keys":[{"Session_Id":"a"}],"withheld":[]}`,
	`{"room_keys":[{"session_id":"a","session_id":"b"}],"withheld":[]}`,
	`{"room_keys":[{"session_id":"a","sender_claimed_keys":{"ed25519":"x"},"sender_claimed_keys":{"other":"y"}}],"withheld":[]}`,
	`{"room_keys":[{"session_id":"a","sender_claimed_keys":{"ed25519":"x","ed25519":"y"}}],"withheld":[]}`,
	`{"room_keys":[{"session_id":"a\u0062","room_id":"!r\/x:hs"}],"withheld":[]}`,
	`{"room_keys":[{"session_id":"\u00e9t\u00e9","sender_key":"caf\u00e9"}],"withheld":[{"session_id":"w","reason":"d\u00e9j\u00e0"}]}`,
	"{\"room_keys\":[{\"session_id\":\"\xc3\xa9t\xc3\xa9\",\"session_key\":\"\xff\xfe\"}],\"withheld\":[]}",
	`{"room_keys":[{"session_id":"a","room_id":null,"sender_claimed_keys":null}],"withheld":[{"session_id":"w","code":null}]}`,
	`{"room_keys":[{"session_id":"a","shared_history":true,"forwarding_curve25519_key_chain":["k"]}],"withheld":[]}`,
	`{"room_keys":[{"session_id":"a","shared_history":"yes"}],"withheld":[{"session_id":"w","code":5}]}`,
	`{"room_keys":[{"session_id":"a","m.shared_history":true,"extra":{"deep":[1,2,{"x":null}]}}],"withheld":[{"session_id":"w","extra":[]}]}`,
	`{"room_keys":[5,"key",[],{"session_id":7},{"sender_claimed_keys":"x"},{"session_id":"good"},null,{}],"withheld":[true,{"code":[]},{"session_id":"w"},null]}`,
	`{"room_keys":[{"session_id":""}],"withheld":[{"session_id":""}]}`,
	`{"room_keys":[{"session_id":"a"}],"room_keys":[{"session_id":"b"}],"withheld":[],"withheld":[{"session_id":"w"}]}`,
	`{"room\u005fkeys":[{"session_id":"a"}],"withheld":[]}`,
	`{"version":2,"n":-1.5e+10,"t":true,"f":false,"z":null,"s":"x\"y","room_keys":[],"withheld":[],"o":{"a":[{}]}}`,
	`{"room_keys":[{"session_id":"a"}],"withheld":[]}   `,
	`{"room_keys":[{"session_id":"a"}],"withheld":[]} x`,
	`{"room_keys":[{"session_id":"a"}],"withheld":[]}{}`,
	`{"room_keys":[{"session_id":"a"},],"withheld":[]}`,
	`{"room_keys":[{"session_id":"a"} {"session_id":"b"}],"withheld":[]}`,
	`{"room_keys":[{"session_id":"a",}],"withheld":[]}`,
	`{"room_keys":[{"session_id" "a"}],"withheld":[]}`,
	`{"room_keys":[{"session_id":"a"}],"withheld":[],}`,
	`{"room_keys":[{"session_id":"a"}] "withheld":[]}`,
	`{"room_keys":[1 2],"withheld":[]}`,
	`{"room_keys":[tru],"withheld":[]}`,
	`{"room_keys":[{"session_id":"a"]],"withheld":[]}`,
	`{"room_keys":[{"session_id":"a"}}],"withheld":[]}`,
	`{"room_keys":[{"session_id":"a\x"}],"withheld":[]}`,
	"{\"room_keys\":[{\"session_id\":\"a\tb\"}],\"withheld\":[]}",
	`{"room_keys":[],"withheld":[],"junk":[1,,2]}`,
	`{"room_keys":[],"withheld":[],"junk":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}`,
	`{"room_keys":[],"withheld":[],"junk":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`,
	`{"room_keys":[` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `],"withheld":[]}`,
	`{"room_keys":[` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `],"withheld":[]}`,
	`{5:[],"room_keys":[],"withheld":[]}`,
	`{"room_keys":[],"withheld":[]`,
	`{"room_keys":[{"session_id":"a"`,
	`{"room_keys":[],"withheld":[],"n":1`,
	`{"room_keys":[],"withheld":null}`,
	`{"room_keys":{},"withheld":[]}`,
	`{"withheld":[]}`,
	`[]`, `null`, `"x"`, ``, `{`, `}`, `{}`, `{"room_keys"}`, `{"room_keys":}`,
}

// rustBundleForTest is a bundle shaped as matrix-rust-sdk writes it.
const rustBundleForTest = `{"room_keys":[{"algorithm":"m.megolm.v1.aes-sha2","room_id":"!r:hs","sender_key":"c2VuZGVy",` +
	`"session_id":"c2Vzc2lvbg","session_key":"AQAAAAAA","sender_claimed_keys":{"ed25519":"ZWQ"}}],` +
	`"withheld":[{"algorithm":"m.megolm.v1.aes-sha2","code":"m.history_not_shared",` +
	`"reason":"The sender disabled sharing encrypted history.","from_device":"RUSTDEV",` +
	`"room_id":"!r:hs","sender_key":"c2VuZGVy","session_id":"d2l0aGhlbGQ"}]}`

// The entries heirloom's builder and rust-sdk write take the plain parser, not json.Unmarshal.
func TestPlainEntriesTakeTheFastParser(t *testing.T) {
	var key RoomKey
	var w Withheld
	entry := `{"algorithm":"m.megolm.v1.aes-sha2","room_id":"!r:hs","sender_key":"c2VuZGVy","session_id":"c2Vzc2lvbg",` +
		`"session_key":"AQAAAAAA","sender_claimed_keys":{"ed25519":"ZWQ"}}`
	if !parseRoomKey([]byte(entry), &key) || key.SenderClaimedKeys.Ed25519 != "ZWQ" || key.SessionKey != "AQAAAAAA" {
		t.Fatalf("room key not parsed: %+v", key)
	}
	var built bytes.Buffer
	b := NewBuilder(&built, "!r:hs", "DEV")
	const sessionID, senderKey = "d2l0aGhlbGQtd2l0aGhlbGQtd2l0aGhlbGQtd2l0aGg", "c2VuZGVyLXNlbmRlci1zZW5kZXItc2VuZGVyLXNlbmQ"
	_ = b.AddSession(Session{RoomID: "!r:hs", SessionID: sessionID, SenderKey: senderKey}) // no shared history: withheld
	_, _ = b.Close()
	raw := built.Bytes()[len(`{"withheld":[`):bytes.IndexByte(built.Bytes(), ']')]
	if !parseWithheld(raw, &w) || w.SessionID != sessionID || w.FromDevice != "DEV" {
		t.Fatalf("withheld entry %s not parsed: %+v", raw, w)
	}
}

func TestDecodeMatchesEncodingJSON(t *testing.T) {
	for _, c := range decodeCases {
		requireSameDecode(t, []byte(c))
	}
}

// Decode on any input does what it did on encoding/json's streaming decoder alone.
func FuzzDecodeMatchesEncodingJSON(f *testing.F) {
	for _, c := range decodeCases {
		if len(c) < 4096 {
			f.Add([]byte(c))
		}
	}
	f.Fuzz(requireSameDecode)
}

// BenchmarkDecode decodes a 10,000-entry bundle in heirloom's form, with Decode and with
// referenceDecode.
func BenchmarkDecode(b *testing.B) {
	var buf bytes.Buffer
	builder := NewBuilder(&buf, "!bench:localhost", "DEV")
	const key = "AQAAAAAAbWVnb2xtIHJhdGNoZXQgZGF0YSBtZWdvbG0gcmF0Y2hldCBkYXRhIG1lZ29sbSByYXRjaGV0IGRhdGEgbWVnb2xtIHJhdGNoZXQgZGF0YSBtZWdvbG0gcmF0Y2hldCBkYXRhIG1lZ29sbSByYXRjaGV0IGRhdGEgbWVnb2xtIHJhdGNoZXQgZGF0YSBtZWdvbG0gcmF0Y2hldCBkYXRhIGtleQ"
	for _, shared := range []bool{false, true} { // withheld first
		for i := range 10_000 {
			if (i%10 != 0) != shared {
				continue
			}
			sid := fmt.Sprintf("%043d", i)
			_ = builder.AddSession(Session{RoomID: "!bench:localhost", SessionID: id.SessionID(sid), SenderKey: "c2VuZGVyc2VuZGVyc2VuZGVyc2VuZGVyc2VuZGVyc2U",
				SigningKey: "ZWQyNTUxOWVkMjU1MTllZDI1NTE5ZWQyNTUxOWVkMjU", SharedHistory: shared, Export: func() (string, error) { return key, nil }})
		}
	}
	if _, err := builder.Close(); err != nil {
		b.Fatal(err)
	}
	for _, impl := range []struct {
		name   string
		decode func(io.Reader, func(RoomKey) error, func(Withheld) error) (int, error)
	}{{"heirloom", Decode}, {"encoding-json", referenceDecode}} {
		b.Run(impl.name, func(b *testing.B) {
			b.SetBytes(int64(buf.Len()))
			for range b.N {
				if out := decodeWith(impl.decode, bytes.NewReader(buf.Bytes())); out.err != nil || len(out.keys) != 9000 {
					b.Fatal(out.err, len(out.keys))
				}
			}
		})
	}
}
