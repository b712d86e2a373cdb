package history

import (
	"context"
	"errors"
	"fmt"

	"github.com/rs/zerolog"
	"go.mau.fi/util/random"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// What admins ask of history sharing, through the API and heirloom's bot: a fresh bundle for a
// member, a retry of a failed import now, a room's bundles.

// ErrNotMember means a bundle was asked for a user who is neither invited to nor joined in the room.
var ErrNotMember = errors.New("the user is neither invited to nor joined in the room")

// reshareMarker fills a reshared bundle's invite_event_id: never an event ID, unique per bundle and
// never NULL, so no invite's echo claims the bundle.
const reshareMarker = "reshare:"

// Reshare builds a fresh bundle of the room's history as the puppet and delivers it to a user who
// is invited or joined already, for example after they lost their keys. Every rule of an invite's
// bundle holds (encryption, history visibility, the puppet's own signature, the user's unchanged
// cross-signing identity and signed devices); only the invite is not sent. Whether the user's
// client imports it is the client's decision: Element imports a bundle only within a day of
// joining from the sender's invite.
func (s *Service) Reshare(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID, userID id.UserID) (*InviteResult, error) {
	log := zerolog.Ctx(ctx).With().Stringer("puppet", p.UserID).Stringer("room_id", roomID).Stringer("invitee", userID).Logger()
	ctx = log.WithContext(ctx)
	if err := p.Manager().EnsureRoomState(ctx, p.Client, roomID); err != nil {
		return nil, err
	}
	member, err := memberEvent(ctx, p, roomID, userID)
	switch {
	case errors.Is(err, mautrix.MNotFound):
		return nil, ErrNotMember
	case errors.Is(err, mautrix.MForbidden):
		return nil, fmt.Errorf("%w: %w", e2ee.ErrUnknownRoom, err)
	case err != nil:
		return nil, fmt.Errorf("failed to read the user's membership: %w", err)
	}
	if m := member.Content.AsMember().Membership; m != event.MembershipInvite && m != event.MembershipJoin {
		return nil, ErrNotMember
	}
	bundleID := random.String(16)
	b := &database.SentBundle{BundleID: bundleID, Puppet: p.UserID, RoomID: roomID, Invitee: userID,
		InviteEventID: id.EventID(reshareMarker + bundleID), State: database.SentBuilding, Kind: database.SentKindReshare}
	if err = s.share(ctx, p, b); err != nil {
		if errors.Is(err, keybundle.ErrBundleTooLarge) {
			return nil, err
		}
		return nil, fmt.Errorf("failed to reshare history: %w", err)
	}
	log.Info().Str("bundle_id", b.BundleID).Str("bundle_state", b.State).Int("sessions", b.Sessions).Msg("Reshared history")
	return &InviteResult{Bundle: report(b)}, nil
}

// RetryResult is what POST …/retry answers: the puppet's bundles for the room that were retried,
// as they stand after the retry.
type RetryResult struct {
	Bundles []*ReceivedReport `json:"bundles"`
}

// RetryReceived retries now the puppet's received bundles for the room that failed or wait for a
// retry: their attempts start again from zero, and the inviter's is downloaded and imported at
// once if every rule of an import allows it (an accepted invite from the sender, within the
// window, the sender's unchanged identity).
func (s *Service) RetryReceived(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID) (*RetryResult, error) {
	log := zerolog.Ctx(ctx).With().Stringer("puppet", p.UserID).Stringer("room_id", roomID).Logger()
	ctx = log.WithContext(ctx)
	retryable, err := s.db.ListRetryable(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if _, err = s.db.RetryNow(ctx, p.UserID, roomID); err != nil {
		return nil, err
	}
	out := &RetryResult{Bundles: []*ReceivedReport{}}
	var senders []id.UserID
	for _, b := range retryable {
		if b.Puppet == p.UserID {
			senders = append(senders, b.Sender)
		}
	}
	if len(senders) == 0 {
		return out, nil
	}
	log.Info().Int("bundles", len(senders)).Msg("Retrying received bundles now")
	s.tryAccept(ctx, p, roomID)
	for _, sender := range senders {
		b, err := s.db.GetReceivedBundle(ctx, p.UserID, roomID, sender)
		if err != nil {
			return nil, err
		} else if b != nil {
			out.Bundles = append(out.Bundles, receivedReport(b))
		}
	}
	return out, nil
}

// RoomBundles lists what every puppet sent and received for the room, newest first.
func (s *Service) RoomBundles(ctx context.Context, roomID id.RoomID) (*RoomBundlesResult, error) {
	sent, received, err := listReports(ctx, roomID, s.db.ListSentBundlesInRoom, s.db.ListReceivedBundlesInRoom)
	if err != nil {
		return nil, err
	}
	return &RoomBundlesResult{Sent: sent, Received: received}, nil
}
