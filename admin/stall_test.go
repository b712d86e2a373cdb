package admin

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"
)

// runBot runs the bot until the test ends.
func runBot(t *testing.T, env *botEnv) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		env.bot.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// keyRequests returns the room key requests the bot sent so far.
func keyRequests(env *botEnv) int {
	n := 0
	for {
		select {
		case eventType := <-env.hs.toDevice:
			if eventType == event.ToDeviceRoomKeyRequest.Type {
				n++
			}
		default:
			return n
		}
	}
}

// A message from someone who is not an admin, whose room key the bot does not hold, is dropped at
// once: the bot neither waits for its key nor asks the sender's device for it. (It used to wait
// 15 s for each, holding up every admin's command, and ask the sender for the key.)
func TestNonAdminsUndecryptableMessageDoesNotStallTheBot(t *testing.T) {
	env := newBotEnv(t)
	env.room(t, groupRoom, testAdmin, stranger)
	phone := env.device(t, stranger, groupRoom, true) // a device the bot could ask
	// An admin's message would be asked for at once, and waited for an hour.
	env.bot.keyRequestAfter, env.bot.keyWait = 0, time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	now := time.Now()
	for _, evt := range []*event.Event{phone.say(t, "!heirloom status", now), phone.say(t, "hello all", now)} {
		handled := make(chan struct{})
		go func() {
			defer close(handled)
			env.handle(ctx, evt, now)
		}()
		select {
		case <-handled:
		case eventType := <-env.hs.toDevice:
			t.Fatalf("the bot sent %s for a message of someone who is not an admin", eventType)
		}
		require.Zero(t, keyRequests(env), "no key request for a non-admin's message")
	}
	env.noAnswer(t)

	// An admin's undecryptable message, by contrast, is waited for and its key asked for.
	admin := env.device(t, testAdmin, groupRoom, true)
	go env.handle(ctx, admin.say(t, "!heirloom help", now), now)
	select {
	case eventType := <-env.hs.toDevice:
		require.Equal(t, event.ToDeviceRoomKeyRequest.Type, eventType, "the admin's device is asked for the key")
	case <-time.After(30 * time.Second):
		t.Fatal("the bot did not ask the admin's device for the key")
	}
	env.giveKey(t, admin, nil)
	require.Contains(t, env.answer(t), "reshare", "and the command runs once the key came")
}

// While one admin's command waits for its room key, another admin's command is answered: each
// sender's events are answered in order, and no sender's wait for another's.
func TestOneSendersWaitForAKeyDelaysNoOtherSender(t *testing.T) {
	env := newBotEnv(t)
	env.room(t, groupRoom, testAdmin, testAdmin2)
	first := env.device(t, testAdmin, groupRoom, true)
	second := env.device(t, testAdmin2, groupRoom, true)
	env.giveKey(t, second, nil)
	env.bot.keyRequestAfter, env.bot.keyWait = time.Hour, time.Hour
	runBot(t, env)
	ctx := context.Background()
	now := time.Now()

	env.bot.HandleEvent(ctx, first.say(t, "!heirloom frobnicate", now)) // its key has not come
	env.bot.HandleEvent(ctx, first.say(t, "!heirloom help", now))       // after it, from the same admin
	env.bot.HandleEvent(ctx, second.say(t, "!heirloom help", now))
	require.Contains(t, env.answer(t), "reshare", "the second admin is answered while the first admin's command waits")
	env.noAnswer(t)

	env.giveKey(t, first, nil)
	require.Contains(t, env.answer(t), `I do not know the command "frobnicate"`, "the first admin's commands, in order")
	require.Contains(t, env.answer(t), "reshare")
}

// However many messages one sender floods the bot with, another's command is still taken: a
// sender has at most laneSize events waiting, so no sender fills the bot's queue.
func TestAFloodFromOneSenderDropsNobodyElsesCommand(t *testing.T) {
	env := newBotEnv(t)
	env.room(t, groupRoom, testAdmin, stranger)
	flooder := env.device(t, stranger, groupRoom, true)
	admin := env.device(t, testAdmin, groupRoom, true)
	env.giveKey(t, admin, nil)
	ctx := context.Background()
	now := time.Now()
	// Before the bot runs, so that none of them is answered before the admin's command comes.
	for i := range queueSize + 10 {
		env.bot.HandleEvent(ctx, flooder.say(t, fmt.Sprint("spam ", i), now))
	}
	env.bot.HandleEvent(ctx, admin.say(t, "!heirloom help", now))
	runBot(t, env)
	require.Contains(t, env.answer(t), "reshare")
}
