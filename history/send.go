package history

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/random"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/fault"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// Reasons recorded when a bundle, or a device, gets nothing.
const (
	ReasonVisibility      = "history visibility is not shared or world_readable"
	ReasonNotEncrypted    = "room is not encrypted"
	ReasonNothingToShare  = "no sessions to share in this room"
	ReasonNoCrossSigning  = "invitee has no cross-signing identity"
	ReasonIdentityChanged = "invitee's cross-signing identity changed since heirloom first saw it"
	ReasonNotCrossSigned  = "device is not signed by the invitee's cross-signing identity"
	ReasonNoDevices       = "invitee has no device signed by their cross-signing identity"
	ReasonNoOlmSession    = "no Olm session could be established (no one-time key)"
	ReasonDisabled        = "history sharing was not requested"
	ReasonPuppetUnsigned  = "the puppet's own device is not signed by its cross-signing identity"
)

// Invite shares the room's history with the invitee (MSC4268: before the invite is sent), then
// invites. The bundle row is created first, so the invite's echo in the transaction stream finds it
// and does not build a second bundle, however late it comes; the invite's event ID is recorded as
// soon as the homeserver names it.
func (s *Service) Invite(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID, invitee id.UserID, share bool) (*InviteResult, error) {
	b, err := s.ShareBeforeInvite(ctx, p, roomID, invitee, share)
	if err != nil {
		return nil, err
	}
	_, err = p.Client.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: invitee})
	s.InviteDone(ctx, p, b, err)
	if err != nil {
		return nil, fmt.Errorf("failed to invite: %w", err)
	}
	return &InviteResult{Bundle: report(b)}, nil
}

// ShareBeforeInvite runs MSC4268's sending side for an invite about to be sent (share false, or
// history_sharing.share_on_invite off, records a skipped bundle). The bundle row exists before
// the invite is sent, so the invite's echo finds it and builds no second one. The caller sends
// the invite, then calls InviteDone.
func (s *Service) ShareBeforeInvite(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID, invitee id.UserID, share bool) (*database.SentBundle, error) {
	log := zerolog.Ctx(ctx).With().Stringer("puppet", p.UserID).Stringer("room_id", roomID).Stringer("invitee", invitee).Logger()
	ctx = log.WithContext(ctx)
	if err := p.Manager().EnsureRoomState(ctx, p.Client, roomID); err != nil {
		return nil, err
	}
	b := &database.SentBundle{BundleID: random.String(16), Puppet: p.UserID, RoomID: roomID, Invitee: invitee, State: database.SentBuilding}
	if !share || !s.cfg.HistorySharing.ShareOnInvite {
		b.State, b.Reason = database.SentSkipped, ReasonDisabled
		if err := s.db.PutSentBundle(ctx, b); err != nil {
			return nil, err
		}
		s.sentOutcome(b)
	} else if err := s.share(ctx, p, b); err != nil {
		return nil, err
	}
	return b, nil
}

// InviteDone records what became of the invite a bundle was built for: a failed invite's bundle
// is never claimed by a later invite; a sent one is bound to its event as soon as the homeserver
// names it.
func (s *Service) InviteDone(ctx context.Context, p *e2ee.Puppet, b *database.SentBundle, inviteErr error) {
	log := zerolog.Ctx(ctx).With().Stringer("puppet", p.UserID).Stringer("room_id", b.RoomID).Stringer("invitee", b.Invitee).Logger()
	ctx = context.WithoutCancel(log.WithContext(ctx))
	if inviteErr != nil {
		if err := s.db.SetInviteFailed(ctx, b.BundleID); err != nil {
			log.Err(err).Msg("Failed to record that the invite failed")
		}
		return
	}
	if eventID := s.inviteEventID(ctx, p, b.RoomID, b.Invitee); eventID != "" {
		if err := s.db.SetInviteEvent(ctx, b.BundleID, eventID); err != nil {
			log.Warn().Err(err).Msg("Failed to record the invite's event ID")
		}
	}
	log.Info().Str("bundle_state", b.State).Int("sessions", b.Sessions).Int("withheld", b.Withheld).Msg("Invited user")
}

