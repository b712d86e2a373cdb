package history

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// Deliveries after the first: a delivery a restart interrupted (resumeDelivery) and one to a
// device the invitee added later (redeliver.go) pass the same check, deliveryRefused.

// resumeSending finishes bundles a restart interrupted: uploaded ones are delivered after the
// same checks as a first delivery (resumeDelivery); ones interrupted while building are marked
// failed (nothing was sent for them).
func (s *Service) resumeSending(ctx context.Context) {
	unfinished, err := s.db.ListUnfinishedSentBundles(ctx)
	if err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to list unfinished bundles")
		return
	}
	for _, b := range unfinished {
		log := zerolog.Ctx(ctx).With().Stringer("puppet", b.Puppet).Stringer("room_id", b.RoomID).Logger()
		if b.State == database.SentBuilding {
			b.State, b.Reason = database.SentFailed, ReasonInterrupted
			if err = s.db.PutSentBundle(ctx, b); err != nil {
				log.Err(err).Str("bundle_id", b.BundleID).Msg("Failed to mark interrupted bundle")
			}
			s.sentOutcome(b)
			continue
		}
		s.resumeDelivery(log.WithContext(ctx), b)
	}
}

// deliveryBound is how long after a bundle was built heirloom still delivers it (a delivery a
// restart interrupted, or one whose invite is not sent yet): past it, the checks made when it was
// built are too old to rest on, and the bundle is marked failed.
func (s *Service) deliveryBound() time.Duration {
	return s.cfg.HistorySharing.AcceptWindow
}

// Reasons a delivery that resumed does not go ahead.
const (
	ReasonDeliveryTooLate  = "delivery did not finish within history_sharing.accept_window of building the bundle"
	ReasonNoLongerInvited  = "the invitee is no longer invited or joined"
	ReasonDeviceNowUnknown = "device is no longer signed by the invitee's cross-signing identity"
	ReasonInterrupted      = "interrupted by a restart before upload"
)

// resumeDelivery delivers an uploaded bundle whose delivery did not finish, after checking again
// everything it was built and its devices chosen on (recheckDelivery): the puppet's invite was sent
// and still stands (else it waits for the invite's echo, which calls it again), history is still
// shared and the puppet's device still signed, the invitee's identity has not changed, and each
// pending device is still signed by it. Past deliveryBound it gives up.
func (s *Service) resumeDelivery(ctx context.Context, b *database.SentBundle) {
	log := zerolog.Ctx(ctx).With().Str("bundle_id", b.BundleID).Stringer("invitee", b.Invitee).Logger()
	ctx = log.WithContext(ctx)
	p, err := s.mgr.Get(ctx, b.Puppet)
	if err != nil {
		log.Err(err).Msg("Failed to load puppet to resume delivery")
		return
	}
	defer p.LockRoom(b.RoomID)()
	if b, err = s.db.GetSentBundle(ctx, b.BundleID); err != nil || b == nil || b.State != database.SentUploaded {
		return // finished meanwhile
	}
	reason, wait, err := s.recheckDelivery(ctx, p, b)
	switch {
	case err != nil:
		log.Warn().Err(err).Msg("Cannot check the invitee before resuming delivery; will try again")
		return
	case wait:
		log.Info().Msg("Bundle delivery waits for the invite to be sent")
		return
	case reason != "":
		b.State, b.Reason = database.SentFailed, reason
		log.Warn().Str("reason", reason).Msg("Not resuming bundle delivery")
		if err = s.db.PutSentBundle(ctx, b); err != nil {
			log.Err(err).Msg("Failed to record bundle state")
		}
		s.sentOutcome(b)
		return
	}
	if err = s.deliver(ctx, p, b); err != nil {
		log.Err(err).Msg("Failed to resume bundle delivery")
		return
	}
	log.Info().Msg("Resumed bundle delivery")
}

