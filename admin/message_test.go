package admin

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

const (
	dmRoom    id.RoomID = "!dm:localhost"
	groupRoom id.RoomID = "!group:localhost"
)

// An admin's command, encrypted by a device the admin's cross-signing identity signs, in an
// encrypted DM, runs, and its answer goes out encrypted.
func TestBotRunsAnAdminsCommand(t *testing.T) {
	env := newBotEnv(t)
	env.room(t, dmRoom, testAdmin)
	phone := env.device(t, testAdmin, dmRoom, true)
	env.giveKey(t, phone, nil)
	now := time.Now()
	env.handle(context.Background(), phone.say(t, "help", now.Add(-time.Second)), now)
	require.Contains(t, env.answer(t), "reshare <room> <user> [puppet]", "the answer to help")

	// In a room with more members, a command addressed to the bot.
	env.room(t, groupRoom, testAdmin, stranger)
	laptop := env.device(t, testAdmin, groupRoom, true)
	env.giveKey(t, laptop, nil)
	env.handle(context.Background(), laptop.say(t, "!heirloom help", now), now)
	require.Contains(t, env.answer(t), "reshare <room> <user> [puppet]")
	env.handle(context.Background(), laptop.say(t, "lunch, anyone?", now), now)
	env.noAnswer(t)
	env.noUnexpectedCalls(t)
}

// The bot runs nothing from a device the admin's cross-signing identity does not sign, nor from a
// room key someone forwarded, even the admin's own other device: it says why instead.
func TestBotObeysOnlyDevicesTheAdminsIdentitySigns(t *testing.T) {
	env := newBotEnv(t)
	env.room(t, dmRoom, testAdmin)
	now := time.Now()
	signed := env.device(t, testAdmin, dmRoom, true)
	for _, tc := range []struct {
		name   string
		device func() *device
	}{
		{"a device the bot knows, not cross-signed", func() *device {
			d := env.device(t, testAdmin, dmRoom, false)
			env.giveKey(t, d, nil)
			return d
		}},
		{"a device the bot never heard of", func() *device {
			d := unknownDevice(t, testAdmin, dmRoom)
			env.giveKey(t, d, nil)
			return d
		}},
		{"an unknown device's key, forwarded by the admin's signed device", func() *device {
			d := unknownDevice(t, testAdmin, dmRoom)
			env.giveKey(t, d, signed)
			return d
		}},
		{"a signed device's key, forwarded by the admin's other signed device", func() *device {
			d := env.device(t, testAdmin, dmRoom, true)
			env.giveKey(t, d, signed)
			return d
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env.handle(context.Background(), tc.device().say(t, "help", now), now)
			require.Equal(t, UntrustedEvent, env.answer(t))
			env.noAnswer(t)
		})
	}
}

// Commands are taken only in encrypted rooms, and only encrypted.
func TestBotTakesCommandsOnlyEncrypted(t *testing.T) {
	env := newBotEnv(t)
	env.room(t, dmRoom, testAdmin)
	now := time.Now()
	env.handle(context.Background(), plain(testAdmin, dmRoom, "help", now), now)
	require.Equal(t, SendEncrypted, env.answer(t))

	const clear id.RoomID = "!clear:localhost"
	env.clearRoom(t, clear, testAdmin)
	env.handle(context.Background(), plain(testAdmin, clear, "help", now), now)
	require.Equal(t, NotEncrypted, env.answer(t))
}

// Commands sent more than ten minutes before heirloom got them (it was down), or dated ahead of
// its clock, are not run, nor answered.
func TestBotDropsStaleCommands(t *testing.T) {
	env := newBotEnv(t)
	env.room(t, dmRoom, testAdmin)
	phone := env.device(t, testAdmin, dmRoom, true)
	env.giveKey(t, phone, nil)
	received := time.Now()
	for _, sent := range []time.Time{received.Add(-maxAge - time.Second), received.Add(-24 * time.Hour), received.Add(maxAhead + time.Second)} {
		env.handle(context.Background(), phone.say(t, "help", sent), received)
		env.noAnswer(t)
	}
	// Not heirloom's clock when the bot gets to it: when heirloom got it.
	env.handle(context.Background(), phone.say(t, "help", received.Add(-maxAge+time.Second)), received)
	require.Contains(t, env.answer(t), "reshare")
}

// Someone who is not an admin gets one refusal, and nothing else, ever.
func TestBotRefusesOthersOnce(t *testing.T) {
	env := newBotEnv(t)
	env.room(t, dmRoom, stranger)
	phone := env.device(t, stranger, dmRoom, true)
	env.giveKey(t, phone, nil)
	now := time.Now()
	env.handle(context.Background(), phone.say(t, "help", now), now)
	require.Equal(t, Refusal, env.answer(t))
	env.handle(context.Background(), phone.say(t, "status", now), now)
	env.handle(context.Background(), plain(stranger, dmRoom, "status", now), now)
	env.noAnswer(t)

	// In a room with an admin, a command addressed to the bot: refused (the refusal was given).
	env.room(t, groupRoom, testAdmin, stranger)
	laptop := env.device(t, stranger, groupRoom, true)
	env.giveKey(t, laptop, nil)
	env.handle(context.Background(), laptop.say(t, "!heirloom help", now), now)
	env.noAnswer(t)
	other := env.device(t, "@other:localhost", groupRoom, true)
	require.NoError(t, env.db.StateStore.SetMembership(context.Background(), groupRoom, "@other:localhost", event.MembershipJoin))
	env.giveKey(t, other, nil)
	env.handle(context.Background(), other.say(t, "!heirloom help", now), now)
	require.Equal(t, Refusal, env.answer(t), "someone else is refused once there too")
}
