package history

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/internal/tesths"
)

// deliveryHomeserver is the homeserver of benchRoom as both sides of MSC4268 use it: puppets
// provisioned on it (registration, device, keys, cross-signing, signatures), the members' state
// events, the room's history visibility, the users' device keys and one-time keys, media uploads
// and downloads, to-device messages (kept in each device's inbox for /sync), invites and joins. It records the requests that send something, in order, and answers any operation with an
// error when told to (fail).
type deliveryHomeserver struct {
	*httptest.Server
	mu sync.Mutex
	// members holds each user's current member event in benchRoom (none: 404).
	members map[id.UserID]map[string]any
	// visibility is the room's history visibility ("": no such state event, 404).
	visibility event.HistoryVisibility
	// Keys holds the device, one-time and cross-signing keys.
	tesths.Keys
	// uploadLimit is the media repository's m.upload.size (0: not said).
	uploadLimit int64
	media       map[string][]byte
	downloads   int
	// toDevice holds every to-device message sent, inbox what each device has not synced yet.
	toDevice []sentToDevice
	inbox    map[id.UserID]map[id.DeviceID][]*event.Event
	// sent lists the operations that sent something (upload, sendToDevice, invite, join), in order.
	sent []string
	// fail makes an operation (see operation) answer with this HTTP status.
	fail map[string]int
	// holds keeps the next request of an operation waiting until the test releases it.
	holds  map[string]*heldRequest
	events int
}

// heldRequest is a request the homeserver keeps waiting: arrived is closed when it comes, and it
// is answered with status once release is closed.
type heldRequest struct {
	arrived, release chan struct{}
	status           int
	once             sync.Once
}

// let answers the held request.
func (h *heldRequest) let() { h.once.Do(func() { close(h.release) }) }

// hold keeps the next request of the operation waiting, until the test's end at the latest, and
// then answers it with status.
func (hs *deliveryHomeserver) hold(t *testing.T, op string, status int) *heldRequest {
	h := &heldRequest{arrived: make(chan struct{}), release: make(chan struct{}), status: status}
	hs.do(func(hs *deliveryHomeserver) { hs.holds[op] = h })
	t.Cleanup(h.let)
	return h
}

// sentToDevice is one to-device message as the homeserver took it.
type sentToDevice struct {
	sender    id.UserID
	eventType event.Type
	to        id.UserID
	device    id.DeviceID
	content   *event.Content
}

func newDeliveryHomeserver(t *testing.T) *deliveryHomeserver {
	t.Helper()
	hs := &deliveryHomeserver{members: map[id.UserID]map[string]any{}, Keys: tesths.NewKeys(),
		media: map[string][]byte{},
		inbox: map[id.UserID]map[id.DeviceID][]*event.Event{}, fail: map[string]int{},
		holds: map[string]*heldRequest{}}
	hs.Server = httptest.NewServer(http.HandlerFunc(hs.serve))
	t.Cleanup(hs.Close)
	return hs
}

// operation names what a request asks for ("" if the room's homeserver does not serve it).
func operation(r *http.Request) string {
	path := r.URL.Path
	switch {
	case strings.HasSuffix(path, "/register"):
		return "register"
	case strings.Contains(path, "/v3/devices/"):
		return "device"
	case strings.HasSuffix(path, "/keys/upload"):
		return "keys/upload"
	case strings.HasSuffix(path, "/keys/device_signing/upload"):
		return "keys/device_signing/upload"
	case strings.HasSuffix(path, "/keys/signatures/upload"):
		return "keys/signatures/upload"
	case strings.Contains(path, "/state/m.room.member/"):
		return "member"
	case strings.Contains(path, "/state/m.room.history_visibility"):
		return "visibility"
	case strings.HasSuffix(path, "/keys/query"):
		return "keys/query"
	case strings.HasSuffix(path, "/keys/claim"):
		return "keys/claim"
	case strings.HasSuffix(path, "/media/v3/upload"):
		return "upload"
	case strings.Contains(path, "/media/download/"):
		return "download"
	case strings.HasSuffix(path, "/media/config"):
		return "media/config"
	case strings.Contains(path, "/sendToDevice/"):
		return "sendToDevice"
	case strings.HasSuffix(path, "/invite"):
		return "invite"
	case strings.HasSuffix(path, "/join"):
		return "join"
	case strings.HasSuffix(path, "/sync"):
		return "sync"
	}
	return ""
}

