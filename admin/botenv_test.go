package admin

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/testdb"
)

// fakeHomeserver answers what the bot asks of the homeserver while it answers messages, and
// reports the bot's room events and to-device messages.
type fakeHomeserver struct {
	*httptest.Server
	// sent carries the events the bot sends into rooms; toDevice the types of the to-device
	// messages it sends.
	sent       chan sentEvent
	toDevice   chan string
	events     atomic.Int64
	mu         sync.Mutex
	unexpected []string
	// members are the joined members of each room.
	members map[id.RoomID][]id.UserID
	// encrypted are the rooms with an m.room.encryption event.
	encrypted map[id.RoomID]bool
	// joined are the rooms each user is joined to, as /joined_rooms answers (a user not in it: the request fails).
	joined map[id.UserID][]id.RoomID
	// memberships carries the bot's joins ("join !room") and leaves ("leave !room: reason").
	memberships chan string
}

func newFakeHomeserver(t *testing.T, bot id.UserID) *fakeHomeserver {
	hs := &fakeHomeserver{sent: make(chan sentEvent, 64), toDevice: make(chan string, 64), members: map[id.RoomID][]id.UserID{}, encrypted: map[id.RoomID]bool{},
		joined: map[id.UserID][]id.RoomID{}, memberships: make(chan string, 16)}
	hs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		path := r.URL.Path
		switch {
		case r.Method == http.MethodGet && strings.HasSuffix(path, "/members"):
			_ = json.NewEncoder(w).Encode(map[string]any{"chunk": hs.memberEvents(roomOf(path))})
		case r.Method == http.MethodGet && strings.Contains(path, "/state/m.room.encryption"):
			hs.mu.Lock()
			encrypted := hs.encrypted[roomOf(path)]
			hs.mu.Unlock()
			if !encrypted {
				w.WriteHeader(http.StatusNotFound)
				_, _ = w.Write([]byte(`{"errcode":"M_NOT_FOUND","error":"Event not found."}`))
				return
			}
			_, _ = w.Write([]byte(`{"algorithm":"m.megolm.v1.aes-sha2"}`))
		case r.Method == http.MethodGet && strings.Contains(path, "/state/m.room.member/"):
			_ = json.NewEncoder(w).Encode(map[string]any{"membership": hs.membership(roomOf(path), id.UserID(path[strings.LastIndex(path, "/")+1:]))})
		case r.Method == http.MethodGet && strings.HasSuffix(path, "/joined_rooms"):
			hs.mu.Lock()
			rooms, ok := hs.joined[id.UserID(r.URL.Query().Get("user_id"))]
			hs.mu.Unlock()
			if !ok {
				w.WriteHeader(http.StatusInternalServerError)
				_, _ = w.Write([]byte(`{"errcode":"M_UNKNOWN","error":"Internal server error"}`))
				return
			}
			_ = json.NewEncoder(w).Encode(map[string]any{"joined_rooms": append([]id.RoomID{}, rooms...)})
		case r.Method == http.MethodGet && strings.HasSuffix(path, "/state"):
			_ = json.NewEncoder(w).Encode(hs.stateEvents(roomOf(path)))
		case r.Method == http.MethodPost && (strings.HasSuffix(path, "/join") || strings.Contains(path, "/join/")):
			room := roomOf(path)
			if room == "" {
				room = id.RoomID(path[strings.LastIndex(path, "/")+1:])
			}
			hs.memberships <- "join " + room.String()
			_ = json.NewEncoder(w).Encode(map[string]any{"room_id": room})
		case r.Method == http.MethodPost && strings.HasSuffix(path, "/leave"):
			var leave struct {
				Reason string `json:"reason"`
			}
			_ = json.Unmarshal(body, &leave)
			hs.memberships <- "leave " + roomOf(path).String() + ": " + leave.Reason
			_, _ = w.Write([]byte(`{}`))
		case r.Method == http.MethodPut && strings.Contains(path, "/send/"):
			hs.sent <- sentEvent{room: roomOf(path), body: body}
			_, _ = fmt.Fprintf(w, `{"event_id":"$answer%d"}`, hs.events.Add(1))
		case r.Method == http.MethodPut && strings.Contains(path, "/sendToDevice/"):
			eventType, _, _ := strings.Cut(path[strings.Index(path, "/sendToDevice/")+len("/sendToDevice/"):], "/")
			hs.toDevice <- eventType
			_, _ = w.Write([]byte(`{}`))
		case r.Method == http.MethodPost && strings.HasSuffix(path, "/keys/query"):
			// Devices the bot does not know yet are nobody's.
			_, _ = w.Write([]byte(`{"device_keys":{}}`))
		case r.Method == http.MethodPost && strings.HasSuffix(path, "/keys/claim"):
			// No one-time keys: the bot's answers reach the members' devices with the next key share.
			_, _ = w.Write([]byte(`{"one_time_keys":{}}`))
		default:
			hs.mu.Lock()
			hs.unexpected = append(hs.unexpected, r.Method+" "+path)
			hs.mu.Unlock()
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errcode":"M_UNRECOGNIZED","error":"not in the fake homeserver"}`))
		}
	}))
	t.Cleanup(hs.Close)
	return hs
}

