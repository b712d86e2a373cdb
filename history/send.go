package history

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/random"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/crypto"
	"github.com/heirloom-matrix/heirloom/database"
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

// InviteResult is what POST …/invite answers.
type InviteResult struct {
	Bundle *BundleReport `json:"bundle"`
}

// BundleReport describes a sent bundle for the API.
type BundleReport struct {
	BundleID string              `json:"bundle_id"`
	State    string              `json:"state"`
	Sessions int                 `json:"sessions"`
	Withheld int                 `json:"withheld"`
	MXC      string              `json:"mxc,omitempty"`
	Size     int64               `json:"size,omitempty"`
	Devices  []database.Delivery `json:"devices"`
	Reason   string              `json:"reason,omitempty"`
}

func report(b *database.SentBundle) *BundleReport {
	devices := b.Devices
	if devices == nil {
		devices = []database.Delivery{}
	}
	return &BundleReport{BundleID: b.BundleID, State: b.State, Sessions: b.Sessions, Withheld: b.Withheld,
		MXC: b.MXC, Size: b.Size, Devices: devices, Reason: b.Reason}
}

// Invite shares the room's history with the invitee (MSC4268: before the invite is sent), then
// invites. The bundle row is created first, so the invite's echo in the transaction stream finds it
// and does not build a second bundle.
func (s *Service) Invite(ctx context.Context, p *crypto.Puppet, roomID id.RoomID, invitee id.UserID, share bool) (any, error) {
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
	} else if err := s.share(ctx, p, b); err != nil {
		return nil, err
	}
	if _, err := p.Client.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: invitee}); err != nil {
		return nil, err
	}
	log.Info().Str("bundle_state", b.State).Int("sessions", b.Sessions).Int("withheld", b.Withheld).Msg("Invited user")
	return &InviteResult{Bundle: report(b)}, nil
}