func (hs *deliveryHomeserver) serve(w http.ResponseWriter, r *http.Request) {
	op := operation(r)
	w.Header().Set("Content-Type", "application/json")
	hs.mu.Lock()
	held := hs.holds[op]
	delete(hs.holds, op)
	hs.mu.Unlock()
	if held != nil {
		close(held.arrived)
		<-held.release
		writeMatrixError(w, held.status)
		return
	}
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if status := hs.fail[op]; status != 0 {
		writeMatrixError(w, status)
		return
	}
	acting := id.UserID(r.URL.Query().Get("user_id"))
	var answer any
	switch op {
	case "register", "device":
		answer = map[string]any{}
	case "keys/upload":
		answer, _ = hs.Upload(r, acting, id.DeviceID(r.URL.Query().Get("device_id")))
	case "keys/device_signing/upload":
		hs.UploadCrossSigning(r, acting)
		answer = map[string]any{}
	case "keys/signatures/upload":
		hs.UploadSignatures(r)
		answer = map[string]any{"failures": map[string]any{}}
	case "member":
		_, user, _ := strings.Cut(r.URL.Path, "/state/m.room.member/")
		if evt := hs.members[id.UserID(user)]; evt != nil {
			answer = evt
		}
	case "visibility":
		if hs.visibility != "" {
			answer = map[string]any{"history_visibility": hs.visibility}
		}
	case "keys/query":
		answer = hs.Query(r)
	case "keys/claim":
		answer = hs.Claim(r)
	case "upload":
		body, _ := io.ReadAll(r.Body)
		mediaID := fmt.Sprintf("media%d", len(hs.media))
		hs.media[mediaID] = body
		hs.sent = append(hs.sent, op)
		answer = map[string]any{"content_uri": "mxc://localhost/" + mediaID}
	case "download":
		hs.download(w, r)
		return
	case "media/config":
		answer = map[string]any{}
		if hs.uploadLimit > 0 {
			answer = map[string]any{"m.upload.size": hs.uploadLimit}
		}
	case "sendToDevice":
		hs.takeToDevice(r, acting)
		answer = map[string]any{}
	case "invite":
		var req mautrix.ReqInviteUser
		_ = json.NewDecoder(r.Body).Decode(&req)
		hs.sent = append(hs.sent, op)
		hs.setMembership(req.UserID, acting, event.MembershipInvite)
		answer = map[string]any{}
	case "join":
		hs.sent = append(hs.sent, op)
		hs.setMembership(acting, acting, event.MembershipJoin)
		answer = map[string]any{"room_id": benchRoom}
	case "sync":
		answer = hs.sync(r, acting)
	}
	if answer == nil {
		writeMatrixError(w, http.StatusNotFound)
		return
	}
	_ = json.NewEncoder(w).Encode(answer)
}

func writeMatrixError(w http.ResponseWriter, status int) {
	code := map[int]string{http.StatusNotFound: "M_NOT_FOUND", http.StatusForbidden: "M_FORBIDDEN",
		http.StatusRequestEntityTooLarge: "M_TOO_LARGE"}[status]
	if code == "" {
		code = "M_UNKNOWN"
	}
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, `{"errcode":%q,"error":"the test homeserver says no"}`, code)
}

// setMembership makes a new member event of user, sent by sender; a join names what it replaced
// in unsigned, as Synapse does.
func (hs *deliveryHomeserver) setMembership(user, sender id.UserID, membership event.Membership) {
	hs.events++
	evt := map[string]any{"type": "m.room.member", "event_id": fmt.Sprintf("$%s-%d", membership, hs.events), "sender": sender,
		"state_key": user, "room_id": benchRoom, "content": map[string]any{"membership": membership}}
	if prev := hs.members[user]; prev != nil {
		evt["unsigned"] = map[string]any{"replaces_state": prev["event_id"], "prev_sender": prev["sender"],
			"prev_content": prev["content"]}
	}
	hs.members[user] = evt
}