// inviteEventID asks the homeserver for the invitee's member event, if it is the puppet's invite.
func (s *Service) inviteEventID(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID, invitee id.UserID) id.EventID {
	evt, err := memberEvent(ctx, p, roomID, invitee)
	if err != nil || evt.Sender != p.UserID || evt.Content.AsMember().Membership != event.MembershipInvite {
		return ""
	}
	return evt.ID
}

// memberEvent reads a user's current member event in the room, with its unsigned data.
func memberEvent(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID, userID id.UserID) (*event.Event, error) {
	var evt event.Event
	url := p.Client.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "rooms", roomID, "state", event.StateMember.Type, userID},
		map[string]string{"format": "event"})
	if _, err := p.Client.MakeRequest(ctx, "GET", url, nil, &evt); err != nil {
		return nil, err
	}
	if err := evt.Content.ParseRaw(event.StateMember); err != nil && !errors.Is(err, event.ErrContentAlreadyParsed) {
		return nil, err
	}
	return &evt, nil
}

// shareForInvite handles the echo of an invite whose sender is a puppet: the bundle built for it
// before it was sent, if the API built one (delivered now if a restart interrupted its delivery),
// or a new bundle for an invite sent by another path.
func (s *Service) shareForInvite(ctx context.Context, evt *event.Event) {
	log := zerolog.Ctx(ctx)
	invitee := id.UserID(evt.GetStateKey())
	if s.cfg.IsBridgeUser(evt.Sender) && s.cfg.IsBridgeUser(invitee) {
		return // the bridge inviting its own users: heirloom already holds every key they could get
	}
	claimed, err := s.db.ClaimSentBundleForInvite(ctx, evt.Sender, evt.RoomID, invitee, evt.ID)
	if err != nil {
		log.Err(err).Msg("Failed to check for a bundle built by the API")
		return
	} else if claimed != nil {
		log.Debug().Str("bundle_id", claimed.BundleID).Str("bundle_state", claimed.State).
			Msg("Invite already has the bundle built before it was sent")
		if claimed.State == database.SentUploaded {
			s.resumeDelivery(ctx, claimed)
		}
		return
	}
	if !s.cfg.HistorySharing.ShareOnInvite {
		return
	}
	if done, err := s.db.HasSentBundleForInvite(ctx, evt.Sender, evt.RoomID, evt.ID); err != nil || done {
		return
	}
	p, err := s.mgr.Get(ctx, evt.Sender)
	if err != nil {
		log.Warn().Err(err).Msg("Cannot share history for an invite by a puppet that is not provisioned")
		return
	}
	b := &database.SentBundle{BundleID: random.String(16), Puppet: p.UserID, RoomID: evt.RoomID, Invitee: invitee,
		InviteEventID: evt.ID, State: database.SentBuilding}
	if err = s.share(ctx, p, b); err != nil {
		log.Err(err).Msg("Failed to share history for invite")
		return
	}
	log.Info().Str("bundle_state", b.State).Int("sessions", b.Sessions).Msg("Shared history for invite sent outside the API")
}

// share runs the sender side of MSC4268 for one invite and records every step in b.
func (s *Service) share(ctx context.Context, p *e2ee.Puppet, b *database.SentBundle) error {
	if err := s.db.PutSentBundle(ctx, b); err != nil {
		return fmt.Errorf("failed to record bundle: %w", err)
	}
	defer p.LockRoom(b.RoomID)()
	err := s.buildAndUpload(ctx, p, b)
	if err != nil {
		b.State, b.Reason = database.SentFailed, err.Error()
	}
	if saveErr := s.db.PutSentBundle(ctx, b); saveErr != nil {
		return fmt.Errorf("failed to record bundle: %w", saveErr)
	}
	s.sentOutcome(b) // a final state; an uploaded bundle is counted when delivered
	if err != nil {
		if errors.Is(err, keybundle.ErrBundleTooLarge) {
			return err
		}
		zerolog.Ctx(ctx).Err(err).Msg("Failed to share history")
		return nil
	}
	if b.State == database.SentUploaded {
		fault.Crash("crash_before_delivery")
		fault.Hold("hold_before_delivery")
		if err = s.deliver(ctx, p, b); err != nil {
			// Like a failed build: the bundle is marked failed with the reason and the invite goes
			// on; a later invite builds a fresh bundle rather than resurrecting this one.
			zerolog.Ctx(ctx).Err(err).Msg("Failed to deliver key bundle")
			b.State, b.Reason = database.SentFailed, "delivery failed: "+err.Error()
			s.sentOutcome(b)
			return s.db.PutSentBundle(ctx, b)
		}
	}
	return nil
}

