package e2e

import (
	"fmt"
	"testing"
	"time"
)

// Devices an invitee adds between a puppet's invite and the join (history_sharing.redeliver_window).

// addDevice logs another device of the js user in; crossSigned has the user's first device sign it.
func addDevice(t *testing.T, u jsUser, crossSigned bool) jsUser {
	t.Helper()
	var d jsUser
	e.peer(t, "addDevice", map[string]any{"user": u.UserID, "cross_signed": crossSigned, "timeout_ms": 30000}, &d)
	return d
}

type deviceReport struct {
	DeviceID   string `json:"device_id"`
	Delivered  bool   `json:"delivered"`
	Reason     string `json:"reason"`
	AddedLater bool   `json:"added_later"`
}

// sentDevices returns the per-device report of one of the puppet's sent bundles.
func sentDevices(t *testing.T, h *instance, p puppetIdentity, bundleID string) map[string]deviceReport {
	t.Helper()
	var resp struct {
		Sent []struct {
			BundleID string         `json:"bundle_id"`
			Devices  []deviceReport `json:"devices"`
		} `json:"sent"`
	}
	h.apiOK(t, "GET", "/puppets/"+p.UserID+"/bundles", nil, &resp)
	out := map[string]deviceReport{}
	for _, b := range resp.Sent {
		if b.BundleID == bundleID {
			for _, d := range b.Devices {
				out[d.DeviceID] = d
			}
		}
	}
	return out
}

// waitDevice waits until the bundle's report has the device as want says.
func waitDevice(t *testing.T, p puppetIdentity, bundleID, deviceID string, want func(deviceReport) bool) deviceReport {
	t.Helper()
	var got deviceReport
	eventually(t, 30*time.Second, "device "+deviceID+" in the report of bundle "+bundleID, func() (bool, string) {
		devices := sentDevices(t, e.instance, p, bundleID)
		got = devices[deviceID]
		return want(got), fmt.Sprintf("%+v", devices)
	})
	return got
}

