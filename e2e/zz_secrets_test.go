package e2e

// This file sorts last, so its test reads the logs of the whole run.

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/heirloom-matrix/heirloom/crypto"
)

type secretsConfig struct {
	AppService struct {
		ASToken string `yaml:"as_token"`
		HSToken string `yaml:"hs_token"`
	} `yaml:"appservice"`
	Encryption struct {
		PickleKey string `yaml:"pickle_key"`
	} `yaml:"encryption"`
	Provisioning struct {
		SharedSecret string `yaml:"shared_secret"`
	} `yaml:"provisioning"`
}

// No token, pickle key, API secret, room key or cross-signing seed ever appears in heirloom's log
// (written at debug level for the whole run), and the files holding secrets are 0600.
func TestZZSecretsNeverLogged(t *testing.T) {
	// Make sure the run holds room keys of both directions and a puppet with an identity.
	u := newJSUser(t, true)
	p := newPuppet(t)
	roomID := jsRoomWithPuppet(t, u, p, "shared")
	jsSend(t, u, roomID, "secret-test from js")
	puppetSend(t, p, roomID, "secret-test from the puppet")
	waitPuppetDecrypts(t, p, roomID, []string{"secret-test from js", "secret-test from the puppet"})
	jsMessages(t, u, roomID, 2, 30000)

	var cfg secretsConfig
	readYAML(t, e.configPath, &cfg)
	secrets := map[string]string{
		"as_token": cfg.AppService.ASToken, "hs_token": cfg.AppService.HSToken,
		"pickle_key": cfg.Encryption.PickleKey, "api shared secret": cfg.Provisioning.SharedSecret,
	}
	var export struct {
		Sessions []struct {
			SessionKey string `json:"session_key"`
		} `json:"sessions"`
	}
	e.peer(t, "exportKeys", map[string]any{"user": u.UserID, "room_id": roomID}, &export)
	if len(export.Sessions) < 2 {
		t.Fatalf("want the js user's and the puppet's sessions, got %d", len(export.Sessions))
	}
	for i, s := range export.Sessions {
		// Export and m.room_key formats differ in their first byte; from the fourth byte on the
		// base64 of the ratchet is the same, so a logged room key in any format contains this.
		secrets["room key "+string(rune('A'+i))] = s.SessionKey[8:56]
	}
	sealer, err := crypto.NewSealer([]byte(cfg.Encryption.PickleKey))
	if err != nil {
		t.Fatal(err)
	}
	var sealed string
	if err = e.db(t).QueryRow(`SELECT cross_signing_seeds FROM puppet WHERE user_id=?`, p.UserID).Scan(&sealed); err != nil {
		t.Fatal(err)
	}
	var seeds map[string]string
	if err = sealer.OpenJSON("cross-signing:"+p.UserID, sealed, &seeds); err != nil {
		t.Fatalf("opening the puppet's seeds: %v", err)
	}
	for name, seed := range seeds {
		raw, err := base64.RawURLEncoding.DecodeString(seed)
		if err != nil {
			t.Fatal(err)
		}
		secrets[name+" (url)"] = seed
		secrets[name+" (std)"] = base64.RawStdEncoding.EncodeToString(raw)
	}

	logData, err := os.ReadFile(filepath.Join(e.dir, "heirloom.log"))
	if err != nil {
		t.Fatal(err)
	}
	if len(logData) < 10_000 {
		t.Fatalf("the log is suspiciously short (%d bytes): is debug logging on?", len(logData))
	}
	for name, secret := range secrets {
		if len(secret) < 16 {
			t.Fatalf("secret %s is too short to search for: %q", name, secret)
		}
		if strings.Contains(string(logData), secret) {
			t.Errorf("heirloom's log contains the %s", name)
		}
	}
	files := []string{e.configPath, filepath.Join(e.dir, "registration.yaml")}
	if os.Getenv("HEIRLOOM_E2E_POSTGRES") == "" {
		files = append(files, e.dbPath)
	}
	for _, file := range files {
		info, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		if mode := info.Mode().Perm(); mode != 0o600 {
			t.Errorf("%s has mode %o, want 0600", filepath.Base(file), mode)
		}
	}
}

func readYAML(tb testing.TB, path string, out any) {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	if err = yaml.Unmarshal(data, out); err != nil {
		tb.Fatal(err)
	}
}
