package e2ee

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// BenchmarkSendMessage is heirloom's own part of a puppet's send into an encrypted room of 20
// members with one device each, every device already holding the room key (the steady state of
// make bench's send path, between two rotations): heirloom's work without the homeserver's, which answers /members and
// /send at once from memory. It reports messages per second and the key queries per message.
func BenchmarkSendMessage(b *testing.B) {
	ctx := context.Background()
	const members = 20
	roomID := id.RoomID("!bench:localhost")
	var queries, sends atomic.Int64
	var memberList []byte
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case strings.HasSuffix(r.URL.Path, "/members"):
			_, _ = w.Write(memberList)
		case strings.Contains(r.URL.Path, "/send/m.room.encrypted/"):
			n := sends.Add(1)
			_, _ = fmt.Fprintf(w, `{"event_id":"$event%d"}`, n)
		case r.URL.Path == "/_matrix/client/v3/keys/query":
			// As Synapse answers for users without devices yet: an empty list for each.
			queries.Add(1)
			var req mautrix.ReqQueryKeys
			_ = json.NewDecoder(r.Body).Decode(&req)
			resp := mautrix.RespQueryKeys{DeviceKeys: map[id.UserID]map[id.DeviceID]mautrix.DeviceKeys{}}
			for u := range req.DeviceKeys {
				resp.DeviceKeys[u] = map[id.DeviceID]mautrix.DeviceKeys{}
			}
			_ = json.NewEncoder(w).Encode(resp)
		default:
			http.NotFound(w, r)
		}
	}))
	b.Cleanup(hs.Close)
	hsURL, err := url.Parse(hs.URL)
	require.NoError(b, err)

	mgr, db := testManager(b)
	p := testPuppet(b, mgr, "sender")
	p.Client.HomeserverURL = hsURL
	users := make([]id.UserID, members)
	chunk := []*event.Event{memberEvent(p.UserID)}
	for i := range users {
		users[i] = id.UserID(fmt.Sprintf("@member%02d:localhost", i))
		chunk = append(chunk, memberEvent(users[i]))
	}
	memberList, err = json.Marshal(mautrix.RespMembers{Chunk: chunk})
	require.NoError(b, err)
	require.NoError(b, db.StateStore.SetCreate(ctx, &event.Event{Type: event.StateCreate, RoomID: roomID, StateKey: new(string),
		Content: event.Content{Parsed: &event.CreateEventContent{}}}))
	// No rotation by age or count inside the timed loop (a rotation shares the new key over Olm,
	// which this homeserver does not serve): the steady state between two rotations.
	require.NoError(b, db.StateStore.SetEncryptionEvent(ctx, roomID, &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1,
		RotationPeriodMillis: int64(24 * time.Hour / time.Millisecond), RotationPeriodMessages: 1 << 30}))
	require.NoError(b, db.StateStore.SetHistoryVisibility(ctx, roomID, &event.HistoryVisibilityEventContent{HistoryVisibility: event.HistoryVisibilityShared}))
	joined(b, db, roomID, append(users, p.UserID)...)

	// The first send creates the outbound session (nobody's devices known yet: one query, empty
	// lists). Then each member has a device that holds the session's key, as after its first share.
	_, err = p.SendMessage(ctx, roomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "first"})
	require.NoError(b, err)
	ogs, err := p.Store.GetOutboundGroupSession(ctx, roomID)
	require.NoError(b, err)
	require.NotNil(b, ogs)
	for _, u := range users {
		keys := signedDevice(b, u, "PHONE")
		device := &id.Device{UserID: u, DeviceID: "PHONE", IdentityKey: keys.Keys.GetCurve25519("PHONE"), SigningKey: keys.Keys.GetEd25519("PHONE")}
		require.NoError(b, mgr.shared.PutDevices(ctx, u, map[id.DeviceID]*id.Device{"PHONE": device}))
		require.NoError(b, p.Store.MarkOutboundGroupSessionShared(ctx, u, device.IdentityKey, ogs.ID()))
	}
	queries.Store(0)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		if _, err = p.SendMessage(ctx, roomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: fmt.Sprint("message ", i)}); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	after, err := p.Store.GetOutboundGroupSession(ctx, roomID)
	require.NoError(b, err)
	require.Equal(b, ogs.ID(), after.ID(), "no rotation in the steady state")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msg/s")
	b.ReportMetric(float64(queries.Load())/float64(b.N), "key-queries/msg")
}

func memberEvent(u id.UserID) *event.Event {
	stateKey := string(u)
	return &event.Event{Type: event.StateMember, StateKey: &stateKey, Sender: u, ID: id.EventID("$join-" + stateKey),
		Content: event.Content{Raw: map[string]any{"membership": "join"}}}
}
