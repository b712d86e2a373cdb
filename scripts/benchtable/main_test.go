package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// The table fails when any side's counts for a size differ from heirloom's, or when a side has a
// result heirloom has none for; sides that did not run are no difference.
func TestCountsMustMatchHeirlooms(t *testing.T) {
	build := func(side string, keys, withheld int) (key, *result) {
		return key{side, "build", 100}, &result{Side: side, Op: "build", Sessions: 100, RoomKeys: keys, Withheld: withheld}
	}
	results := func(rs ...func() (key, *result)) map[key]*result {
		out := map[key]*result{}
		for _, r := range rs {
			k, v := r()
			out[k] = v
		}
		return out
	}
	side := func(name string, keys, withheld int) func() (key, *result) {
		return func() (key, *result) { return build(name, keys, withheld) }
	}
	require.False(t, checkCounts(results(side("heirloom", 100, 3), side("wasm", 100, 3), side("native-sqlite", 100, 3)), []int{100}))
	require.False(t, checkCounts(results(side("heirloom", 100, 3)), []int{100}), "only heirloom ran")
	require.True(t, checkCounts(results(side("heirloom", 100, 3), side("wasm", 99, 3)), []int{100}), "a room key short")
	require.True(t, checkCounts(results(side("heirloom", 100, 3), side("native-memory", 100, 0)), []int{100}), "withheld entries lost")
	imported := results(side("heirloom", 100, 3))
	imported[key{"wasm", "import", 100}] = &result{Side: "wasm", Op: "import", Sessions: 100, RoomKeys: 100, Withheld: 3}
	require.True(t, checkCounts(imported, []int{100}), "an import heirloom has no result for")
}