// bundleToDevice waits until the js user's device has received a bundle for the room over Olm.
func bundleToDevice(t *testing.T, u jsUser, device, roomID string) {
	t.Helper()
	eventually(t, 30*time.Second, "device "+device+" to receive the bundle", func() (bool, string) {
		var log struct {
			Messages []struct {
				RoomID    string `json:"room_id"`
				Encrypted bool   `json:"encrypted"`
			} `json:"messages"`
		}
		e.peer(t, "toDeviceLog", map[string]any{"user": u.UserID, "device": device, "type": "m.room_key_bundle"}, &log)
		for _, m := range log.Messages {
			if m.RoomID == roomID && m.Encrypted {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", log.Messages)
	})
}

// An invitee logs in on a new device after the invite, has it cross-signed, and accepts the invite
// there: the new device reads the history.
func TestNewDeviceOfInviteeReadsHistory(t *testing.T) {
	p := newPuppet(t)

	// While the invite is pending: the invitee shares a joined room with the puppet, so Synapse
	// tells heirloom of the invitee's device-list changes; the new device has the bundle before
	// it joins.
	t.Run("device list change before the join", func(t *testing.T) {
		u := newJSUser(t, true)
		other := puppetCreateRoom(t, p, "shared", u.UserID)
		e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": other}, nil)
		roomID := puppetCreateRoom(t, p, "shared")
		puppetSend(t, p, roomID, "history before the new device")
		delivered := e.metric(t, "heirloom_bundle_invite_to_delivered_seconds_count")
		sent := e.metric(t, `heirloom_bundles_sent_total{outcome="delivered"`)
		b := puppetInvite(t, p, roomID, u.UserID).Bundle
		if b.State != "delivered" || len(b.Devices) != 1 || !b.Devices[0].Delivered {
			t.Fatalf("the invite's bundle: %+v", b)
		}
		if d, s := e.metric(t, "heirloom_bundle_invite_to_delivered_seconds_count"), e.metric(t, `heirloom_bundles_sent_total{outcome="delivered"`); d != delivered+1 || s != sent+1 {
			t.Fatalf("one delivered bundle counted %v in the latency histogram and %v in heirloom_bundles_sent_total", d-delivered, s-sent)
		}
		redelivered := e.metric(t, "heirloom_bundle_redeliveries_total")

		phone := addDevice(t, u, true)
		d := waitDevice(t, p, b.BundleID, phone.DeviceID, func(d deviceReport) bool { return d.Delivered })
		if !d.AddedLater || d.Reason != "" {
			t.Fatalf("the new device's report: %+v", d)
		}
		bundleToDevice(t, u, phone.DeviceID, roomID)
		if n := e.metric(t, "heirloom_bundle_redeliveries_total"); n < redelivered+1 {
			t.Fatalf("heirloom_bundle_redeliveries_total went from %v to %v", redelivered, n)
		}
		e.peer(t, "join", map[string]any{"user": u.UserID, "device": phone.DeviceID, "room_id": roomID}, nil)
		jsDecrypted(t, u, phone.DeviceID, roomID, "history before the new device")
	})

	// The invitee shares no room with any of heirloom's users, so no device-list change reaches
	// heirloom: it looks at the invitee's devices when the invitee joins from the invite.
	t.Run("at the join from the invite", func(t *testing.T) {
		u := newJSUser(t, true)
		roomID := puppetCreateRoom(t, p, "shared")
		puppetSend(t, p, roomID, "history for a device added before the join")
		b := puppetInvite(t, p, roomID, u.UserID).Bundle
		if b.State != "delivered" {
			t.Fatalf("the invite's bundle: %+v", b)
		}
		unsigned := addDevice(t, u, false)
		phone := addDevice(t, u, true)
		mark := e.mark(t)
		e.peer(t, "join", map[string]any{"user": u.UserID, "device": phone.DeviceID, "room_id": roomID}, nil)
		jsDecrypted(t, u, phone.DeviceID, roomID, "history for a device added before the join")
		mark.wait(t, 10*time.Second, "the redelivery at the join", func(l logLine) bool {
			return msgIs("Delivered the invite's key bundle to devices the invitee added since", "bundle_id", b.BundleID)(l) && l["at_join"] == true
		})
		devices := sentDevices(t, e.instance, p, b.BundleID)
		if d := devices[phone.DeviceID]; !d.Delivered || !d.AddedLater {
			t.Fatalf("the signed new device's report: %+v", d)
		}
		if d := devices[unsigned.DeviceID]; d.Delivered || d.Reason != "device is not signed by the invitee's cross-signing identity" {
			t.Fatalf("the unsigned new device's report: %+v", d)
		}
	})

	// The invitee's identity changed after the invite: a device the new identity signs gets nothing.
	t.Run("identity changed", func(t *testing.T) {
		u := newJSUser(t, true)
		other := puppetCreateRoom(t, p, "shared", u.UserID)
		e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": other}, nil)
		roomID := puppetCreateRoom(t, p, "shared")
		puppetSend(t, p, roomID, "history the new identity must not get")
		b := puppetInvite(t, p, roomID, u.UserID).Bundle
		if b.State != "delivered" {
			t.Fatalf("the invite's bundle: %+v", b)
		}
		refused := e.metric(t, `heirloom_identity_changes_refused_total{where="redeliver"}`)
		e.peer(t, "resetCrossSigning", map[string]any{"user": u.UserID}, nil)
		phone := addDevice(t, u, true)
		d := waitDevice(t, p, b.BundleID, phone.DeviceID, func(d deviceReport) bool { return d.Reason != "" })
		if d.Delivered || d.Reason != "invitee's cross-signing identity changed since heirloom first saw it" || !d.AddedLater {
			t.Fatalf("the new device of the changed identity: %+v", d)
		}
		if n := e.metric(t, `heirloom_identity_changes_refused_total{where="redeliver"}`); n < refused+1 {
			t.Fatalf("heirloom_identity_changes_refused_total{where=\"redeliver\"} went from %v to %v", refused, n)
		}
	})
}
