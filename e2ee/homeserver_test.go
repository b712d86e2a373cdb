package e2ee

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/internal/tesths"
)

// homeserver is the homeserver puppets are provisioned on and talk through: registration and
// devices, device keys, one-time keys, cross-signing keys and signatures as they are uploaded,
// to-device messages (kept in each device's inbox for /sync), and rooms with their members, state
// and timeline. Any operation (see operation) can be made to fail.
type homeserver struct {
	*httptest.Server
	mu sync.Mutex
	// Keys holds the device, one-time and cross-signing keys.
	tesths.Keys
	// uploads counts the one-time keys each /keys/upload that carried some carried, in order;
	// created lists the devices created (MSC4190), in order.
	uploads []int
	created []id.DeviceID
	// toDevice holds every to-device message sent; inbox what each device has not synced.
	toDevice []sentToDevice
	inbox    map[id.UserID]map[id.DeviceID][]*event.Event
	rooms    map[id.RoomID]*hsRoom
	// fail makes an operation answer with this HTTP status (and errcode, if set in failCode).
	fail     map[string]int
	failCode map[string]string
	serial   int
}

// hsRoom is a room's state (by type and state key) and timeline, as the homeserver holds them.
type hsRoom struct {
	state    map[string]map[string]*event.Event
	timeline []*event.Event
	txns     map[string]id.EventID
}

// sentToDevice is one to-device message as the homeserver took it.
type sentToDevice struct {
	sender    id.UserID
	eventType event.Type
	to        id.UserID
	device    id.DeviceID
	content   json.RawMessage
}

func newHomeserver(t *testing.T) *homeserver {
	t.Helper()
	hs := &homeserver{Keys: tesths.NewKeys(),
		inbox: map[id.UserID]map[id.DeviceID][]*event.Event{}, rooms: map[id.RoomID]*hsRoom{},
		fail: map[string]int{}, failCode: map[string]string{}}
	hs.Server = httptest.NewServer(http.HandlerFunc(hs.serve))
	t.Cleanup(hs.Close)
	return hs
}

// operation names what a request asks for.
func operation(r *http.Request) string {
	path := r.URL.Path
	for _, op := range []struct{ suffix, name string }{
		{"/register", "register"}, {"/keys/upload", "keys/upload"}, {"/keys/device_signing/upload", "keys/device_signing/upload"},
		{"/keys/signatures/upload", "keys/signatures/upload"}, {"/keys/query", "keys/query"}, {"/keys/claim", "keys/claim"},
		{"/sync", "sync"}, {"/members", "members"}, {"/messages", "messages"}, {"/state", "state"}, {"/displayname", "displayname"},
	} {
		if strings.HasSuffix(path, op.suffix) {
			return op.name
		}
	}
	for _, op := range []struct{ part, name string }{
		{"/v3/devices/", "device"}, {"/sendToDevice/", "sendToDevice"}, {"/state/", "state event"}, {"/send/", "send"},
	} {
		if strings.Contains(path, op.part) {
			return op.name
		}
	}
	return ""
}

func (hs *homeserver) serve(w http.ResponseWriter, r *http.Request) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	op := operation(r)
	if status := hs.fail[op]; status != 0 {
		writeError(w, status, hs.failCode[op])
		return
	}
	user, device := id.UserID(r.URL.Query().Get("user_id")), id.DeviceID(r.URL.Query().Get("device_id"))
	var answer any = map[string]any{}
	switch op {
	case "device":
		hs.created = append(hs.created, id.DeviceID(r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]))
	case "keys/upload":
		var uploaded int
		answer, uploaded = hs.Upload(r, user, device)
		if uploaded > 0 {
			hs.uploads = append(hs.uploads, uploaded)
		}
	case "keys/device_signing/upload":
		hs.UploadCrossSigning(r, user)
	case "keys/signatures/upload":
		hs.UploadSignatures(r)
		answer = map[string]any{"failures": map[string]any{}}
	case "keys/query":
		answer = hs.Query(r)
	case "keys/claim":
		answer = hs.Claim(r)
	case "sendToDevice":
		hs.takeToDevice(r, user)
	case "sync":
		events := hs.inbox[user][device]
		delete(hs.inbox[user], device)
		hs.serial++
		answer = map[string]any{"next_batch": fmt.Sprintf("s%d", hs.serial), "to_device": map[string]any{"events": events}}
	case "members", "messages", "state", "state event", "send":
		answer = hs.serveRoom(w, r, op, user)
	}
	if answer != nil {
		_ = json.NewEncoder(w).Encode(answer)
	}
}

func writeError(w http.ResponseWriter, status int, code string) {
	if code == "" {
		code = map[int]string{http.StatusNotFound: "M_NOT_FOUND", http.StatusForbidden: "M_FORBIDDEN"}[status]
	}
	if code == "" {
		code = "M_UNKNOWN"
	}
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, `{"errcode":%q,"error":"the test homeserver says no"}`, code)
}

// do changes the homeserver's state under its lock.
func (hs *homeserver) do(change func(hs *homeserver)) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	change(hs)
}

// forgetDevice deletes the device and its keys, as Synapse does when it prunes a device.
func (hs *homeserver) forgetDevice(user id.UserID, device id.DeviceID) {
	hs.do(func(hs *homeserver) {
		delete(hs.Part(user).DeviceKeys[user], device)
		delete(hs.OTKs[user], device)
		delete(hs.Fallback[user], device)
	})
}