// buildAndUpload decides whether anything may be shared, with whom, and uploads the bundle.
// It leaves b in SentUploaded (deliver next) or in a final state with a reason.
func (s *Service) buildAndUpload(ctx context.Context, p *e2ee.Puppet, b *database.SentBundle) error {
	encrypted, err := p.Mach.StateStore.IsEncrypted(ctx, b.RoomID)
	if err != nil {
		return fmt.Errorf("failed to check room encryption: %w", err)
	} else if !encrypted {
		b.State, b.Reason = database.SentNothing, ReasonNotEncrypted
		return nil
	}
	if signed, err := p.OwnDeviceSigned(ctx); err != nil || !signed {
		b.State, b.Reason = database.SentSkipped, ReasonPuppetUnsigned
		return err
	}
	visibility, err := s.currentVisibility(ctx, p, b.RoomID)
	if err != nil {
		return fmt.Errorf("failed to get history visibility: %w", err)
	}
	if !keybundle.VisibilitySharesHistory(visibility) {
		counts, err := p.CountRoomSessions(ctx, b.RoomID)
		if err != nil {
			return err
		}
		b.State, b.Reason, b.Withheld = database.SentNothing, ReasonVisibility, counts
		return nil
	}
	// MSC4268 sends the bundle before the invite: if the invite cannot succeed, the keys must not
	// leave at all. (A reshare is for a member who is invited or joined already.)
	if reason := s.inviteImpossible(ctx, p, b.RoomID, b.Invitee); reason != "" && b.Kind != database.SentKindReshare {
		b.State, b.Reason = database.SentSkipped, reason
		return nil
	}
	targets, reason, err := s.bundleRecipients(ctx, p, b)
	if err != nil {
		return err
	} else if reason != "" {
		b.State, b.Reason = database.SentSkipped, reason
		return nil
	}
	b.InviteeMasterKey = s.masterKeyOf(ctx, p, b.Invitee) // what devices added later must be signed by
	sealed, err := keybundle.Seal(s.TempDir, s.maxBundleSize(ctx, p), func(w ioWriter) (keybundle.Counts, error) {
		return s.writeBundle(ctx, p, b.RoomID, w)
	})
	if err != nil {
		return err
	}
	defer sealed.Close()
	b.Sessions, b.Withheld, b.Size = sealed.Counts.Sessions, sealed.Counts.Withheld, sealed.Size
	if sealed.Counts.Empty() {
		b.State, b.Reason = database.SentNothing, ReasonNothingToShare
		return nil
	}
	upload, err := p.Client.UploadMedia(ctx, mautrix.ReqUploadMedia{
		Content: sealed.File, ContentLength: sealed.Size, ContentType: "application/octet-stream",
	})
	if err != nil {
		return fmt.Errorf("failed to upload bundle: %w", err)
	}
	sealed.Info.URL = upload.ContentURI.CUString()
	b.MXC = upload.ContentURI.String()
	if b.FileInfo, err = p.Manager().Sealer.SealJSON(bundleOwner(b), sealed.Info); err != nil {
		return err
	}
	for _, d := range targets {
		if err = s.db.PutDelivery(ctx, b.BundleID, d); err != nil {
			return err
		}
	}
	b.State = database.SentUploaded
	zerolog.Ctx(ctx).Info().Str("mxc", b.MXC).Int64("size", b.Size).Int("sessions", b.Sessions).
		Int("withheld", b.Withheld).Msg("Uploaded key bundle")
	return nil
}

// Reasons an invite cannot succeed, so no bundle is sent for it.
const (
	ReasonInviteeBanned = "the invitee is banned from the room"
	ReasonInviteeJoined = "the invitee is already joined"
	ReasonNoInvitePower = "the puppet's power level does not allow it to invite"
)