// roomOf returns the room of a /rooms/{roomID}/... path.
func roomOf(path string) id.RoomID {
	_, rest, _ := strings.Cut(path, "/rooms/")
	room, _, _ := strings.Cut(rest, "/")
	return id.RoomID(room)
}

func (hs *fakeHomeserver) memberEvents(roomID id.RoomID) []map[string]any {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	var chunk []map[string]any
	for _, u := range hs.members[roomID] {
		chunk = append(chunk, map[string]any{"type": "m.room.member", "state_key": u, "sender": u, "room_id": roomID,
			"event_id": "$join-" + u.Localpart(), "content": map[string]any{"membership": "join"}})
	}
	return chunk
}

// membership is the user's membership of the room: joined if a member, else never joined.
func (hs *fakeHomeserver) membership(roomID id.RoomID, userID id.UserID) event.Membership {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if slices.Contains(hs.members[roomID], userID) {
		return event.MembershipJoin
	}
	return event.MembershipLeave
}

// stateEvents is the room's state as GET /state answers it: its creation, its members and, if it
// is encrypted, its encryption.
func (hs *fakeHomeserver) stateEvents(roomID id.RoomID) []map[string]any {
	state := append(hs.memberEvents(roomID), map[string]any{"type": "m.room.create", "state_key": "", "sender": testAdmin,
		"room_id": roomID, "event_id": "$create", "content": map[string]any{"room_version": "11"}})
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if hs.encrypted[roomID] {
		state = append(state, map[string]any{"type": "m.room.encryption", "state_key": "", "sender": testAdmin, "room_id": roomID,
			"event_id": "$encryption", "content": map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}})
	}
	return state
}

type sentEvent struct {
	room id.RoomID
	body []byte
}

// botEnv is heirloom's bot with its device, on a fresh database, in front of a fake homeserver.
type botEnv struct {
	bot *Bot
	db  *database.Database
	hs  *fakeHomeserver
	// machine is the bot's own device.
	machine *e2ee.Puppet
	// selfSigning holds each user's self-signing key, once the user has a cross-signing identity.
	selfSigning map[id.UserID]id.Ed25519
}

const (
	testAdmin  id.UserID = "@admin:localhost"
	testAdmin2 id.UserID = "@admin2:localhost"
	stranger   id.UserID = "@stranger:localhost"
)

func newBotEnv(t *testing.T) *botEnv {
	t.Helper()
	ctx := context.Background()
	botID := id.UserID("@heirloombot:localhost")
	hs := newFakeHomeserver(t, botID)
	cfg := &config.Config{
		Homeserver: config.Homeserver{Address: hs.URL, Domain: "localhost"},
		AppService: config.AppService{Address: "http://127.0.0.1:29400", Hostname: "127.0.0.1", Port: 29400, ID: "heirloom",
			BotUsername: "heirloombot", PuppetPrefix: "heirloom_", ASToken: "as-token-0123456789abcdef", HSToken: "hs-token-0123456789abcdef"},
		Database:       testdb.SQLite(t),
		Encryption:     config.Encryption{PickleKey: "pickle-key-0123456789abcdef"},
		Provisioning:   config.Provisioning{SharedSecret: "api-secret-0123456789abcdef"},
		HistorySharing: config.HistorySharing{ShareOnInvite: true, AcceptWindow: 24 * time.Hour, MaxBundleSize: 1 << 20},
		Logging:        config.Logging{Level: "info", Format: "json"},
		Admins:         []string{string(testAdmin), string(testAdmin2)},
	}
	require.NoError(t, cfg.Validate())
	db, err := database.Open(cfg.Database, zerolog.Nop())
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	require.NoError(t, db.Upgrade(ctx))
	e2ee.RegisterContentTypes()
	mgr, err := e2ee.NewManager(cfg, db, &http.Client{Timeout: 10 * time.Second}, zerolog.Nop())
	require.NoError(t, err)
	require.NoError(t, db.PutPuppet(ctx, &database.Puppet{UserID: botID, DeviceID: "BOTDEVICE", Ready: true}))
	b := New(cfg, db, mgr, nil, "test")
	b.provOnce.Do(func() { close(b.provisioned) })
	machine, err := mgr.Get(ctx, botID)
	require.NoError(t, err)
	return &botEnv{bot: b, db: db, hs: hs, machine: machine, selfSigning: map[id.UserID]id.Ed25519{}}
}

