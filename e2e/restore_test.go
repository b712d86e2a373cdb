package e2e

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Puppet devices the homeserver deletes (Synapse's delete_stale_devices_after, an admin's mistake).

// deletePuppetDevice deletes the puppet's device with Synapse's admin API.
func deletePuppetDevice(t *testing.T, admin string, p puppetIdentity) {
	t.Helper()
	path := e.hsURL + "/_synapse/admin/v2/users/" + url.PathEscape(p.UserID) + "/devices/" + url.PathEscape(p.DeviceID)
	if code, err := e.request("DELETE", path, "Bearer "+admin, nil, nil); err != nil || code != 200 {
		t.Fatalf("deleting %s's device %s: %d %v", p.UserID, p.DeviceID, code, err)
	}
}

// requireSignedByOwner checks that the js user sees the puppet's device signed by its owner, under
// the master key heirloom provisioned.
func requireSignedByOwner(t *testing.T, u jsUser, p puppetIdentity) {
	t.Helper()
	var status struct {
		Device *struct {
			SignedByOwner bool `json:"signedByOwner"`
		} `json:"device"`
		MasterKey string `json:"cross_signing_master_key"`
	}
	e.peer(t, "deviceStatus", map[string]any{"user": u.UserID, "target_user": p.UserID, "target_device": p.DeviceID,
		"wait_signed": true, "timeout_ms": 30000}, &status)
	if status.Device == nil || !status.Device.SignedByOwner || status.MasterKey != p.MasterKey {
		t.Fatalf("js-sdk sees %s's device %s as %+v under master key %q, want signed by its owner under %q",
			p.UserID, p.DeviceID, status.Device, status.MasterKey, p.MasterKey)
	}
}

type statusResponse struct {
	Puppets        int `json:"puppets"`
	DeviceProblems []struct {
		UserID   string `json:"user_id"`
		DeviceID string `json:"device_id"`
		Error    string `json:"error"`
	} `json:"device_problems"`
	Bot *struct {
		UserID    string `json:"user_id"`
		DeviceID  string `json:"device_id"`
		MasterKey string `json:"master_key"`
	} `json:"bot"`
}

// restoredFor matches the restore's log line for the puppet and trigger.
func restoredFor(p puppetIdentity, trigger string) func(logLine) bool {
	return msgIs("Restored the puppet's device the homeserver had lost, with the same device ID, keys and identity",
		"puppet", p.UserID, "device_id", p.DeviceID, "trigger", trigger, "master_key", p.MasterKey)
}