// currentVisibility reads the room's history visibility from the homeserver (a bundle rests on
// it: a change heirloom has not heard of yet must not let history out), and records it. It reads
// with a plain request: mautrix's StateEvent would record the answer in the state store before it
// is compared with what heirloom knew, and the change would rotate nothing.
func (s *Service) currentVisibility(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID) (*event.HistoryVisibilityEventContent, error) {
	var content event.HistoryVisibilityEventContent
	url := p.Client.BuildClientURL("v3", "rooms", roomID, "state", event.StateHistoryVisibility.Type, "")
	_, err := p.Client.MakeRequest(ctx, http.MethodGet, url, nil, &content)
	switch {
	case errors.Is(err, mautrix.MNotFound):
		return nil, nil // no visibility event: shared
	case err != nil:
		return nil, fmt.Errorf("failed to read history visibility: %w", err)
	}
	// A change heirloom learns here first rotates the room's sessions as the transaction would have
	// (the first visibility it learns of a room is no change); either is recorded, so the event's
	// transaction compares with it.
	if known, err := s.db.StateStore.GetHistoryVisibility(ctx, roomID); err == nil &&
		(known == nil || known.HistoryVisibility != content.HistoryVisibility) {
		if known != nil {
			if err = s.db.RequireRotation(ctx, roomID, time.Now()); err != nil {
				return nil, err
			}
		}
		empty := ""
		mautrix.UpdateStateStore(ctx, s.db.StateStore, &event.Event{Type: event.StateHistoryVisibility, RoomID: roomID,
			StateKey: &empty, Content: event.Content{Parsed: &content}})
	}
	return &content, nil
}

// inviteImpossible returns why the puppet's invite of invitee cannot succeed, or "": the invitee
// is banned or joined already, or the puppet lacks the power to invite.
func (s *Service) inviteImpossible(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID, invitee id.UserID) string {
	if member, err := memberEvent(ctx, p, roomID, invitee); err == nil {
		switch member.Content.AsMember().Membership {
		case event.MembershipBan:
			return ReasonInviteeBanned
		case event.MembershipJoin:
			return ReasonInviteeJoined
		}
	}
	if pl, err := s.db.StateStore.GetPowerLevels(ctx, roomID); err == nil && pl != nil &&
		pl.GetUserLevel(p.UserID) < pl.Invite() {
		return ReasonNoInvitePower
	}
	return ""
}

func bundleOwner(b *database.SentBundle) string { return "bundle-sent:" + b.BundleID }

// bundleRecipients picks the invitee's devices for a new bundle (recipients). Every device gets a
// delivery row: pending (Delivered false, no reason) or skipped with the reason. A non-empty
// reason means nobody gets the bundle.
func (s *Service) bundleRecipients(ctx context.Context, p *e2ee.Puppet, b *database.SentBundle) ([]database.Delivery, string, error) {
	targets, reason, err := s.recipients(ctx, p, b.Invitee)
	if err != nil || reason == ReasonNoCrossSigning || reason == ReasonIdentityChanged {
		return nil, reason, err
	}
	if reason == ReasonNoDevices {
		for _, d := range targets {
			if err = s.db.PutDelivery(ctx, b.BundleID, d); err != nil {
				return nil, "", err
			}
		}
		return nil, reason, nil
	}
	return targets, "", nil
}

// recipients queries the invitee's keys fresh and sorts their devices: those signed by the
// invitee's current cross-signing identity (no reason), the others (with the reason). The reason
// returned says why nobody may get anything: no identity, an identity that changed since heirloom
// first saw it, or no signed device.
func (s *Service) recipients(ctx context.Context, p *e2ee.Puppet, invitee id.UserID) ([]database.Delivery, string, error) {
	devices, err := p.FetchDevices(ctx, []id.UserID{invitee})
	if err != nil {
		return nil, "", fmt.Errorf("failed to query invitee keys: %w", err)
	}
	xsKeys, err := p.Store.GetCrossSigningKeys(ctx, invitee)
	if err != nil {
		return nil, "", err
	}
	master, ok := xsKeys[id.XSUsageMaster]
	if !ok {
		return nil, ReasonNoCrossSigning, nil
	} else if master.Key != master.First {
		return nil, ReasonIdentityChanged, nil
	}
	var targets []database.Delivery
	eligible := 0
	for _, device := range devices[invitee] {
		d := database.Delivery{UserID: invitee, DeviceID: device.DeviceID}
		trust, err := p.Mach.ResolveTrustContext(ctx, device)
		if err != nil {
			return nil, "", err
		}
		if trust < id.TrustStateCrossSignedTOFU || trust == id.TrustStateCrossSignedUntrusted {
			d.Reason = ReasonNotCrossSigned
		} else {
			eligible++
		}
		targets = append(targets, d)
	}
	if eligible == 0 {
		return targets, ReasonNoDevices, nil
	}
	return targets, "", nil
}