// set makes the invitee's member event one of membership by sender, with the event ID, and sets
// the room's history visibility.
func (hs *deliveryHomeserver) set(invitee, sender id.UserID, eventID id.EventID, membership event.Membership, replaces id.EventID,
	visibility event.HistoryVisibility) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.members[invitee] = map[string]any{"type": "m.room.member", "event_id": eventID, "sender": sender, "state_key": invitee,
		"room_id": benchRoom, "content": map[string]any{"membership": membership},
		"unsigned": map[string]any{"replaces_state": replaces}}
	hs.visibility = visibility
}

// member returns the user's current member event ID and membership.
func (hs *deliveryHomeserver) member(user id.UserID) (id.EventID, event.Membership) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	evt := hs.members[user]
	if evt == nil {
		return "", ""
	}
	eventID, _ := evt["event_id"].(string)
	return id.EventID(eventID), evt["content"].(map[string]any)["membership"].(event.Membership)
}

// publish makes the signer's identity and devices what /keys/query answers for the user, and
// gives each device one one-time key to claim.
func (hs *deliveryHomeserver) publish(t *testing.T, c *crossSigner, withIdentity bool) {
	t.Helper()
	answer, otks := c.query(t, withIdentity), c.oneTimeKeys(t)
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.Parts[c.user] = &answer
	hs.OTKs[c.user] = otks
}

// do changes the homeserver's state under its lock.
func (hs *deliveryHomeserver) do(change func(hs *deliveryHomeserver)) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	change(hs)
}

func (hs *deliveryHomeserver) download(w http.ResponseWriter, r *http.Request) {
	hs.downloads++
	body, ok := hs.media[r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]]
	if !ok {
		writeMatrixError(w, http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	_, _ = w.Write(body)
}

func (hs *deliveryHomeserver) takeToDevice(r *http.Request, sender id.UserID) {
	var req mautrix.ReqSendToDevice
	_ = json.NewDecoder(r.Body).Decode(&req)
	rest := r.URL.Path[strings.Index(r.URL.Path, "/sendToDevice/")+len("/sendToDevice/"):]
	evtType := event.Type{Type: rest[:strings.IndexByte(rest, '/')], Class: event.ToDeviceEventType}
	hs.sent = append(hs.sent, "sendToDevice")
	for user, devices := range req.Messages {
		for device, content := range devices {
			hs.toDevice = append(hs.toDevice, sentToDevice{sender: sender, eventType: evtType, to: user, device: device, content: content})
			if hs.inbox[user] == nil {
				hs.inbox[user] = map[id.DeviceID][]*event.Event{}
			}
			hs.inbox[user][device] = append(hs.inbox[user][device], &event.Event{Sender: sender, Type: evtType,
				Content: event.Content{VeryRaw: content.VeryRaw}})
		}
	}
}

// sync hands the device the to-device messages in its inbox, once.
func (hs *deliveryHomeserver) sync(r *http.Request, user id.UserID) map[string]any {
	device := id.DeviceID(r.URL.Query().Get("device_id"))
	events := hs.inbox[user][device]
	delete(hs.inbox[user], device)
	hs.events++
	return map[string]any{"next_batch": fmt.Sprintf("s%d", hs.events), "to_device": map[string]any{"events": events}}
}

// sentTo returns the to-device messages of the type sent to the user's device.
func (hs *deliveryHomeserver) sentTo(eventType event.Type, user id.UserID, device id.DeviceID) []sentToDevice {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	var out []sentToDevice
	for _, m := range hs.toDevice {
		if m.eventType == eventType && m.to == user && m.device == device {
			out = append(out, m)
		}
	}
	return out
}

// sentOps returns the operations that sent something so far, in order.
func (hs *deliveryHomeserver) sentOps() []string {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return append([]string(nil), hs.sent...)
}
