package e2e

import (
	"cmp"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/heirloom-matrix/heirloom/e2ee"
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

// configSecrets returns the secrets of an instance's config, by name.
func configSecrets(path string) (map[string]string, error) {
	var cfg secretsConfig
	if err := readYAMLFile(path, &cfg); err != nil {
		return nil, err
	}
	return map[string]string{
		"as_token": cfg.AppService.ASToken, "hs_token": cfg.AppService.HSToken,
		"pickle_key": cfg.Encryption.PickleKey, "api shared secret": cfg.Provisioning.SharedSecret,
	}, nil
}

// seedSecrets opens the sealed cross-signing seeds of every puppet in db, in both base64 forms.
func seedSecrets(db *sql.DB, pickleKey string) (map[string]string, error) {
	sealer, err := e2ee.NewSealer([]byte(pickleKey))
	if err != nil {
		return nil, err
	}
	rows, err := db.Query(`SELECT user_id, cross_signing_seeds FROM puppet WHERE cross_signing_seeds IS NOT NULL`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var userID, sealed string
		if err = rows.Scan(&userID, &sealed); err != nil {
			return nil, err
		}
		var seeds map[string]string
		if err = sealer.OpenJSON("cross-signing:"+userID, sealed, &seeds); err != nil {
			return nil, fmt.Errorf("opening the seeds of %s: %w", userID, err)
		}
		for name, seed := range seeds {
			raw, err := base64.RawURLEncoding.DecodeString(seed)
			if err != nil {
				return nil, err
			}
			out[userID+" "+name+" (url)"] = seed
			out[userID+" "+name+" (std)"] = base64.RawStdEncoding.EncodeToString(raw)
		}
	}
	return out, rows.Err()
}

// findLoggedSecrets returns the names of the secrets that appear in the log.
func findLoggedSecrets(logPath string, secrets map[string]string) ([]string, error) {
	logData, err := os.ReadFile(logPath)
	if err != nil {
		return nil, err
	}
	var found []string
	for name, secret := range secrets {
		if len(secret) < 16 {
			return nil, fmt.Errorf("secret %s is too short to search for: %q", name, secret)
		}
		if strings.Contains(string(logData), secret) {
			found = append(found, name)
		}
	}
	return found, nil
}

// checkSecretsNotLogged runs after the whole suite: no heirloom process of the run logged its
// tokens, pickle key or API secret, and the shared one logged no puppet's cross-signing seed; the
// files holding secrets are 0600.
func (x *env) checkSecretsNotLogged() error {
	var problems []string
	all := append([]*instance{x.instance}, x.instances...)
	for _, h := range all {
		secrets, err := configSecrets(h.configPath)
		if err != nil {
			return err
		}
		_, statErr := os.Stat(h.dbPath)
		dbExists := h.postgres || statErr == nil
		if dbExists {
			db, err := h.openRaw()
			if err != nil {
				return err
			}
			seeds, err := seedSecrets(db, secrets["pickle_key"])
			db.Close()
			if err != nil && !errors.Is(err, sql.ErrNoRows) && !strings.Contains(err.Error(), "no such table") {
				return fmt.Errorf("reading the seeds of %s: %w", h.name, err)
			}
			for k, v := range seeds {
				secrets[k] = v
			}
		}
		if h.bridge != nil {
			// A gateway holds the bridge's tokens too: they must not be logged either.
			secrets["bridge's as_token"], secrets["bridge's hs_token"] = h.bridge.ASToken, h.bridge.HSToken
		}
		found, err := findLoggedSecrets(h.logPath, secrets)
		if err != nil {
			return err
		}
		for _, name := range found {
			problems = append(problems, fmt.Sprintf("heirloom's log (%s) contains the %s", h.name, name))
		}
		files := []string{h.configPath}
		if !h.postgres && dbExists {
			files = append(files, h.dbPath)
		}
		for _, file := range files {
			info, err := os.Stat(file)
			if err != nil {
				return err
			}
			if mode := info.Mode().Perm(); mode != 0o600 {
				problems = append(problems, fmt.Sprintf("%s has mode %o, want 0600", file, mode))
			}
		}
	}
	for _, reg := range x.registrations {
		info, err := os.Stat(reg)
		if err != nil {
			return err
		}
		if mode := info.Mode().Perm(); mode != 0o600 {
			problems = append(problems, fmt.Sprintf("%s has mode %o, want 0600", filepath.Base(reg), mode))
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// openRaw opens the instance's database outside a test (SQLite read-only, or PostgreSQL).
func (h *instance) openRaw() (*sql.DB, error) {
	if h.postgres {
		return sql.Open("postgres", cmp.Or(h.pgURL, e.pgURL))
	}
	return sql.Open("sqlite3", "file:"+h.dbPath+"?mode=ro&_busy_timeout=5000")
}

// No token, pickle key, API secret, room key or cross-signing seed appears in heirloom's log
// (written at debug level), after a scenario of its own that puts room keys of both directions
// and a puppet's identity through heirloom. (The suite's teardown checks the whole run's logs for
// the tokens and seeds again, whatever tests ran.)
func TestSecretsNeverLogged(t *testing.T) {
	u := newJSUser(t, true)
	p := newPuppet(t)
	roomID := jsRoomWithPuppet(t, u, p, "shared")
	jsSend(t, u, roomID, "secret-test from js")
	puppetSend(t, p, roomID, "secret-test from the puppet")
	waitPuppetDecrypts(t, p, roomID, []string{"secret-test from js", "secret-test from the puppet"})
	if got := decryptedBodies(jsMessages(t, u, roomID, 2, 30000)); len(got) < 2 {
		t.Fatalf("the js user decrypted %d of 2 messages: %v", len(got), keys(got))
	}

	secrets, err := configSecrets(e.configPath)
	if err != nil {
		t.Fatal(err)
	}
	var export struct {
		Sessions []struct {
			SessionID  string `json:"session_id"`
			SessionKey string `json:"session_key"`
		} `json:"sessions"`
	}
	e.peer(t, "exportKeys", map[string]any{"user": u.UserID, "room_id": roomID}, &export)
	if len(export.Sessions) < 2 {
		t.Fatalf("want the js user's and the puppet's sessions, got %d", len(export.Sessions))
	}
	for _, s := range export.Sessions {
		// Export and m.room_key formats differ in their first byte; from the fourth byte on the
		// base64 of the ratchet is the same, so a logged room key in any format contains this.
		secrets["room key "+s.SessionID] = s.SessionKey[8:56]
	}
	db := e.db(t)
	seeds, err := seedSecrets(db.DB, secrets["pickle_key"])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(keys(seeds), " "), p.UserID) {
		t.Fatalf("no cross-signing seeds of %s found to search for", p.UserID)
	}
	for k, v := range seeds {
		secrets[k] = v
	}
	info, err := os.Stat(e.logPath)
	if err != nil {
		t.Fatal(err)
	}
	if info.Size() < 10_000 {
		t.Fatalf("the log is suspiciously short (%d bytes): is debug logging on?", info.Size())
	}
	found, err := findLoggedSecrets(e.logPath, secrets)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range found {
		t.Errorf("heirloom's log contains the %s", name)
	}
}

func readYAMLFile(path string, out any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return yaml.Unmarshal(data, out)
}

func readYAML(tb testing.TB, path string, out any) {
	tb.Helper()
	if err := readYAMLFile(path, out); err != nil {
		tb.Fatal(err)
	}
}
