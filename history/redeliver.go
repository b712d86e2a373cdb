package history

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/keybundle"
	"github.com/heirloom-matrix/heirloom/metrics"
)

// Devices added between invite and join (element-meta#3030): an invitee who logs in on a new
// device after a puppet's invite and accepts the invite there would never read the history, for
// the bundle went to the devices the invitee had at the invite. While the invite is pending, and
// within history_sharing.redeliver_window of it, each device the invitee adds that the invitee's
// identity signs gets the same bundle: the same file and key, sent over Olm like the first time,
// after the same checks. The identity must be the very one the bundle was delivered under.
//
// heirloom hears of new devices from the invitee's device-list changes. Synapse sends those to
// appservices only for users who share a joined room with one of their users, which a mere
// invitee may not; so heirloom looks once more when the invitee joins from the invite, and the
// devices added by then get the bundle just after the join (Element accepts a bundle that
// arrives after the join from that invite).

// Reasons a device added later gets nothing.
const (
	ReasonIdentityNotTheBundles = "invitee's cross-signing identity is not the one the bundle was delivered under"
)

// redeliveryQueue runs at most one redelivery per bundle at a time; a trigger that comes while one
// runs makes it run once more.
type redeliveryQueue struct {
	lock    sync.Mutex
	running map[string]*redeliveryRun
}

type redeliveryRun struct {
	again bool
	// atJoin lets the next pass deliver although the invitee has joined: it was the join from the
	// bundle's invite that triggered it.
	atJoin bool
}

// DeviceListsChanged offers the bundles puppets sent to each changed user (not a puppet) to the
// devices that user added since. The transaction stream calls it.
func (s *Service) DeviceListsChanged(ctx context.Context, changed []id.UserID) {
	window := s.cfg.HistorySharing.Redeliver()
	if window <= 0 {
		return
	}
	for _, userID := range changed {
		if s.cfg.IsManaged(userID) || userID == s.cfg.BotUserID() {
			continue
		}
		bundles, err := s.db.ListRedeliverable(ctx, userID, time.Now().Add(-window))
		if err != nil {
			zerolog.Ctx(ctx).Err(err).Stringer("invitee", userID).Msg("Failed to look up bundles for the invitee's new devices")
			continue
		}
		for _, b := range bundles {
			s.queueRedelivery(ctx, b, false)
		}
	}
}

// InviteeJoined gives the devices of a user who joined from a puppet's invite, added since the
// invite, the invite's bundle: the last look at the invitee's devices. The transaction stream
// calls it with the join events of users who are not puppets.
func (s *Service) InviteeJoined(ctx context.Context, evt *event.Event) {
	window := s.cfg.HistorySharing.Redeliver()
	invitee := id.UserID(evt.GetStateKey())
	if window <= 0 || s.cfg.IsManaged(invitee) || invitee == s.cfg.BotUserID() {
		return
	}
	bundles, err := s.db.ListRedeliverable(ctx, invitee, time.Now().Add(-window))
	if err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to look up bundles for the invitee's new devices")
		return
	}
	join := keybundle.JoinFromMemberEvent(evt)
	for _, b := range bundles {
		if b.RoomID != evt.RoomID || (join.ReplacesState != "" && keybundle.JoinReplaced(b.InviteEventID, join) != keybundle.ReplacedInvite) {
			continue
		}
		s.queueRedelivery(ctx, b, true)
	}
}

func (s *Service) queueRedelivery(ctx context.Context, b *database.SentBundle, atJoin bool) {
	q := &s.redeliveries
	q.lock.Lock()
	if run, ok := q.running[b.BundleID]; ok {
		run.again, run.atJoin = true, run.atJoin || atJoin
		q.lock.Unlock()
		return
	}
	if q.running == nil {
		q.running = map[string]*redeliveryRun{}
	}
	run := &redeliveryRun{}
	q.running[b.BundleID] = run
	q.lock.Unlock()
	log := zerolog.Ctx(ctx).With().Str("bundle_id", b.BundleID).Stringer("puppet", b.Puppet).
		Stringer("room_id", b.RoomID).Stringer("invitee", b.Invitee).Logger()
	s.background(log.WithContext(ctx), "redeliver_bundle", func(ctx context.Context) {
		for {
			s.redeliver(ctx, b.BundleID, atJoin)
			q.lock.Lock()
			if !run.again {
				delete(q.running, b.BundleID)
				q.lock.Unlock()
				return
			}
			atJoin, run.again, run.atJoin = run.atJoin, false, false
			q.lock.Unlock()
		}
	})
}