// room makes an encrypted room the bot knows, with the bot and the members joined.
func (env *botEnv) room(t *testing.T, roomID id.RoomID, members ...id.UserID) {
	t.Helper()
	require.NoError(t, env.db.StateStore.SetEncryptionEvent(context.Background(), roomID,
		&event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}))
	env.hs.mu.Lock()
	env.hs.encrypted[roomID] = true
	env.hs.mu.Unlock()
	env.clearRoom(t, roomID, members...)
}

// clearRoom makes a room without encryption the bot knows, with the bot and the members joined.
func (env *botEnv) clearRoom(t *testing.T, roomID id.RoomID, members ...id.UserID) {
	t.Helper()
	ctx := context.Background()
	state := env.db.StateStore
	require.NoError(t, state.SetCreate(ctx, &event.Event{Type: event.StateCreate, RoomID: roomID, StateKey: new(string),
		Content: event.Content{Parsed: &event.CreateEventContent{}}}))
	members = append(members, env.bot.userID)
	for _, u := range members {
		require.NoError(t, state.SetMembership(ctx, roomID, u, event.MembershipJoin))
	}
	env.hs.mu.Lock()
	env.hs.members[roomID] = members
	env.hs.mu.Unlock()
}

// device is one device of a user, with a megolm session it writes a room's events with.
type device struct {
	user     id.UserID
	id       id.DeviceID
	identity id.SenderKey
	signing  id.Ed25519
	room     id.RoomID
	session  *crypto.OutboundGroupSession
	// key is the session's key before its first message.
	key  string
	sent int
}

// newSession starts the device's megolm session.
func (d *device) newSession(t *testing.T) {
	t.Helper()
	var err error
	d.session, err = crypto.NewOutboundGroupSession(d.room, nil, nil)
	require.NoError(t, err)
	d.session.Shared = true
	d.session.MaxMessages = 1 << 20
	d.key = d.session.Internal.Key()
}

func randomKey() string {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	return base64.RawStdEncoding.EncodeToString(key)
}

// device returns a device of user writing in roomID that the bot knows of: signed by the user's
// cross-signing identity (trusted on first use, as heirloom does) if crossSigned.
func (env *botEnv) device(t *testing.T, user id.UserID, roomID id.RoomID, crossSigned bool) *device {
	t.Helper()
	ctx := context.Background()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	d := &device{user: user, id: id.DeviceID("DEV" + strings.ToUpper(randomKey()[:6])), identity: id.SenderKey(randomKey()),
		signing: id.Ed25519(base64.RawStdEncoding.EncodeToString(pub)), room: roomID}
	d.newSession(t)
	store := env.machine.Store
	require.NoError(t, store.PutDevice(ctx, user, &id.Device{UserID: user, DeviceID: d.id, IdentityKey: d.identity, SigningKey: d.signing}))
	if crossSigned {
		require.NoError(t, store.PutSignature(ctx, user, d.signing, user, env.identity(t, user), "self-signing signs the device"))
	}
	return d
}

// identity gives the user a cross-signing identity the bot has seen (the first it saw of the
// user), and returns its self-signing key.
func (env *botEnv) identity(t *testing.T, user id.UserID) id.Ed25519 {
	t.Helper()
	if ssk, ok := env.selfSigning[user]; ok {
		return ssk
	}
	ctx := context.Background()
	store := env.machine.Store
	master, selfSigning := id.Ed25519(randomKey()), id.Ed25519(randomKey())
	require.NoError(t, store.PutCrossSigningKey(ctx, user, id.XSUsageMaster, master))
	require.NoError(t, store.PutCrossSigningKey(ctx, user, id.XSUsageSelfSigning, selfSigning))
	require.NoError(t, store.PutSignature(ctx, user, selfSigning, user, master, "master signs self-signing"))
	env.selfSigning[user] = selfSigning
	return selfSigning
}

// unknownDevice returns a device of user writing in roomID that the bot has never heard of.
func unknownDevice(t *testing.T, user id.UserID, roomID id.RoomID) *device {
	t.Helper()
	d := &device{user: user, id: "NEWDEVICE", identity: id.SenderKey(randomKey()), signing: id.Ed25519(randomKey()), room: roomID}
	d.newSession(t)
	return d
}