// recheckDelivery checks an uploaded bundle before it is delivered late (a delivery a restart
// interrupted). It returns a reason not to deliver at all, or wait if the invite has not been sent
// yet: past deliveryBound, or if deliveryRefused says so (the very invite the puppet sent, or the
// join that replaced it, the puppet's own signature, the room's visibility), and then for each
// pending device, unless it is still signed by the invitee's identity.
func (s *Service) recheckDelivery(ctx context.Context, p *e2ee.Puppet, b *database.SentBundle) (reason string, wait bool, err error) {
	if time.Since(time.UnixMilli(b.CreatedAt)) > s.deliveryBound() {
		return ReasonDeliveryTooLate, false, nil
	}
	if reason, wait, err = s.deliveryRefused(ctx, p, b, true); reason != "" || wait || err != nil {
		return reason, wait, err
	}
	current, reason, err := s.recipients(ctx, p, b.Invitee)
	if err != nil || reason != "" {
		return reason, false, err
	}
	eligible := make(map[id.DeviceID]bool, len(current))
	for _, d := range current {
		eligible[d.DeviceID] = d.Reason == ""
	}
	for _, d := range b.Devices {
		if !d.Delivered && d.Reason == "" && !eligible[d.DeviceID] {
			d.Reason = ReasonDeviceNowUnknown
			if err = s.db.PutDelivery(ctx, b.BundleID, d); err != nil {
				return "", false, err
			}
		}
	}
	return "", false, nil
}

// Reasons a delivery after the first (resumed, or to a device added later) does not go ahead.
const (
	ReasonInviteNotTheBundles = "the invitee's invite is not the one the bundle was built for"
	ReasonInviteeJoinedOther  = "the invitee joined, but not from the invite the bundle was built for"
)

// deliveryRefused is the one check of every delivery of a bundle after its first (a delivery a
// restart interrupted, and one to a device the invitee added later): it returns why the bundle may
// not go to the invitee's devices now, or wait if the invite it was built for is not sent (or not
// seen) yet. The bundle goes only to the invitee of the very invite the puppet sent while that
// invite stands, or (joinOK) at the join that replaced it; and only while the puppet's own device
// is signed by its identity and the room's current history visibility shares history, as when the
// bundle was built. Another member's invite, another invite, a join from anything else, a room
// that stopped sharing history: nothing goes.
func (s *Service) deliveryRefused(ctx context.Context, p *e2ee.Puppet, b *database.SentBundle, joinOK bool) (reason string, wait bool, err error) {
	if b.InviteEventID == "" {
		return "", true, nil // not sent, or its echo not seen yet: the echo claims the bundle and resumes it
	}
	member, err := memberEvent(ctx, p, b.RoomID, b.Invitee)
	switch {
	case errors.Is(err, mautrix.MNotFound):
		return ReasonNoLongerInvited, false, nil
	case err != nil:
		return "", false, fmt.Errorf("failed to read the invitee's membership: %w", err)
	}
	switch member.Content.AsMember().Membership {
	case event.MembershipInvite:
		if member.ID != b.InviteEventID {
			return ReasonInviteNotTheBundles, false, nil
		}
	case event.MembershipJoin:
		if keybundle.JoinReplaced(b.InviteEventID, keybundle.JoinFromMemberEvent(member)) != keybundle.ReplacedInvite {
			return ReasonInviteeJoinedOther, false, nil
		} else if !joinOK {
			return ReasonInviteeJoined, false, nil
		}
	default:
		return ReasonNoLongerInvited, false, nil
	}
	if signed, err := p.OwnDeviceSigned(ctx); err != nil || !signed {
		return ReasonPuppetUnsigned, false, err
	}
	visibility, err := s.currentVisibility(ctx, p, b.RoomID)
	if err != nil {
		return "", false, err
	} else if !keybundle.VisibilitySharesHistory(visibility) {
		return ReasonVisibility, false, nil
	}
	return "", false, nil
}
