package gateway

import (
	"bytes"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// synapseOracle is a Python program run with Synapse's own virtualenv: it builds Synapse's router
// (a HomeServer of a generated config) and answers, for each path, the servlets and methods of the
// first route that matches it, Twisted's parse_qs of each query, and Twisted's reading of each
// Content-Type.
//
//go:embed testdata/synapse_oracle.py
var synapseOracle string

// synapsePython is the interpreter of the virtualenv scripts/synapse.sh installs, or "".
func synapsePython() string {
	state := os.Getenv("HEIRLOOM_STATE")
	if state == "" {
		state = filepath.Join("..", ".state")
	}
	python := filepath.Join(state, "venv", "bin", "python")
	if _, err := os.Stat(python); err != nil {
		return ""
	}
	return python
}

type oracleAnswer struct {
	Routes []struct {
		Servlets []string `json:"servlets"`
		Methods  []string `json:"methods"`
	} `json:"routes"`
	Queries      []map[string][]string `json:"queries"` // base64 keys and values
	ContentTypes []string              `json:"content_types"`
}

func askSynapse(t *testing.T, paths, queries, contentTypes []string) oracleAnswer {
	t.Helper()
	python := synapsePython()
	if python == "" {
		t.Skip("Synapse's virtualenv is not installed (make deps, or HEIRLOOM_STATE): the comparison with Synapse's router and Twisted needs it")
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "oracle.py")
	require.NoError(t, os.WriteFile(script, []byte(synapseOracle), 0o600))
	b64 := func(in []string) []string {
		out := make([]string, len(in))
		for i, s := range in {
			out[i] = base64.StdEncoding.EncodeToString([]byte(s))
		}
		return out
	}
	input, err := json.Marshal(map[string]any{"paths": paths, "queries": b64(queries), "content_types": b64(contentTypes)})
	require.NoError(t, err)
	cmd := exec.Command(python, script, dir)
	cmd.Stdin = bytes.NewReader(input)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "the Synapse oracle failed: %s", stderr.String())
	var answer oracleAnswer
	require.NoError(t, json.Unmarshal(out, &answer), "%s", out)
	return answer
}

// samples are values for a route's variables, escaped as a bridge sends them.
var samples = map[string]string{
	"room": "%21r%3Alocalhost", "type": "m.room.message", "txn": "t1", "event": "%24ev", "user": "%40u%3Alocalhost",
	"alias": "%23a%3Alocalhost", "server": "localhost", "media": "abc", "file": "f.png", "key": "k",
}

// samplePath is a concrete path of the route under prefix.
func samplePath(prefix, path string) string {
	segs := strings.Split(prefix+path, "/")
	for i, s := range segs {
		switch {
		case strings.HasSuffix(s, "...}"):
			segs[i] = "global/override/a"
		case strings.HasPrefix(s, "{"):
			v, ok := samples[strings.Trim(s, "{}")]
			if !ok {
				v = "x1"
			}
			segs[i] = v
		}
	}
	return strings.Join(segs, "/")
}

