package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/heirloom-matrix/heirloom/daemon"
)

// Run without a config, heirloom says how to write one and what to do next, with the paths it
// was given, and exits with the config error code.
func TestNoConfigSaysWhatToDo(t *testing.T) {
	dir := t.TempDir()
	configPath := filepath.Join(dir, "config.yaml")
	for _, args := range [][]string{{"-c", configPath}, {"-g", "-c", configPath, "-r", "registration.yaml"}} {
		var stderr bytes.Buffer
		require.Equal(t, daemon.ExitConfig, run(args, &stderr), "%v", args)
		require.Contains(t, stderr.String(), "There is no config file at "+configPath, "%v", args)
		require.Contains(t, stderr.String(), "heirloom -e -c "+configPath+"\n", "%v", args)
		require.Contains(t, stderr.String(), "heirloom -g -c "+configPath+" -r registration.yaml\n", "%v", args)
		require.Contains(t, stderr.String(), "app_service_config_files", "%v", args)
		require.NoFileExists(t, configPath, "nothing is written unasked")
	}

	var stderr bytes.Buffer
	require.Equal(t, daemon.ExitConfig, run([]string{"-c", filepath.Join(dir, "my config.yaml"), "-r", "/etc/heirloom/reg's.yaml"}, &stderr))
	require.Contains(t, stderr.String(), "heirloom -g -c '"+filepath.Join(dir, "my config.yaml")+`' -r '/etc/heirloom/reg'\''s.yaml'`,
		"paths a shell would split are quoted")
}

// The first step it names writes the example; from then on the config's own errors are reported,
// not the first steps again.
func TestFirstStepWritesTheExample(t *testing.T) {
	configPath := filepath.Join(t.TempDir(), "config.yaml")
	var stderr bytes.Buffer
	require.Equal(t, daemon.ExitOK, run([]string{"-e", "-c", configPath}, &stderr), stderr.String())
	written, err := os.ReadFile(configPath)
	require.NoError(t, err)
	require.Equal(t, exampleConfig, written)

	stderr.Reset()
	require.Equal(t, daemon.ExitConfig, run([]string{"-g", "-c", configPath, "-r", filepath.Join(t.TempDir(), "r.yaml")}, &stderr))
	require.NotContains(t, stderr.String(), "There is no config file", "the unedited example is reported as such by the config check")
}