// redeliver delivers the bundle to the invitee's devices that do not have it yet, if every check
// of a first delivery passes again and the invite still stands. Devices that may not have it are
// recorded with the reason.
func (s *Service) redeliver(ctx context.Context, bundleID string, atJoin bool) {
	log := zerolog.Ctx(ctx)
	b, err := s.db.GetSentBundle(ctx, bundleID)
	if err != nil || b == nil {
		log.Err(err).Msg("Failed to load the bundle to redeliver")
		return
	}
	p, err := s.mgr.Get(ctx, b.Puppet)
	if err != nil {
		log.Warn().Err(err).Msg("Cannot redeliver a bundle of a puppet that is not loaded")
		return
	}
	defer p.LockRoom(b.RoomID)()
	if b, err = s.db.GetSentBundle(ctx, bundleID); err != nil || b == nil || b.State != database.SentDelivered {
		return
	}
	if why := s.redeliveryRefused(ctx, p, b, atJoin); why != "" {
		log.Debug().Str("reason", why).Msg("Not offering the bundle to the invitee's new devices")
		return
	}
	targets, reason, err := s.recipients(ctx, p, b.Invitee)
	if err != nil {
		log.Warn().Err(err).Msg("Cannot check the invitee's devices for a redelivery")
		return
	}
	if reason == "" && s.masterKeyOf(ctx, p, b.Invitee) != b.InviteeMasterKey {
		reason = ReasonIdentityNotTheBundles
	}
	switch reason {
	case ReasonIdentityChanged, ReasonIdentityNotTheBundles, ReasonNoCrossSigning:
		if n := s.refuseNewDevices(ctx, p, b, reason); n > 0 {
			s.Metrics.IdentityChangeRefused(metrics.IdentityRedeliver)
			log.Warn().Str("reason", reason).Int("devices", n).Msg("Not giving the bundle to the invitee's new devices")
		}
		return
	}
	known := make(map[id.DeviceID]database.Delivery, len(b.Devices))
	for _, d := range b.Devices {
		known[d.DeviceID] = d
	}
	pending := 0
	for _, d := range targets {
		old, seen := known[d.DeviceID]
		if seen && (old.Delivered || (old.Reason == d.Reason && d.Reason != "")) {
			continue
		}
		d.AddedLater = true
		if d.Reason == "" {
			pending++
		}
		if err = s.db.PutDelivery(ctx, b.BundleID, d); err != nil {
			log.Err(err).Msg("Failed to record a new device of the invitee")
			return
		}
	}
	if pending == 0 {
		return
	}
	before := delivered(b.Devices)
	if err = s.deliver(ctx, p, b); err != nil {
		log.Err(err).Msg("Failed to deliver the bundle to the invitee's new devices")
		return
	}
	n := delivered(b.Devices) - before
	s.Metrics.Redelivered(n)
	log.Info().Int("devices", n).Bool("at_join", atJoin).Msg("Delivered the invite's key bundle to devices the invitee added since")
}

// redeliveryRefused returns why the bundle goes to no new device now, or "": it is no bundle of a
// recorded invite, it is past the window, or deliveryRefused says so (at the join, the join must
// have replaced the bundle's invite; before it, the invite must still stand).
func (s *Service) redeliveryRefused(ctx context.Context, p *e2ee.Puppet, b *database.SentBundle, atJoin bool) string {
	if b.Kind != database.SentKindInvite || b.InviteeMasterKey == "" || b.InviteEventID == "" {
		return "not a bundle of a recorded invite"
	} else if time.Since(time.UnixMilli(b.CreatedAt)) > s.cfg.HistorySharing.Redeliver() {
		return "past history_sharing.redeliver_window"
	}
	reason, _, err := s.deliveryRefused(ctx, p, b, atJoin)
	if err != nil {
		return err.Error()
	}
	return reason
}

// refuseNewDevices records the invitee's devices the bundle has no row for as refused for reason,
// and returns how many there were.
func (s *Service) refuseNewDevices(ctx context.Context, p *e2ee.Puppet, b *database.SentBundle, reason string) int {
	devices, err := p.Store.GetDevices(ctx, b.Invitee)
	if err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to list the invitee's devices")
		return 0
	}
	known := make(map[id.DeviceID]bool, len(b.Devices))
	for _, d := range b.Devices {
		known[d.DeviceID] = true
	}
	n := 0
	for deviceID := range devices {
		if known[deviceID] {
			continue
		}
		d := database.Delivery{UserID: b.Invitee, DeviceID: deviceID, Reason: reason, AddedLater: true}
		if err = s.db.PutDelivery(ctx, b.BundleID, d); err != nil {
			zerolog.Ctx(ctx).Err(err).Msg("Failed to record a new device of the invitee")
			return n
		}
		n++
	}
	return n
}

// masterKeyOf returns the user's current master key as the crypto store holds it ("" if none).
func (s *Service) masterKeyOf(ctx context.Context, p *e2ee.Puppet, userID id.UserID) id.Ed25519 {
	keys, err := p.Store.GetCrossSigningKeys(ctx, userID)
	if err != nil {
		return ""
	}
	return keys[id.XSUsageMaster].Key
}

func delivered(devices []database.Delivery) int {
	n := 0
	for _, d := range devices {
		if d.Delivered {
			n++
		}
	}
	return n
}