// Every route of the table is the servlet Synapse's own router finds first for that path, under
// every prefix, and serves each method the table names: the gateway classifies a request as what
// Synapse will do with it. Twisted's reading of queries and of Content-Type values agrees with the
// gateway's on a generated corpus.
func TestRouteTableAgreesWithSynapse(t *testing.T) {
	type sample struct {
		path string
		rt   *route
	}
	var routeSamples []sample
	for i := range routeTable {
		rt := &routeTable[i]
		if rt.synapse == "" {
			continue
		}
		for _, prefix := range rt.prefixes {
			routeSamples = append(routeSamples, sample{samplePath(prefix, rt.path), rt})
		}
	}
	paths := make([]string, len(routeSamples))
	for i, s := range routeSamples {
		paths[i] = s.path
	}
	queries, contentTypes := queryCorpus(), contentTypeCorpus()
	answer := askSynapse(t, paths, queries, contentTypes)

	require.Len(t, answer.Routes, len(routeSamples))
	for i, s := range routeSamples {
		got := answer.Routes[i]
		require.Contains(t, got.Servlets, s.rt.synapse, "Synapse serves %s with %v", s.path, got.Servlets)
		method := sampleMethod(s.rt)
		want, ok := s.rt.methods[method]
		if !ok {
			want = s.rt.methods["*"]
		}
		c, refusal := classify(method, s.path)
		require.Nil(t, refusal, s.path)
		require.Equal(t, want.name, c.name, "%s %s", method, s.path)
		for method := range s.rt.methods {
			if method != "*" {
				require.Contains(t, got.Methods, method, "Synapse serves %s %s", method, s.path)
			}
		}
	}

	require.Len(t, answer.Queries, len(queries))
	for i, q := range queries {
		want := map[string][]string{}
		for k, vs := range answer.Queries[i] {
			key, err := base64.StdEncoding.DecodeString(k)
			require.NoError(t, err)
			for _, v := range vs {
				value, err := base64.StdEncoding.DecodeString(v)
				require.NoError(t, err)
				want[string(key)] = append(want[string(key)], string(value))
			}
		}
		got := map[string][]string{}
		for _, p := range parseQuery(q) {
			got[p.key] = append(got[p.key], p.value)
		}
		require.Equal(t, want, got, "query %q", q)
		again := map[string][]string{}
		for _, p := range parseQuery(encodeQuery(parseQuery(q))) {
			again[p.key] = append(again[p.key], p.value)
		}
		require.Equal(t, want, again, "query %q re-encoded as %q", q, encodeQuery(parseQuery(q)))
	}

	require.Len(t, answer.ContentTypes, len(contentTypes))
	forms := 0
	for i, ct := range contentTypes {
		if parsed := answer.ContentTypes[i]; parsed == "application/x-www-form-urlencoded" || parsed == "multipart/form-data" {
			forms++
			require.True(t, formContentType(ct), "Twisted reads %q as %s", ct, parsed)
		}
	}
	require.Greater(t, forms, len(contentTypes)/10, "the corpus has form content types Twisted recognises")
}

// sampleMethod is a method the route serves: GET if it does, else its first in order.
func sampleMethod(rt *route) string {
	if _, ok := rt.methods["GET"]; ok {
		return "GET"
	}
	keys := make([]string, 0, len(rt.methods))
	for k := range rt.methods {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if keys[0] == "*" {
		return "POST"
	}
	return keys[0]
}

// queryCorpus is generated queries over the characters where Twisted's parse_qs and Go's differ.
func queryCorpus() []string {
	rng := rand.New(rand.NewPCG(1, 2))
	atoms := []string{"user_id", "device_id", "=", "&", ";", "+", "%", "%2", "%2F", "%3D", "%26", "%3B", "%zz", "%40", "@", "a", "b", "%FF", "%e2%80%8b", " "}
	out := []string{"", "user_id=@a:b", "user_id=@a:b;user_id=@c:d", "a;b=c", "user_id", "user_id=", "=x", "x=%", "user%5Fid=1"}
	for range 2000 {
		var b strings.Builder
		for range 1 + rng.IntN(10) {
			b.WriteString(atoms[rng.IntN(len(atoms))])
		}
		out = append(out, b.String())
	}
	return out
}

// contentTypeCorpus is generated Content-Type values around the two form types.
func contentTypeCorpus() []string {
	rng := rand.New(rand.NewPCG(3, 4))
	bases := []string{"application/x-www-form-urlencoded", "multipart/form-data", "application/json", "text/plain"}
	noise := []string{" ", "\t", "(c)", "( x )", ";", "; charset=utf-8", "; boundary=b", "/", "\"", ",", "=", "X", "-"}
	out := []string{"", "Application/X-WWW-Form-URLEncoded", "multipart (x)/form-data; boundary=b", "application/x-www-form-urlencoded (comment)"}
	for range 3000 {
		s := bases[rng.IntN(len(bases))]
		if rng.IntN(2) == 0 {
			cut := 1 + rng.IntN(len(s)-1)
			s = strings.ToUpper(s[:cut]) + s[cut:]
		}
		for range rng.IntN(3) {
			at := rng.IntN(len(s) + 1)
			s = s[:at] + noise[rng.IntN(len(noise))] + s[at:]
		}
		out = append(out, s)
	}
	return out
}