// shareForInvite builds a bundle for an invite seen in a transaction whose sender is a puppet.
func (s *Service) shareForInvite(ctx context.Context, evt *event.Event) {
	log := zerolog.Ctx(ctx)
	if !s.cfg.HistorySharing.ShareOnInvite {
		return
	}
	invitee := id.UserID(evt.GetStateKey())
	claimed, err := s.db.ClaimSentBundleForInvite(ctx, evt.Sender, evt.RoomID, invitee, evt.ID, 10*time.Minute)
	if err != nil {
		log.Err(err).Msg("Failed to check for a bundle built by the API")
		return
	} else if claimed {
		log.Debug().Msg("Invite already has the bundle built before it was sent")
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
func (s *Service) share(ctx context.Context, p *crypto.Puppet, b *database.SentBundle) error {
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
	if err != nil {
		if errors.Is(err, keybundle.ErrBundleTooLarge) {
			return err
		}
		zerolog.Ctx(ctx).Err(err).Msg("Failed to share history")
		return nil
	}
	if b.State == database.SentUploaded {
		faultPoint("crash_before_delivery")
		if err = s.deliver(ctx, p, b); err != nil {
			// Like a failed build: the bundle is marked failed with the reason and the invite goes
			// on; a later invite builds a fresh bundle rather than resurrecting this one.
			zerolog.Ctx(ctx).Err(err).Msg("Failed to deliver key bundle")
			b.State, b.Reason = database.SentFailed, "delivery failed: "+err.Error()
			return s.db.PutSentBundle(ctx, b)
		}
	}
	return nil
}

// buildAndUpload decides whether anything may be shared, with whom, and uploads the bundle.
// It leaves b in SentUploaded (deliver next) or in a final state with a reason.
func (s *Service) buildAndUpload(ctx context.Context, p *crypto.Puppet, b *database.SentBundle) error {
	encrypted, err := p.Mach.StateStore.IsEncrypted(ctx, b.RoomID)
	if err != nil {
		return err
	} else if !encrypted {
		b.State, b.Reason = database.SentNothing, ReasonNotEncrypted
		return nil
	}
	visibility, err := p.Mach.StateStore.GetHistoryVisibility(ctx, b.RoomID)
	if err != nil {
		return err
	}
	if !keybundle.VisibilitySharesHistory(visibility) {
		counts, err := s.countSessions(ctx, p, b.RoomID)
		if err != nil {
			return err
		}
		b.State, b.Reason, b.Withheld = database.SentNothing, ReasonVisibility, counts
		return nil
	}
	if trust, err := p.Mach.ResolveTrustContext(ctx, p.Mach.OwnIdentity()); err != nil || trust < id.TrustStateCrossSignedTOFU {
		b.State, b.Reason = database.SentSkipped, ReasonPuppetUnsigned
		return err
	}
	targets, reason, err := s.bundleRecipients(ctx, p, b)
	if err != nil {
		return err
	} else if reason != "" {
		b.State, b.Reason = database.SentSkipped, reason
		return nil
	}
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

func bundleOwner(b *database.SentBundle) string { return "bundle-sent:" + b.BundleID }

// bundleRecipients queries the invitee's keys fresh and picks the devices signed by the invitee's
// current cross-signing identity. Every device gets a delivery row: pending (Delivered false, no
// reason) or skipped with the reason. A non-empty reason means nobody gets the bundle.
func (s *Service) bundleRecipients(ctx context.Context, p *crypto.Puppet, b *database.SentBundle) ([]database.Delivery, string, error) {
	devices, err := p.Mach.FetchKeys(ctx, []id.UserID{b.Invitee}, true)
	if err != nil {
		return nil, "", fmt.Errorf("failed to query invitee keys: %w", err)
	}
	xsKeys, err := p.Store.GetCrossSigningKeys(ctx, b.Invitee)
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
	for _, device := range devices[b.Invitee] {
		d := database.Delivery{UserID: b.Invitee, DeviceID: device.DeviceID}
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
		for _, d := range targets {
			if err = s.db.PutDelivery(ctx, b.BundleID, d); err != nil {
				return nil, "", err
			}
		}
		return nil, ReasonNoDevices, nil
	}
	return targets, "", nil
}

// deliver sends the bundle's details over Olm to each pending device and records each outcome.
// It is idempotent per device, so a delivery a restart interrupted finishes without repeats.
func (s *Service) deliver(ctx context.Context, p *crypto.Puppet, b *database.SentBundle) error {
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
	b.State = database.SentDelivered
	if b.Devices, err = s.db.GetDeliveries(ctx, b.BundleID); err != nil {
		return err
	}
	zerolog.Ctx(ctx).Info().Str("bundle_id", b.BundleID).Int("devices", len(b.Devices)).Msg("Delivered key bundle")
	return s.db.PutSentBundle(ctx, b)
}

// resumeSending finishes bundles a restart interrupted: uploaded ones are delivered to the devices
// still pending; ones interrupted while building are marked failed (nothing was sent for them).
func (s *Service) resumeSending(ctx context.Context) {
	unfinished, err := s.db.ListUnfinishedSentBundles(ctx)
	if err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to list unfinished bundles")
		return
	}
	for _, b := range unfinished {
		log := zerolog.Ctx(ctx).With().Str("bundle_id", b.BundleID).Stringer("puppet", b.Puppet).Stringer("room_id", b.RoomID).Logger()
		if b.State == database.SentBuilding {
			b.State, b.Reason = database.SentFailed, "interrupted by a restart before upload"
			if err = s.db.PutSentBundle(ctx, b); err != nil {
				log.Err(err).Msg("Failed to mark interrupted bundle")
			}
			continue
		}
		p, err := s.mgr.Get(ctx, b.Puppet)
		if err != nil {
			log.Err(err).Msg("Failed to load puppet to resume delivery")
			continue
		}
		if err = s.deliver(log.WithContext(ctx), p, b); err != nil {
			log.Err(err).Msg("Failed to resume bundle delivery")
		} else {
			log.Info().Msg("Resumed bundle delivery after restart")
		}
	}
}

// Bundles lists what the puppet sent and received.
func (s *Service) Bundles(ctx context.Context, puppet id.UserID) (any, error) {
	sent, err := s.db.ListSentBundles(ctx, puppet)
	if err != nil {
		return nil, err
	}
	received, err := s.db.ListReceivedBundles(ctx, puppet)
	if err != nil {
		return nil, err
	}
	sentOut := make([]*database.SentBundle, 0, len(sent))
	sentOut = append(sentOut, sent...)
	recvOut := make([]*database.ReceivedBundle, 0, len(received))
	recvOut = append(recvOut, received...)
	return map[string]any{"sent": sentOut, "received": recvOut}, nil
}