// giveKey stores the device's room key in the bot's store, as its m.room_key would; with
// forwardedBy, as that device's forward of the key.
func (env *botEnv) giveKey(t *testing.T, d *device, forwardedBy *device) {
	t.Helper()
	shared := true
	igs, err := crypto.NewInboundGroupSession(d.identity, d.signing, d.room, d.key, 0, 0, &shared, false)
	require.NoError(t, err)
	if forwardedBy != nil {
		igs.KeySource = id.KeySourceForward
		igs.ForwardingChains = []string{forwardedBy.identity.String()}
	}
	stored, reason, err := env.machine.StoreSession(context.Background(), igs)
	require.NoError(t, err)
	require.True(t, stored, reason)
}

// say returns the device's encrypted text message, sent at sent.
func (d *device) say(t *testing.T, body string, sent time.Time) *event.Event {
	t.Helper()
	plain, err := json.Marshal(map[string]any{"type": "m.room.message", "room_id": d.room,
		"content": map[string]any{"msgtype": "m.text", "body": body}})
	require.NoError(t, err)
	ciphertext, err := d.session.Encrypt(plain)
	require.NoError(t, err)
	d.sent++
	evt := &event.Event{Type: event.EventEncrypted, RoomID: d.room, Sender: d.user, Timestamp: sent.UnixMilli(),
		ID: id.EventID(fmt.Sprintf("$%s-%s-%d", d.user.Localpart(), d.id, d.sent)),
		Content: event.Content{Parsed: &event.EncryptedEventContent{Algorithm: id.AlgorithmMegolmV1,
			MegolmCiphertext: ciphertext, SenderKey: d.identity, SessionID: d.session.ID()}}}
	return evt
}

// plain returns a text message in the clear from user in roomID, sent at sent.
func plain(user id.UserID, roomID id.RoomID, body string, sent time.Time) *event.Event {
	return &event.Event{Type: event.EventMessage, RoomID: roomID, Sender: user, Timestamp: sent.UnixMilli(),
		ID:      id.EventID("$plain-" + randomKey()[:8]),
		Content: event.Content{Parsed: &event.MessageEventContent{MsgType: event.MsgText, Body: body}}}
}

// handle has the bot handle the event as if heirloom got it at received, and returns once it is
// done with it.
func (env *botEnv) handle(ctx context.Context, evt *event.Event, received time.Time) {
	env.bot.handle(ctx, queued{ctx: ctx, evt: evt, received: received})
}

// answer returns the text of the next answer the bot sent, decrypted, failing if none comes.
func (env *botEnv) answer(t *testing.T) string {
	t.Helper()
	select {
	case sent := <-env.hs.sent:
		return env.decryptAnswer(t, sent)
	case <-time.After(30 * time.Second):
		t.Fatal("the bot sent no answer")
		return ""
	}
}

// noAnswer fails if the bot sent an answer that was not read yet.
func (env *botEnv) noAnswer(t *testing.T) {
	t.Helper()
	select {
	case sent := <-env.hs.sent:
		t.Fatalf("the bot answered %q", env.decryptAnswer(t, sent))
	default:
	}
}

func (env *botEnv) decryptAnswer(t *testing.T, sent sentEvent) string {
	t.Helper()
	var content event.EncryptedEventContent
	require.NoError(t, json.Unmarshal(sent.body, &content))
	if content.Algorithm == "" {
		encrypted, err := env.db.StateStore.IsEncrypted(context.Background(), sent.room)
		require.NoError(t, err)
		require.False(t, encrypted, "an answer in the clear into an encrypted room: %s", sent.body)
		var msg event.MessageEventContent
		require.NoError(t, json.Unmarshal(sent.body, &msg))
		return msg.Body
	}
	evt := &event.Event{Type: event.EventEncrypted, Sender: env.bot.userID, RoomID: sent.room, ID: "$answer",
		Content: event.Content{Parsed: &content}}
	decrypted, err := env.machine.Mach.DecryptMegolmEvent(context.Background(), evt)
	require.NoError(t, err, "the bot's answer is readable with its own session")
	return decrypted.Content.AsMessage().Body
}

// noUnexpectedCalls fails if the bot asked the homeserver for something the fake does not serve.
func (env *botEnv) noUnexpectedCalls(t *testing.T) {
	t.Helper()
	env.hs.mu.Lock()
	defer env.hs.mu.Unlock()
	require.Empty(t, env.hs.unexpected)
}
