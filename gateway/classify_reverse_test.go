package gateway

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The reverse of TestRouteTableAgreesWithSynapse: paths near every route of the table
// (a segment added, dropped, escaped, doubled, in another case; other prefixes; trailing and
// doubled slashes), and for each one the gateway does not refuse, Synapse's own router picks the
// servlet the table names. A path heirloom forwards is never one Synapse serves differently.
func TestClassifierNeverForwardsWhatSynapseRoutesElsewhere(t *testing.T) {
	prefixes := []string{"/_matrix/client/api/v1", "/_matrix/client/r0", "/_matrix/client/v3", "/_matrix/client/unstable",
		"/_matrix/client/v1", "/_matrix/client/v2", "/_matrix/client/V3", "/_matrix/client/v3/", "/_matrix/media/v3", "/_matrix/media/r0",
		"/_matrix/media/v1", "/_synapse/admin/v1", "/_matrix/client/unstable/org.matrix.msc2432"}
	seen := map[string]bool{}
	var paths []string
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			paths = append(paths, p)
		}
	}
	for i := range routeTable {
		rt := &routeTable[i]
		for _, prefix := range rt.prefixes {
			base := samplePath(prefix, rt.path)
			add(base)
			add(base + "/")
			add(base + "/x")
			segs := strings.Split(base, "/")
			for j := 1; j < len(segs); j++ {
				drop := append(append([]string{}, segs[:j]...), segs[j+1:]...)
				add(strings.Join(drop, "/"))
				ins := append(append(append([]string{}, segs[:j]...), "send"), segs[j:]...)
				add(strings.Join(ins, "/"))
				esc := append([]string{}, segs...)
				if esc[j] != "" {
					esc[j] = "%" + hex2(esc[j][0]) + esc[j][1:]
					add(strings.Join(esc, "/"))
				}
				up := append([]string{}, segs...)
				up[j] = strings.ToUpper(up[j])
				add(strings.Join(up, "/"))
				dbl := append(append(append([]string{}, segs[:j]...), ""), segs[j:]...)
				add(strings.Join(dbl, "/"))
			}
			rest := strings.TrimPrefix(base, prefix)
			for _, other := range prefixes {
				add(other + rest)
			}
		}
	}
	answer := askSynapse(t, paths, nil, nil)
	require.Len(t, answer.Routes, len(paths))
	checked := 0
	for i, p := range paths {
		for _, method := range []string{"GET", "PUT", "POST", "DELETE"} {
			c, refusal := classify(method, p)
			if refusal != nil || c.refuse != nil {
				continue
			}
			var rt *route
			for j := range compiledRoutes {
				if _, ok := compiledRoutes[j].match(strings.Split(p, "/")); ok {
					rt = compiledRoutes[j].route
					break
				}
			}
			require.NotNil(t, rt, p)
			if rt.synapse == "" {
				continue
			}
			checked++
			if len(answer.Routes[i].Servlets) == 0 {
				t.Logf("%s %s: heirloom forwards it (%s), Synapse serves nothing (404)", method, p, rt.synapse)
				continue
			}
			require.Contains(t, answer.Routes[i].Servlets, rt.synapse, "%s %s: heirloom takes it for %s, Synapse serves it with %v", method, p, rt.synapse, answer.Routes[i].Servlets)
		}
	}
	t.Logf("%d paths, %d (method, path) pairs heirloom handles or forwards, each routed by Synapse as the table says", len(paths), checked)
}

func hex2(c byte) string {
	const digits = "0123456789ABCDEF"
	return string([]byte{digits[c>>4], digits[c&15]})
}
