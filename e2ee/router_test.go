package e2ee

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// takeInbox takes the to-device messages waiting for the puppet's device from the homeserver, as
// they come in a transaction pushed to the appservice (the inbox keeps them until the device syncs).
func takeInbox(h *twoHeirlooms, p *Puppet) []*event.Event {
	var events []*event.Event
	h.hs.do(func(hs *homeserver) {
		for _, evt := range hs.inbox[p.UserID][p.DeviceID] {
			pushed := *evt
			pushed.ToUserID, pushed.ToDeviceID = p.UserID, p.DeviceID
			events = append(events, &pushed)
		}
	})
	return events
}

// A to-device message pushed in a transaction reaches the machine of the puppet device it is
// addressed to, and no other: not a user heirloom does not hold, not a puppet never provisioned,
// not another device of the puppet.
func TestToDeviceMessagesReachOnlyTheirDevice(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	sendRoomOn(h.hs, event.HistoryVisibilityShared, h.alice.UserID, h.bob.UserID)
	_, err := h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("pushed"))
	require.NoError(t, err)
	pushed := takeInbox(h, h.bob)
	require.Len(t, pushed, 1)
	require.NoError(t, pushed[0].Content.ParseRaw(pushed[0].Type))

	for _, to := range []struct {
		user   id.UserID
		device id.DeviceID
	}{
		{"@someone:localhost", "DEV"}, {"@heirloom_never:localhost", "DEV"}, {h.bob.UserID, "ANOTHERDEVICE"},
	} {
		stray := *pushed[0]
		stray.ToUserID, stray.ToDeviceID = to.user, to.device
		require.False(t, h.theirs.RouteToDevice(ctx, &stray), "%s's %s", to.user, to.device)
	}
	require.True(t, h.theirs.RouteToDevice(ctx, pushed[0]))
	events, err := h.bob.Timeline(ctx, sendRoom, 10)
	require.NoError(t, err)
	require.True(t, events[len(events)-1].Decrypted, "the pushed room key decrypts the message: %s", events[len(events)-1].Error)
}

// The inbox sweep fetches what the homeserver never pushed, and counts it for the admin; a message
// that was pushed and then swept again is handled once, and not counted.
func TestSweepRecoversOnlyWhatWasNeverPushed(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	reg := withMetrics(t, h.theirs)
	sendRoomOn(h.hs, event.HistoryVisibilityShared, h.alice.UserID, h.bob.UserID, h.dave.UserID)
	_, err := h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("hi"))
	require.NoError(t, err)
	for _, evt := range takeInbox(h, h.bob) {
		require.NoError(t, evt.Content.ParseRaw(evt.Type))
		require.True(t, h.theirs.RouteToDevice(ctx, evt))
	}
	n, err := h.bob.SweepToDevice(ctx, true)
	require.NoError(t, err)
	require.Equal(t, 1, n, "the pushed message is in the inbox still")
	require.Zero(t, counted(t, reg, "heirloom_to_device_recovered_total"))

	h.theirs.sweepLoaded(ctx, false) // dave's inbox: never pushed
	require.Equal(t, 1.0, counted(t, reg, "heirloom_to_device_recovered_total"))
	require.Equal(t, []string{"hi"}, read(t, h.dave))
	require.Equal(t, []string{"hi"}, read(t, h.bob))

	n, err = h.dave.SweepToDevice(ctx, false)
	require.NoError(t, err)
	require.Zero(t, n, "a sweep on demand right after another asks the homeserver nothing")
}

// Once the homeserver sends again after holding heirloom down, the loaded puppets' inboxes are
// swept in the background, even those swept a moment before: the room keys the homeserver dropped
// from its queue meanwhile are there, and are taken before any message needs them. Calls while the
// sweep waits to start join it.
func TestSweepAfterHeldDown(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	reg := withMetrics(t, h.theirs)
	h.theirs.heldDownSweeps.gather = 100 * time.Millisecond
	sendRoomOn(h.hs, event.HistoryVisibilityShared, h.alice.UserID, h.bob.UserID, h.dave.UserID)
	for _, p := range []*Puppet{h.bob, h.dave} {
		_, err := p.SweepToDevice(ctx, true) // the maintenance loop, a moment before
		require.NoError(t, err)
	}
	_, err := h.alice.SendMessage(ctx, sendRoom, event.EventMessage, text("hi"))
	require.NoError(t, err)

	for range 3 {
		h.theirs.SweepAfterHeldDown(ctx, "test")
	}
	require.Eventually(t, func() bool { return counted(t, reg, "heirloom_to_device_recovered_total") == 2 },
		5*time.Second, 10*time.Millisecond, "bob's and dave's room keys, never pushed, taken from their inboxes")
	require.NoError(t, h.theirs.Shutdown(ctx))
	require.Equal(t, 1, h.theirs.heldDownPasses(), "the three calls made one pass")
	require.Equal(t, []string{"hi"}, read(t, h.dave))
	require.Equal(t, []string{"hi"}, read(t, h.bob))
}

