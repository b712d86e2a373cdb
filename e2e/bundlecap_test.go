package e2e

import (
	"fmt"
	"strings"
	"testing"
)

// The bundle size limit is lowered to the homeserver's max_upload_size when that is smaller than
// history_sharing.max_bundle_size: with Synapse restarted at 200K (below the suite's 8 MiB cap), an
// invite whose bundle is larger is refused before anything is uploaded, naming that limit.
func TestBundleCapLoweredToHomeserverLimit(t *testing.T) {
	const limit = 200 << 10 // SYNAPSE_MAX_UPLOAD=200K
	p := newPuppet(t)
	u := newJSUser(t, true)
	roomID := puppetCreateRoom(t, p, "shared")
	fillPuppetSessions(t, p, roomID, 1000) // about 480 KB of bundle

	e.maxUpload = "200K"
	t.Cleanup(func() {
		e.maxUpload = synapseMaxUpload
		if err := e.synapse("restart"); err != nil {
			t.Errorf("restarting Synapse with max_upload_size %s: %v", synapseMaxUpload, err)
		}
	})
	if err := e.synapse("restart"); err != nil {
		t.Fatal(err)
	}
	var media struct {
		Size int64 `json:"m.upload.size"`
	}
	if code, err := e.request("GET", e.hsURL+"/_matrix/client/v1/media/config", "Bearer "+e.asToken, nil, &media); err != nil || code != 200 || media.Size != limit {
		t.Fatalf("Synapse's media config after the restart: %d %v %+v, want %d", code, err, media, limit)
	}

	var errResp struct {
		ErrCode string `json:"errcode"`
		Error   string `json:"error"`
	}
	code, err := e.api("POST", "/puppets/"+p.UserID+"/rooms/"+roomID+"/invite", map[string]any{"user_id": u.UserID}, &errResp)
	if err != nil || code != 413 || errResp.ErrCode != "M_TOO_LARGE" {
		t.Fatalf("an invite with a bundle over the homeserver's limit answered %d %+v %v, want 413 M_TOO_LARGE", code, errResp, err)
	}
	if !strings.Contains(errResp.Error, fmt.Sprint(limit)) {
		t.Fatalf("the refusal does not name the homeserver's limit %d: %q", limit, errResp.Error)
	}
	if strings.Contains(errResp.Error, fmt.Sprint(e2eMaxBundle)) {
		t.Fatalf("the refusal names the configured cap, not the homeserver's: %q", errResp.Error)
	}
	for _, sb := range puppetBundles(t, p).Sent {
		if sb.RoomID == roomID && sb.State != "failed" {
			t.Fatalf("a bundle over the limit: %+v", sb)
		}
	}
	var members struct {
		Chunk []struct {
			StateKey string `json:"state_key"`
		} `json:"chunk"`
	}
	path := fmt.Sprintf("%s/_matrix/client/v3/rooms/%s/members?user_id=%s", e.hsURL, roomID, p.UserID)
	if code, err = e.request("GET", path, "Bearer "+e.asToken, nil, &members); err != nil || code != 200 {
		t.Fatalf("members: %d %v", code, err)
	}
	for _, m := range members.Chunk {
		if m.StateKey == u.UserID {
			t.Fatal("the invite was sent although its bundle was refused")
		}
	}
}