// deliver sends the bundle's details over Olm to each pending device and records each outcome.
// It is idempotent per device, so a delivery a restart interrupted finishes without repeats.
func (s *Service) deliver(ctx context.Context, p *e2ee.Puppet, b *database.SentBundle) error {
	var info event.EncryptedFileInfo
	if err := p.Manager().Sealer.OpenJSON(bundleOwner(b), b.FileInfo, &info); err != nil {
		return err
	}
	deliveries, err := s.db.GetDeliveries(ctx, b.BundleID)
	if err != nil {
		return err
	}
	content := &event.Content{Parsed: &event.RoomKeyBundleEventContent{RoomID: b.RoomID, File: info}}
	req := &mautrix.ReqSendToDevice{Messages: map[id.UserID]map[id.DeviceID]*event.Content{}}
	for _, d := range deliveries {
		if d.Delivered || d.Reason != "" {
			continue
		}
		if req.Messages[d.UserID] == nil {
			req.Messages[d.UserID] = map[id.DeviceID]*event.Content{}
		}
		req.Messages[d.UserID][d.DeviceID] = content
	}
	if len(req.Messages) > 0 {
		encrypted, err := p.Mach.EncryptToDevices(ctx, event.ToDeviceRoomKeyBundle, req)
		if err != nil {
			return fmt.Errorf("failed to encrypt bundle details: %w", err)
		}
		if _, err = p.Client.SendToDevice(ctx, event.ToDeviceEncrypted, encrypted); err != nil {
			return fmt.Errorf("failed to send bundle details: %w", err)
		}
		for userID, devices := range req.Messages {
			for deviceID := range devices {
				d := database.Delivery{UserID: userID, DeviceID: deviceID, Delivered: true}
				if _, ok := encrypted.Messages[userID][deviceID]; !ok {
					d.Delivered, d.Reason = false, ReasonNoOlmSession
				}
				if err = s.db.PutDelivery(ctx, b.BundleID, d); err != nil {
					return err
				}
			}
		}
	}
	if b.State != database.SentDelivered { // the first delivery (a redelivery is counted apart)
		b.State = database.SentDelivered
		s.Metrics.Delivered(time.Since(time.UnixMilli(b.CreatedAt)))
		s.sentOutcome(b)
	}
	if b.Devices, err = s.db.GetDeliveries(ctx, b.BundleID); err != nil {
		return err
	}
	zerolog.Ctx(ctx).Info().Str("bundle_id", b.BundleID).Int("devices", len(b.Devices)).Msg("Delivered key bundle")
	return s.db.PutSentBundle(ctx, b)
}

// Bundles lists what the puppet sent and received, newest first.
func (s *Service) Bundles(ctx context.Context, puppet id.UserID) (*BundlesResult, error) {
	sent, received, err := listReports(ctx, puppet, s.db.ListSentBundles, s.db.ListReceivedBundles)
	if err != nil {
		return nil, err
	}
	return &BundlesResult{Sent: sent, Received: received}, nil
}

// listReports reads the sent and received bundles of key (a puppet, a room) and reports them.
func listReports[K any](ctx context.Context, key K, listSent func(context.Context, K) ([]*database.SentBundle, error),
	listReceived func(context.Context, K) ([]*database.ReceivedBundle, error)) ([]SentReport, []*ReceivedReport, error) {
	sent, err := listSent(ctx, key)
	if err != nil {
		return nil, nil, err
	}
	received, err := listReceived(ctx, key)
	if err != nil {
		return nil, nil, err
	}
	sentReports, receivedReports := reports(sent, received)
	return sentReports, receivedReports, nil
}

// reports turns stored bundles into their reports, in the same order (never nil: the API answers
// empty lists).
func reports(sent []*database.SentBundle, received []*database.ReceivedBundle) ([]SentReport, []*ReceivedReport) {
	outSent, outReceived := make([]SentReport, 0, len(sent)), make([]*ReceivedReport, 0, len(received))
	for _, b := range sent {
		outSent = append(outSent, sentReport(b))
	}
	for _, b := range received {
		outReceived = append(outReceived, receivedReport(b))
	}
	return outSent, outReceived
}
