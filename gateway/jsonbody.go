package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The bodies whose content decides what heirloom allows (register, login, invite) are read the way
// Synapse reads them: the body decoded as UTF-8, then Python's json, which matches keys exactly and
// keeps the last of duplicates. Go's struct decoding matches keys case-insensitively instead, and
// other homeservers differ again, so a body that names a key twice, or twice up to case, is refused:
// no reading of it is certain.

var (
	errNotJSONObject = errors.New("the body is not a UTF-8 JSON object")
	errAmbiguousJSON = errors.New("the body names a key twice, or in two spellings that differ only in case: " +
		"heirloom cannot tell which one the homeserver reads")
)

// decodeObject decodes a JSON object into its members by their exact keys, refusing a key given
// twice up to case (errAmbiguousJSON) and anything but one UTF-8 JSON object (errNotJSONObject).
func decodeObject(data []byte) (map[string]json.RawMessage, error) {
	if !utf8.Valid(data) {
		return nil, errNotJSONObject
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errNotJSONObject
	}
	members := map[string]json.RawMessage{}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		key, ok := tok.(string)
		if err != nil || !ok {
			return nil, errNotJSONObject
		}
		var value json.RawMessage
		if err = dec.Decode(&value); err != nil {
			return nil, errNotJSONObject
		}
		if folded := foldKey(key); seen[folded] {
			return nil, errAmbiguousJSON
		} else {
			seen[folded] = true
		}
		members[key] = value
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, errNotJSONObject
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errNotJSONObject // trailing data, which Python's json refuses too
	}
	return members, nil
}

// decodeContent decodes one UTF-8 JSON object (nothing after it, as Python's json requires) with
// its numbers kept as they were written: an integer beyond 2^53, or one Go's float64 cannot hold
// (1e400, which Python reads), goes on exactly as the bridge wrote it.
func decodeContent(data []byte) (map[string]any, error) {
	if !utf8.Valid(data) {
		return nil, errNotJSONObject
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var content map[string]any
	if err := dec.Decode(&content); err != nil || content == nil {
		return nil, errNotJSONObject
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errNotJSONObject
	}
	return content, nil
}

// foldKey maps a key to one spelling of its case-folding class (each rune to the smallest of its
// simple folding orbit): two keys fold alike if and only if strings.EqualFold holds for them.
func foldKey(s string) string {
	var b strings.Builder
	for _, r := range s {
		least := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			least = min(least, f)
		}
		b.WriteRune(least)
	}
	return b.String()
}

// stringMember returns an object member that is a JSON string, and whether it is one.
func stringMember(members map[string]json.RawMessage, key string) (string, bool) {
	raw, ok := members[key]
	if !ok {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}
