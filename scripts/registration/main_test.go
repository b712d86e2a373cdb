package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// The committed registration is rewritten from the example config: the same file `heirloom -g`
// would render, placeholders kept, and a missing or unreadable example writes nothing.
func TestRegistrationRewrittenFromTheExample(t *testing.T) {
	out := filepath.Join(t.TempDir(), "registration.yaml")
	require.NoError(t, run("../../config.example.yaml", out))
	written, err := os.ReadFile(out)
	require.NoError(t, err)
	committed, err := os.ReadFile("../../registration.yaml")
	require.NoError(t, err)
	require.Equal(t, string(committed), string(written))
	info, err := os.Stat(out)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), info.Mode().Perm(), "placeholder tokens only: a committed file")

	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("no_such_key: 1\n"), 0o600))
	for example, want := range map[string]string{filepath.Join(dir, "absent.yaml"): "failed to read the example config",
		bad: "failed to parse the example config"} {
		target := filepath.Join(dir, "out.yaml")
		require.ErrorContains(t, run(example, target), want)
		_, err = os.Stat(target)
		require.ErrorIs(t, err, os.ErrNotExist)
	}
}