// A sweep waiting to start does not hold a shutdown back, and runs no pass.
func TestShutdownDoesNotWaitForAHeldDownSweep(t *testing.T) {
	h := newTwoHeirlooms(t)
	h.theirs.heldDownSweeps.gather = time.Hour
	h.theirs.SweepAfterHeldDown(context.Background(), "test")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, h.theirs.Shutdown(ctx))
	require.Zero(t, h.theirs.heldDownPasses())
}

// heldDownPasses returns how many passes SweepAfterHeldDown ran.
func (m *Manager) heldDownPasses() int {
	m.heldDownSweeps.lock.Lock()
	defer m.heldDownSweeps.lock.Unlock()
	return m.heldDownSweeps.passes
}

// A homeserver that holds heirloom down again and again does not have the loaded puppets swept
// back to back: passes keep their gap, and a trigger that keeps coming puts none off for good. The
// last trigger still gets a pass after it.
func TestSweepsAfterHeldDownKeepTheirGap(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	s := &h.theirs.heldDownSweeps
	s.gather, s.maxDelay, s.gap = 50*time.Millisecond, 200*time.Millisecond, 600*time.Millisecond
	start := time.Now()
	for time.Since(start) < 1500*time.Millisecond {
		h.theirs.SweepAfterHeldDown(ctx, "flapping")
		time.Sleep(10 * time.Millisecond)
	}
	lastTrigger := time.Now()
	require.Eventually(t, func() bool {
		s.lock.Lock()
		defer s.lock.Unlock()
		return !s.running
	}, 5*time.Second, 10*time.Millisecond)
	passes := h.theirs.heldDownPasses()
	// The first pass 200 ms in (maxDelay), then one each gap (600 ms), and one after the last
	// trigger: 4. Without the gap, one each maxDelay: 8.
	require.GreaterOrEqual(t, passes, 2, "triggers every 10 ms did not put the passes off for good")
	require.LessOrEqual(t, passes, 5, "1.5 s of triggers with a 600 ms gap between passes")
	s.lock.Lock()
	lastEnd := s.lastEnd
	s.lock.Unlock()
	require.True(t, lastEnd.After(lastTrigger), "a pass after the last trigger")
}

// The maintenance loop keeps the puppets' one-time keys topped up and unloads idle machines.
func TestMaintenanceReplenishesKeysAndUnloadsIdleMachines(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	h.hs.do(func(hs *homeserver) { clear(hs.OTKs[h.bob.UserID][h.bob.DeviceID]) })
	h.theirs.replenishKeys(ctx)
	h.hs.do(func(hs *homeserver) {
		require.Len(t, hs.OTKs[h.bob.UserID][h.bob.DeviceID], 50, "bob's device has its 50 one-time keys again")
	})

	h.theirs.idleEvict = time.Nanosecond
	loopCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.theirs.RunMaintenance(loopCtx, time.Millisecond)
	}()
	require.Eventually(t, func() bool { return h.theirs.LoadedCount() == 0 }, 10*time.Second, time.Millisecond)
	stop()
	<-done
}

// heirloom's bot, missing the key of a message, asks the sending device for it; the puppets of
// another heirloom never answer another user's request, and send nothing back.
func TestBotAsksTheSendingDeviceForAMissingKey(t *testing.T) {
	ctx := context.Background()
	h := newTwoHeirlooms(t)
	sendRoomOn(h.hs, event.HistoryVisibilityShared, h.bob.UserID, h.alice.UserID)
	_, err := h.bob.SendMessage(ctx, sendRoom, event.EventMessage, text("for the bot"))
	require.NoError(t, err)
	ogs, err := h.bob.Store.GetOutboundGroupSession(ctx, sendRoom)
	require.NoError(t, err)

	bot := provisioned(t, h.mine, h.mine.cfg.BotUserID())
	bobKey := h.bob.Mach.OwnIdentity().IdentityKey
	require.NoError(t, bot.requestRoomKeyFromSender(ctx, sendRoom, h.bob.UserID, bobKey, ogs.ID()))
	requests := h.hs.sentTo(event.ToDeviceRoomKeyRequest, h.bob.UserID, h.bob.DeviceID)
	require.Len(t, requests, 1, "the request goes to the device that holds the session")
	var req event.RoomKeyRequestEventContent
	require.NoError(t, json.Unmarshal(requests[0].content, &req))
	require.Equal(t, ogs.ID(), req.Body.SessionID)
	require.Equal(t, sendRoom, req.Body.RoomID)

	require.ErrorIs(t, bot.requestRoomKeyFromSender(ctx, sendRoom, h.bob.UserID, "not a key of bob's", ogs.ID()), errNoSenderDevice)

	for _, evt := range takeInbox(h, h.bob) {
		require.NoError(t, evt.Content.ParseRaw(evt.Type))
		h.theirs.RouteToDevice(ctx, evt)
	}
	require.NoError(t, h.theirs.Shutdown(ctx))
	h.hs.do(func(hs *homeserver) {
		for _, m := range hs.toDevice {
			require.NotEqual(t, bot.UserID, m.to, "bob's device answers the bot nothing")
		}
	})
}