// A puppet's device deleted by the homeserver's admin comes back with the same ID, keys and
// identity, whether heirloom runs (the device-list change) or not (the check at startup): the
// puppet sends and decrypts again, and a js-sdk user sees it signed by its owner under the same
// master key. A device that cannot come back without another identity (someone replaced the
// puppet's cross-signing keys on the homeserver) is reported in /status and the log, and heirloom
// neither takes that identity nor makes one.
func TestDeletedPuppetDeviceRestored(t *testing.T) {
	h := startInstance(t, "alt", nil)
	p, lost := h.newPuppet(t), h.newPuppet(t)
	u := newJSUser(t, true)
	roomID := h.createRoom(t, p, "shared", u.UserID, lost.UserID)
	e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
	// lost shares the room with the other puppet: Synapse reports the device-list changes of
	// users in rooms with the appservice's users, and lost's is what the last part waits for.
	eventually(t, 30*time.Second, lost.UserID+" to join", func() (bool, string) {
		code, err := h.api("POST", "/puppets/"+lost.UserID+"/rooms/"+roomID+"/join", map[string]any{}, nil)
		return err == nil && code == 200, fmt.Sprintf("%d %v", code, err)
	})
	h.send(t, p, roomID, "before the device was deleted")
	jsDecrypted(t, u, "", roomID, "before the device was deleted")
	admin := adminToken(t)

	exchange := func(text string) {
		t.Helper()
		h.send(t, p, roomID, "from the puppet "+text)
		jsDecrypted(t, u, "", roomID, "from the puppet "+text)
		jsSend(t, u, roomID, "to the puppet "+text)
		h.waitDecrypts(t, p, roomID, []string{"to the puppet " + text})
		requireSignedByOwner(t, u, p)
	}

	// While heirloom runs: Synapse tells it of the puppet's device-list change.
	mark := h.mark(t)
	deletePuppetDevice(t, admin, p)
	mark.wait(t, 30*time.Second, "the restore after the device-list change", restoredFor(p, "device_list"))
	exchange("after the restore")
	if n := h.metric(t, `heirloom_puppet_devices_restored_total{trigger="device_list"}`); n < 1 {
		t.Fatalf("heirloom_puppet_devices_restored_total{trigger=\"device_list\"} = %v", n)
	}

	// While heirloom is down: the check at startup.
	h.stopHeirloom(syscall.SIGTERM)
	deletePuppetDevice(t, admin, p)
	mark = h.mark(t)
	if err := h.start(e.binary); err != nil {
		t.Fatal(err)
	}
	// Synapse pushes the device-list change it kept while heirloom was down as soon as heirloom
	// answers its ping, just before the startup check runs: whichever comes first restores.
	mark.wait(t, 30*time.Second, "the restore at startup", func(l logLine) bool {
		return restoredFor(p, "startup")(l) || restoredFor(p, "device_list")(l)
	})
	exchange("after the restart")

	// While heirloom is down, someone with the appservice's token replaced the other puppet's
	// cross-signing identity, then its device went. The startup check finds both (and Synapse,
	// which held heirloom to be down, keeps no device-list change of it to push).
	h.stopHeirloom(syscall.SIGTERM)
	foreign := make([]byte, 32)
	_, _ = rand.Read(foreign)
	foreignKey := base64.RawStdEncoding.EncodeToString(foreign)
	upload := e.hsURL + "/_matrix/client/v3/keys/device_signing/upload?user_id=" + url.QueryEscape(lost.UserID)
	body := map[string]any{"master_key": map[string]any{"user_id": lost.UserID, "usage": []string{"master"},
		"keys": map[string]string{"ed25519:" + foreignKey: foreignKey}}}
	if code, err := e.request("POST", upload, "Bearer "+h.asToken, body, nil); err != nil || code != 200 {
		t.Fatalf("replacing %s's master key: %d %v", lost.UserID, code, err)
	}
	deletePuppetDevice(t, admin, lost)
	mark = h.mark(t)
	if err := h.start(e.binary); err != nil {
		t.Fatal(err)
	}
	failed := mark.wait(t, 30*time.Second, "the refused restore", msgIs(
		"Cannot restore the puppet's device: it can neither send nor read encrypted messages until this is fixed",
		"puppet", lost.UserID, "device_id", lost.DeviceID, "master_key", lost.MasterKey))
	if !strings.Contains(failed.str("error"), "another cross-signing identity") {
		t.Fatalf("the refused restore's log line: %v", failed)
	}
	var status statusResponse
	h.apiOK(t, "GET", "/status", nil, &status)
	if len(status.DeviceProblems) != 1 || status.DeviceProblems[0].UserID != lost.UserID ||
		status.DeviceProblems[0].DeviceID != lost.DeviceID || !strings.Contains(status.DeviceProblems[0].Error, "another cross-signing identity") {
		t.Fatalf("GET /status device_problems: %+v, want %s's device %s", status.DeviceProblems, lost.UserID, lost.DeviceID)
	}
	if n := h.metric(t, "heirloom_puppet_device_restore_failures_total"); n < 1 {
		t.Fatalf("heirloom_puppet_device_restore_failures_total = %v", n)
	}
	var again puppetIdentity
	h.apiOK(t, "PUT", "/puppets/"+lost.UserID, map[string]any{}, &again)
	if again.MasterKey != lost.MasterKey || again.DeviceID != lost.DeviceID {
		t.Fatalf("provisioning the lost puppet again changed its identity: %+v, was %+v", again, lost)
	}
	var keys struct {
		MasterKeys map[string]struct {
			Keys map[string]string `json:"keys"`
		} `json:"master_keys"`
		DeviceKeys map[string]map[string]any `json:"device_keys"`
	}
	query := e.hsURL + "/_matrix/client/v3/keys/query?user_id=" + url.QueryEscape(lost.UserID)
	if code, err := e.request("POST", query, "Bearer "+h.asToken, map[string]any{"device_keys": map[string][]string{lost.UserID: {}}}, &keys); err != nil || code != 200 {
		t.Fatalf("querying %s's keys: %d %v", lost.UserID, code, err)
	}
	if got := keys.MasterKeys[lost.UserID].Keys; len(got) != 1 || got["ed25519:"+foreignKey] != foreignKey || len(keys.DeviceKeys[lost.UserID]) != 0 {
		t.Fatalf("heirloom touched the replaced identity or made a device for it: master %v, devices %v", got, keys.DeviceKeys[lost.UserID])
	}
	for _, l := range mark.lines(t) {
		if strings.Contains(l.str("message"), "Provisioned puppet") {
			t.Fatalf("heirloom provisioned a puppet anew: %v", l)
		}
	}
}