func (hs *homeserver) takeToDevice(r *http.Request, sender id.UserID) {
	var req struct {
		Messages map[id.UserID]map[id.DeviceID]json.RawMessage `json:"messages"`
	}
	_ = json.NewDecoder(r.Body).Decode(&req)
	rest := r.URL.Path[strings.Index(r.URL.Path, "/sendToDevice/")+len("/sendToDevice/"):]
	evtType := event.Type{Type: rest[:strings.IndexByte(rest, '/')], Class: event.ToDeviceEventType}
	for user, devices := range req.Messages {
		for device, content := range devices {
			hs.toDevice = append(hs.toDevice, sentToDevice{sender: sender, eventType: evtType, to: user, device: device, content: content})
			if hs.inbox[user] == nil {
				hs.inbox[user] = map[id.DeviceID][]*event.Event{}
			}
			hs.inbox[user][device] = append(hs.inbox[user][device], &event.Event{Sender: sender, Type: evtType,
				Content: event.Content{VeryRaw: content}})
		}
	}
}

// sentTo returns the to-device messages of the type sent to the user's device.
func (hs *homeserver) sentTo(eventType event.Type, user id.UserID, device id.DeviceID) []sentToDevice {
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

// roomOf returns the room, created if new.
func (hs *homeserver) roomOf(roomID id.RoomID) *hsRoom {
	rm := hs.rooms[roomID]
	if rm == nil {
		rm = &hsRoom{state: map[string]map[string]*event.Event{}, txns: map[string]id.EventID{}}
		hs.rooms[roomID] = rm
	}
	return rm
}

// setState sets a state event of the room, sent by sender.
func (hs *homeserver) setState(roomID id.RoomID, sender id.UserID, evtType event.Type, stateKey string, content map[string]any) {
	hs.do(func(hs *homeserver) {
		rm := hs.roomOf(roomID)
		hs.serial++
		raw, _ := json.Marshal(content)
		evt := &event.Event{ID: id.EventID(fmt.Sprintf("$state%d", hs.serial)), Type: evtType, RoomID: roomID, Sender: sender,
			StateKey: &stateKey, Timestamp: int64(hs.serial), Content: event.Content{VeryRaw: raw}}
		if rm.state[evtType.Type] == nil {
			rm.state[evtType.Type] = map[string]*event.Event{}
		}
		rm.state[evtType.Type][stateKey] = evt
		rm.timeline = append(rm.timeline, evt)
	})
}

// setMember sets the user's membership in the room.
func (hs *homeserver) setMember(roomID id.RoomID, user id.UserID, membership event.Membership) {
	hs.setState(roomID, user, event.StateMember, user.String(), map[string]any{"membership": membership})
}

func (hs *homeserver) serveRoom(w http.ResponseWriter, r *http.Request, op string, user id.UserID) any {
	rest := r.URL.Path[strings.Index(r.URL.Path, "/rooms/")+len("/rooms/"):]
	roomID := id.RoomID(rest[:strings.IndexByte(rest, '/')])
	rm, ok := hs.rooms[roomID]
	if !ok {
		writeError(w, http.StatusForbidden, "")
		return nil
	}
	switch op {
	case "members":
		var chunk []*event.Event
		for _, evt := range rm.state[event.StateMember.Type] {
			chunk = append(chunk, evt)
		}
		return map[string]any{"chunk": chunk}
	case "state":
		var all []*event.Event
		for _, byKey := range rm.state {
			for _, evt := range byKey {
				all = append(all, evt)
			}
		}
		return all
	case "state event":
		parts := strings.SplitN(rest[strings.Index(rest, "/state/")+len("/state/"):], "/", 2)
		if len(parts) < 2 {
			parts = append(parts, "")
		}
		evt := rm.state[parts[0]][parts[1]]
		if evt == nil {
			writeError(w, http.StatusNotFound, "")
			return nil
		}
		if r.URL.Query().Get("format") == "event" {
			return evt
		}
		return evt.Content.VeryRaw
	case "send":
		return hs.send(r, rm, roomID, user, rest)
	default: // messages, newest first
		chunk := make([]*event.Event, 0, len(rm.timeline))
		for i := len(rm.timeline) - 1; i >= 0; i-- {
			chunk = append(chunk, rm.timeline[i])
		}
		return map[string]any{"chunk": chunk, "start": "t0"}
	}
}

func (hs *homeserver) send(r *http.Request, rm *hsRoom, roomID id.RoomID, sender id.UserID, rest string) any {
	parts := strings.Split(rest[strings.Index(rest, "/send/")+len("/send/"):], "/")
	txn := string(sender) + "|" + parts[1]
	if eventID, ok := rm.txns[txn]; ok {
		return map[string]any{"event_id": eventID}
	}
	body, _ := io.ReadAll(r.Body)
	hs.serial++
	evt := &event.Event{ID: id.EventID(fmt.Sprintf("$event%d", hs.serial)), Type: event.Type{Type: parts[0], Class: event.MessageEventType},
		RoomID: roomID, Sender: sender, Timestamp: int64(hs.serial), Content: event.Content{VeryRaw: body}}
	rm.timeline = append(rm.timeline, evt)
	rm.txns[txn] = evt.ID
	return map[string]any{"event_id": evt.ID}
}

// timeline returns the room's events of the type, oldest first.
func (hs *homeserver) timeline(roomID id.RoomID, evtType event.Type) []*event.Event {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	var out []*event.Event
	for _, evt := range hs.roomOf(roomID).timeline {
		if evt.Type.Type == evtType.Type {
			out = append(out, evt)
		}
	}
	return out
}

func mustParse(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err)
	return u
}
