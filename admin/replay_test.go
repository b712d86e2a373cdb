package admin

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// The replay check (one event per session and message index) is the puppet's own, per account
// and room, and the bot decrypts through the same path as the puppets (e2ee.Puppet.Decrypt), which
// records an index only once the plaintext names the event's room. A member of a group room the
// bot is in who holds the key of a session of room A (any past member of A) gives the bot that key
// under the group room (an m.room_key the bot accepts: he is a member there), then posts a copy of
// one of A's ciphertexts into the group room. The bot's failed decryption (wrong room) must not make
// the genuine event of A a replay for a puppet that reads it later (history read after a bundle
// import, a timeline fetched later).
func TestBotCannotMakeAnotherRoomsMessageAReplay(t *testing.T) {
	env := newBotEnv(t)
	ctx := context.Background()
	const roomA id.RoomID = "!puppetroom:localhost"
	const mallory id.UserID = "@mallory:localhost"
	env.room(t, groupRoom, testAdmin, mallory)

	// Alice writes in room A, where a puppet (same database, its own account) holds her key.
	alice := env.device(t, "@alice:localhost", roomA, true)
	puppet, err := env.bot.mgr.LocalPuppet(ctx, "@heirloom_victim:localhost", "VICTIMDEV")
	require.NoError(t, err)
	shared := true
	igs, err := crypto.NewInboundGroupSession(alice.identity, alice.signing, roomA, alice.key, 0, 0, &shared, false)
	require.NoError(t, err)
	stored, reason, err := puppet.StoreSession(ctx, igs)
	require.NoError(t, err)
	require.True(t, stored, reason)
	sent := time.Now()
	genuine := alice.say(t, "a message of room A", sent)

	// Mallory, a past member of A, holds alice's session key as her device signed it. He relays it
	// to the bot as his own m.room_key for the group room, where he is a member: what
	// receiveRoomKey stores (his device's keys, the room he names).
	malloryDev := env.device(t, mallory, groupRoom, true)
	relayed, err := crypto.NewInboundGroupSession(malloryDev.identity, malloryDev.signing, groupRoom, alice.key, 0, 0, &shared, false)
	require.NoError(t, err)
	stored, reason, err = env.machine.StoreSession(ctx, relayed)
	require.NoError(t, err)
	require.True(t, stored, reason)

	// He posts a copy of A's ciphertext into the group room; the bot tries to decrypt it.
	copied := &event.Event{Type: event.EventEncrypted, RoomID: groupRoom, Sender: mallory, Timestamp: sent.Add(time.Second).UnixMilli(),
		ID: "$copy-in-group-room", Content: genuine.Content}
	env.handle(ctx, copied, time.Now())
	env.noAnswer(t)

	// The puppet reads room A's message later.
	genuineCopy := *genuine
	genuineCopy.Content = event.Content{Parsed: genuine.Content.Parsed}
	d, err := puppet.Decrypt(ctx, &genuineCopy)
	require.NoError(t, err, "a ciphertext copied into the bot's room must not make room A's genuine event a replay for a puppet")
	require.Equal(t, "a message of room A", d.Event.Content.AsMessage().Body)
}

// The bot's own replay check is per room too: a ciphertext of an admin's command that a member
// copies into another room the bot is in (with the admin's session key relayed to the bot under
// that room) fails there on the room its plaintext names, before any index is recorded, and the
// admin's genuine command is still answered.
func TestACopiedCommandInAnotherRoomDoesNotMakeTheCommandAReplay(t *testing.T) {
	env := newBotEnv(t)
	ctx := context.Background()
	const mallory id.UserID = "@mallory:localhost"
	env.room(t, dmRoom, testAdmin)
	env.room(t, groupRoom, testAdmin, mallory)
	admin := env.device(t, testAdmin, dmRoom, true)
	env.giveKey(t, admin, nil)
	sent := time.Now()
	command := admin.say(t, "help", sent)

	malloryDev := env.device(t, mallory, groupRoom, true)
	shared := true
	relayed, err := crypto.NewInboundGroupSession(malloryDev.identity, malloryDev.signing, groupRoom, admin.key, 0, 0, &shared, false)
	require.NoError(t, err)
	stored, reason, err := env.machine.StoreSession(ctx, relayed)
	require.NoError(t, err)
	require.True(t, stored, reason)
	copied := &event.Event{Type: event.EventEncrypted, RoomID: groupRoom, Sender: mallory, Timestamp: sent.UnixMilli(),
		ID: "$copy-of-the-command", Content: command.Content}
	env.handle(ctx, copied, time.Now())
	env.noAnswer(t)

	genuine := *command
	genuine.Content = event.Content{Parsed: command.Content.Parsed}
	env.handle(ctx, &genuine, time.Now())
	require.Contains(t, env.answer(t), "reshare <room> <user> [puppet]", "the admin's command is answered")
}
