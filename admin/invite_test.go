package admin

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// invite returns inviter's invite of the bot to roomID.
func (env *botEnv) invite(inviter id.UserID, roomID id.RoomID) *event.Event {
	stateKey := env.bot.userID.String()
	return &event.Event{Type: event.StateMember, RoomID: roomID, Sender: inviter, StateKey: &stateKey, ID: id.EventID("$invite-" + randomKey()[:8]),
		Timestamp: time.Now().UnixMilli(), Content: event.Content{Parsed: &event.MemberEventContent{Membership: event.MembershipInvite}}}
}

// membership returns the bot's next join or leave, failing if none comes.
func (env *botEnv) membership(t *testing.T) string {
	t.Helper()
	select {
	case m := <-env.hs.memberships:
		return m
	case <-time.After(30 * time.Second):
		t.Fatal("the bot neither joined nor left")
		return ""
	}
}

// The bot joins an admin's room and greets them, or, in a room without encryption, says it takes
// commands only in encrypted ones; it rejects anyone else's invite, with the refusal only the
// first time.
func TestBotAnswersInvites(t *testing.T) {
	env := newBotEnv(t)
	ctx := context.Background()
	const encrypted, clear, theirs, again id.RoomID = "!enc:localhost", "!clear:localhost", "!theirs:localhost", "!again:localhost"
	env.hs.mu.Lock()
	env.hs.encrypted[encrypted] = true
	for _, room := range []id.RoomID{encrypted, clear} {
		env.hs.members[room] = []id.UserID{testAdmin, env.bot.userID}
	}
	env.hs.mu.Unlock()

	env.handle(ctx, env.invite(testAdmin, encrypted), time.Now())
	require.Equal(t, "join "+encrypted.String(), env.membership(t))
	require.Equal(t, Greeting, env.answer(t), "encrypted, for the admin's devices")

	env.handle(ctx, env.invite(testAdmin2, clear), time.Now())
	require.Equal(t, "join "+clear.String(), env.membership(t))
	require.Equal(t, NotEncrypted, env.answer(t))

	env.handle(ctx, env.invite(stranger, theirs), time.Now())
	require.Equal(t, "leave "+theirs.String()+": "+Refusal, env.membership(t))
	env.handle(ctx, env.invite(stranger, again), time.Now())
	require.Equal(t, "leave "+again.String()+": ", env.membership(t), "refused once, then silently")
	env.noAnswer(t)
	env.noUnexpectedCalls(t)
}

// What the bot queues from the transaction stream: its own invites and the messages of rooms it
// is in, never its own events, others' memberships, state, or rooms it is not in.
func TestBotQueuesOnlyWhatItActsOn(t *testing.T) {
	env := newBotEnv(t)
	ctx := context.Background()
	env.room(t, dmRoom, testAdmin)
	now := time.Now()
	other := "@someone:localhost"
	leave := env.invite(testAdmin, dmRoom)
	leave.Content = event.Content{Parsed: &event.MemberEventContent{Membership: event.MembershipLeave}}
	state := plain(testAdmin, dmRoom, "a state event", now)
	state.StateKey = new(string)
	for name, evt := range map[string]*event.Event{
		"the bot's own message":            plain(env.bot.userID, dmRoom, "help", now),
		"a message in a room it is not in": plain(testAdmin, "!elsewhere:localhost", "help", now),
		"someone else's invite": {Type: event.StateMember, RoomID: dmRoom, Sender: testAdmin, StateKey: &other,
			Content: event.Content{Parsed: &event.MemberEventContent{Membership: event.MembershipInvite}}},
		"the bot's leave": leave,
		"a state event":   state,
		"no room":         plain(testAdmin, "", "help", now),
		"a reaction":      {Type: event.EventReaction, RoomID: dmRoom, Sender: testAdmin},
	} {
		env.bot.HandleEvent(ctx, evt)
		require.Empty(t, env.bot.queue, name)
	}
	env.bot.HandleEvent(ctx, plain(testAdmin, dmRoom, "help", now))
	env.bot.HandleEvent(ctx, env.invite(stranger, "!new:localhost"))
	require.Len(t, env.bot.queue, 2, "a message where the bot is, and its invite")
}
