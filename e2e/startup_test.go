package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runToExit runs heirloom with the config at path until it exits by itself, and returns its exit
// code and output.
func runToExit(t *testing.T, configPath string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.binary, "-c", configPath)
	cmd.Dir = filepath.Dir(configPath)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("heirloom -c %s did not exit with an error code (%v):\n%s", configPath, err, out)
	}
	if ctx.Err() != nil {
		t.Fatalf("heirloom did not exit within 90 s:\n%s", out)
	}
	return exit.ExitCode(), string(out)
}

// startupConfig writes a config for a heirloom that must fail to start: the alt profile's, with
// an unregistered identity and a free port unless mutate says otherwise.
func startupConfig(t *testing.T, mutate func(dir string, c *heirloomConfig)) string {
	t.Helper()
	dir := t.TempDir()
	c := e.profileConfig(e.profiles["alt"])
	c.id, c.prefix, c.bot = "heirloom-startup", "startup_", "startupbot"
	c.asToken, c.hsToken = randomToken("as-startup-"), randomToken("hs-startup-")
	c.port = freePort()
	c.dbURI = "file:" + filepath.Join(dir, "heirloom.db") + "?_txlock=immediate"
	if mutate != nil {
		mutate(dir, &c)
	}
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(c.yaml()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// requireExit checks the exit code and that the output says each of want.
func requireExit(t *testing.T, code int, out string, wantCode int, want ...string) {
	t.Helper()
	if code != wantCode {
		t.Fatalf("exit code %d, want %d; output:\n%s", code, wantCode, out)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Fatalf("the output does not say %q:\n%s", w, out)
		}
	}
	if !strings.Contains(out, fmt.Sprintf("heirloom exited with code %d", wantCode)) {
		t.Fatalf("heirloom did not print its exit code:\n%s", out)
	}
}

// Each startup failure docs/deployment.md lists ends heirloom with its own exit code and a message
// that says what is wrong (docs/deployment.md, "Deploying beside an existing Synapse", step 5).
func TestStartupFailures(t *testing.T) {
	t.Run("config missing", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "no-such-config.yaml")
		code, out := runToExit(t, path)
		// First contact: the steps to set heirloom up, with the path the admin gave.
		requireExit(t, code, out, 2, "There is no config file at", "no-such-config.yaml", "heirloom -e -c", "heirloom -g -c")
	})
	t.Run("config unreadable", func(t *testing.T) {
		t.Parallel()
		code, out := runToExit(t, t.TempDir()) // a directory: read fails even for root
		requireExit(t, code, out, 2, "Failed to load config", "is a directory")
	})
	t.Run("config invalid", func(t *testing.T) {
		t.Parallel()
		path := startupConfig(t, func(_ string, c *heirloomConfig) { c.acceptWindow = "-1h" })
		code, out := runToExit(t, path)
		requireExit(t, code, out, 2, "Failed to load config", "history_sharing.accept_window")
	})
	t.Run("database cannot open", func(t *testing.T) {
		t.Parallel()
		path := startupConfig(t, func(dir string, c *heirloomConfig) {
			c.dbURI = "file:" + filepath.Join(dir, "missing-dir", "heirloom.db") + "?_txlock=immediate"
		})
		code, out := runToExit(t, path)
		// The lock file beside the database is the first thing opened.
		requireExit(t, code, out, 3, "the database", filepath.Join("missing-dir", "heirloom.db"), "no such file or directory")
	})
	t.Run("homeserver down", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		down := fmt.Sprintf("http://127.0.0.1:%d", ln.Addr().(*net.TCPAddr).Port)
		ln.Close() // nothing listens there now
		path := startupConfig(t, func(_ string, c *heirloomConfig) { c.hsURL = down })
		start := time.Now()
		code, out := runToExit(t, path)
		requireExit(t, code, out, 4, "The homeserver is not reachable", "/_matrix/client/versions", "connection refused")
		t.Logf("gave up on the homeserver after %s", time.Since(start).Round(time.Second))
	})
	t.Run("registration not loaded", func(t *testing.T) {
		t.Parallel()
		// Tokens of a registration Synapse never loaded.
		path := startupConfig(t, nil)
		code, out := runToExit(t, path)
		requireExit(t, code, out, 4, "does not accept heirloom's registration", "is the registration loaded", "M_UNKNOWN_TOKEN")
	})
	t.Run("port in use", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		port := ln.Addr().(*net.TCPAddr).Port
		path := startupConfig(t, func(_ string, c *heirloomConfig) { c.port = port })
		code, out := runToExit(t, path)
		requireExit(t, code, out, 5, "Failed to start the HTTP listener", fmt.Sprintf("127.0.0.1:%d", port), "address already in use")
	})
}

// A second process on an SQLite database another one runs on refuses to start, with its own exit
// code, naming the database and the process that holds it; the running one is undisturbed.
func TestSecondProcessOnSQLiteRefusesToStart(t *testing.T) {
	h := startInstance(t, "alt", nil)
	p := h.newPuppet(t)
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	code, out := runToExit(t, h.configPath)
	requireExit(t, code, out, 6, "Another heirloom process holds the database", h.dbPath,
		fmt.Sprintf(`"active_pid":%d`, h.heirloom.Process.Pid), fmt.Sprintf(`"active_host":%q`, host))
	var again puppetIdentity
	h.apiOK(t, "PUT", "/puppets/"+p.UserID, map[string]any{}, &again)
	if again.DeviceID != p.DeviceID {
		t.Fatalf("the running heirloom answered %+v after the second one refused, want the puppet %+v", again, p)
	}
}
