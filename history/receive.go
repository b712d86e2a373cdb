package history

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/internal/fault"
	"github.com/heirloom-matrix/heirloom/internal/mediafetch"
	"github.com/heirloom-matrix/heirloom/keybundle"
	"github.com/heirloom-matrix/heirloom/metrics"
)

// maxDeviceID bounds a device ID heirloom stores from outside.
const maxDeviceID = 255

func receivedOwner(b *database.ReceivedBundle) string {
	return "bundle-received:" + b.Puppet.String() + "|" + b.RoomID.String() + "|" + b.Sender.String()
}

// ReceiveBundle stores a bundle's details as they arrive over Olm; it does not download anything
// unless the puppet already accepted an invite from the sender (MSC4268: no DoS by bundle). It is
// the e2ee.BundleHandler of the daemon's manager.
func (s *Service) ReceiveBundle(ctx context.Context, p *e2ee.Puppet, evt *crypto.DecryptedOlmEvent, content *e2ee.BundleContent) {
	// The sender and the event type are in the context already (e2ee's Puppet.handleToDevice).
	log := zerolog.Ctx(ctx).With().Stringer("puppet", p.UserID).Stringer("room_id", content.RoomID).Logger()
	if !s.cfg.IsManaged(p.UserID) {
		log.Debug().Msg("Dropping key bundle: only puppets and a gateway's bridge users take part in history sharing")
		return
	}
	if err := keybundle.ValidateSenderDeviceKeys(evt.Sender, evt.SenderKey, evt.Keys.Ed25519, evt.SenderDeviceKeys); err != nil {
		log.Warn().Err(err).Msg("Dropping key bundle")
		return
	}
	if !keybundle.ValidRoomID(content.RoomID) || content.File.URL == "" {
		log.Warn().Msg("Dropping key bundle without a valid room_id or a file URL")
		return
	} else if !keybundle.ValidText(string(evt.SenderDeviceKeys.DeviceID), maxDeviceID) {
		log.Warn().Msg("Dropping key bundle whose sender device ID heirloom would not store")
		return
	}
	if err := keybundle.PrepareFile(&content.File); err != nil {
		log.Warn().Err(err).Msg("Dropping key bundle with unusable file keys")
		return
	}
	if s.alreadyImported(ctx, p, content.RoomID, evt.Sender) {
		log.Warn().Msg("Dropping key bundle: one from this sender was already imported for the invite the puppet accepted")
		return
	}
	b := &database.ReceivedBundle{
		Puppet: p.UserID, RoomID: content.RoomID, Sender: evt.Sender, SenderDevice: evt.SenderDeviceKeys.DeviceID,
		SenderKey: evt.SenderKey, State: database.ReceivedPending,
	}
	var err error
	if b.FileInfo, err = p.Manager().Sealer.SealJSON(receivedOwner(b), &content.File); err != nil {
		log.Err(err).Msg("Failed to seal bundle details")
		return
	}
	if err = s.db.PutReceivedBundle(ctx, b); err != nil {
		log.Err(err).Msg("Failed to store key bundle")
		return
	}
	log.Info().Stringer("sender_device", b.SenderDevice).Msg("Stored key bundle")
	s.Metrics.BundleReceived(metrics.ReceivedArrived, metrics.ReasonNone)
	s.background(log.WithContext(ctx), "accept_bundle", func(ctx context.Context) { s.tryAccept(ctx, p, content.RoomID) })
}

// alreadyImported reports whether a bundle from sender was imported under the join the puppet's
// current invite to the room was accepted with: one import per accepted invite, or an inviter
// could make the puppet download and import the same bundle over and over, each time holding its
// sessions (and SQLite's writer) for the length of the import.
func (s *Service) alreadyImported(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID, sender id.UserID) bool {
	inv, err := s.db.GetInvite(ctx, p.UserID, roomID)
	if err != nil || !inv.Confirmed() {
		return false
	}
	b, err := s.db.GetReceivedBundle(ctx, p.UserID, roomID, sender)
	return err == nil && b != nil && b.State == database.ReceivedImported && b.ImportJoin == inv.JoinEventID
}

// TrackMembership keeps the puppets' invite records in step with the transaction stream, event by
// event in order, before any reaction: an invite is recorded, a join that replaced the recorded
// invite confirms it, and anything else (a leave, a rescinded invite, a ban, a join that replaced
// something else) forgets it. So an invite rescinded within the same transaction is never live. A
// join whose event does not say what it replaced is left to ObserveJoin, which asks the homeserver.
func (s *Service) TrackMembership(ctx context.Context, evt *event.Event) {
	puppet := id.UserID(evt.GetStateKey())
	log := zerolog.Ctx(ctx).With().Stringer("puppet", puppet).Stringer("room_id", evt.RoomID).Stringer("event_id", evt.ID).Logger()
	var err error
	switch evt.Content.AsMember().Membership {
	case event.MembershipInvite:
		err = s.db.PutInvite(ctx, &database.Invite{Puppet: puppet, RoomID: evt.RoomID, Inviter: evt.Sender,
			InviteEventID: evt.ID, InvitedAt: time.Now().UnixMilli()})
	case event.MembershipJoin:
		var inv *database.Invite
		if inv, err = s.db.GetInvite(ctx, puppet, evt.RoomID); err == nil && inv != nil && !inv.Confirmed() {
			s.bindJoin(log.WithContext(ctx), inv, keybundle.JoinFromMemberEvent(evt))
		}
	default:
		// A puppet that leaves, rejects, loses or is banned from an invite no longer accepts a
		// bundle on the strength of that invite.
		err = s.db.DeleteInvite(ctx, puppet, evt.RoomID)
	}
	if err != nil {
		log.Err(err).Msg("Failed to track puppet membership")
	}
}

// bindJoin applies what a join says it replaced to the recorded invite: confirmed if it replaced
// exactly that invite, forgotten if it replaced anything else, left as it is if the join does not say.
func (s *Service) bindJoin(ctx context.Context, inv *database.Invite, join keybundle.JoinInfo) keybundle.Replaced {
	log := zerolog.Ctx(ctx)
	verdict := keybundle.JoinReplaced(inv.InviteEventID, join)
	var err error
	switch verdict {
	case keybundle.ReplacedInvite:
		err = s.db.ConfirmJoin(ctx, inv.Puppet, inv.RoomID, inv.InviteEventID, join.EventID)
		log.Debug().Stringer("inviter", inv.Inviter).Stringer("join_event_id", join.EventID).Msg("Puppet joined from invite")
	case keybundle.ReplacedOther:
		err = s.db.DeleteInvite(ctx, inv.Puppet, inv.RoomID)
		log.Info().Stringer("inviter", inv.Inviter).Stringer("invite_event_id", inv.InviteEventID).
			Stringer("replaced", join.ReplacesState).
			Msg("Puppet's join did not replace the recorded invite: no bundle will be accepted on it")
	}
	if err != nil {
		log.Err(err).Msg("Failed to record how the puppet joined")
	}
	return verdict
}

// InviteReceived joins at once if auto_join allows the inviter and the invite is still the
// current one (TrackMembership recorded it, and nothing in the transaction replaced it since).
func (s *Service) InviteReceived(ctx context.Context, evt *event.Event) {
	puppet := id.UserID(evt.GetStateKey())
	log := zerolog.Ctx(ctx)
	if !s.cfg.AutoJoinAllowed(evt.Sender) {
		log.Info().Msg("Puppet was invited; not joining automatically (history_sharing.auto_join does not allow the inviter)")
		return
	}
	if inv, err := s.db.GetInvite(ctx, puppet, evt.RoomID); err != nil || inv == nil || inv.InviteEventID != evt.ID {
		log.Info().Msg("Not joining automatically: the invite is no longer current")
		return
	}
	s.background(ctx, "auto_join", func(ctx context.Context) {
		p, err := s.mgr.Get(ctx, puppet)
		if err != nil {
			log.Warn().Err(err).Msg("Cannot auto-join: puppet not provisioned")
			return
		}
		if _, err = s.Join(ctx, p, evt.RoomID); err != nil {
			log.Err(err).Msg("Failed to auto-join room")
		}
	})
}

// ObserveJoin finishes what TrackMembership could not decide from a puppet's join event alone: it
// stores the room keys held until the join (e2ee.Puppet.ReleaseHeldKeys), asks the homeserver what
// the join replaced, then imports the inviter's bundle if that allows it.
func (s *Service) ObserveJoin(ctx context.Context, evt *event.Event) {
	puppet := id.UserID(evt.GetStateKey())
	s.background(ctx, "observe_join", func(ctx context.Context) {
		p, err := s.mgr.Get(ctx, puppet)
		if err != nil {
			return
		}
		// Room keys that came while the puppet was only invited, from senders the homeserver can
		// now say are members or not.
		p.ReleaseHeldKeys(ctx, evt.RoomID)
		inv, err := s.db.GetInvite(ctx, puppet, evt.RoomID)
		if err != nil || inv == nil {
			return
		}
		if !inv.Confirmed() {
			if join, ok := s.ownJoin(ctx, p, evt.RoomID); ok {
				s.bindJoin(ctx, inv, join)
			}
		}
		s.tryAccept(ctx, p, evt.RoomID)
	})
}

// Join joins the room as the puppet. If the puppet was invited, the acceptance is recorded durably
// before the join is sent, bound to the join that replaced the invite once the homeserver names it,
// and the inviter's bundle, if it arrived, is imported before Join returns.
func (s *Service) Join(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID) (*JoinResult, error) {
	// Nothing here may depend on the caller staying: a request cancelled half-way (the bridge gave
	// up waiting) would otherwise leave a join done on the homeserver and its bundle pending,
	// with no retry to pick it up. The homeserver client's own timeouts bound it.
	ctx = context.WithoutCancel(ctx)
	inv, err := s.BeforeJoin(ctx, p, roomID)
	if err != nil {
		return nil, err
	}
	// The homeserver's word that the room is unencrypted, given to the puppet before, may be the
	// room's state at its leave: it never outlives a join.
	p.Manager().ForgetPlaintext(roomID, p.UserID) // before the join, and after it
	defer p.Manager().ForgetPlaintext(roomID, p.UserID)
	if _, err = p.Client.JoinRoomByID(ctx, roomID); err != nil {
		return nil, fmt.Errorf("failed to join room: %w", err)
	}
	return s.AfterJoin(ctx, p, roomID, inv)
}

// BeforeJoin records durably, before the caller sends the join, that the puppet is joining from
// its current invite to the room (if it has one), and returns that invite.
func (s *Service) BeforeJoin(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID) (*database.Invite, error) {
	inv, err := s.db.GetInvite(ctx, p.UserID, roomID)
	if err != nil {
		return nil, err
	}
	if inv != nil && inv.AcceptedAt == 0 {
		if err = s.db.MarkInviteAccepted(ctx, p.UserID, roomID, inv.InviteEventID); err != nil {
			return nil, err
		}
	}
	return inv, nil
}

// AfterJoin binds a join the homeserver accepted to the invite it replaced (inv is BeforeJoin's),
// and imports the inviter's bundle, if it arrived, before it returns.
func (s *Service) AfterJoin(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID, inv *database.Invite) (*JoinResult, error) {
	log := zerolog.Ctx(ctx).With().Stringer("puppet", p.UserID).Stringer("room_id", roomID).Logger()
	ctx = context.WithoutCancel(log.WithContext(ctx))
	if err := s.db.StateStore.SetMembership(ctx, roomID, p.UserID, event.MembershipJoin); err != nil {
		log.Warn().Err(err).Msg("Failed to record own membership")
	}
	result := &JoinResult{RoomID: roomID, History: "joined without an invite: no key bundle will be imported"}
	join, known := s.ownJoin(ctx, p, roomID)
	switch {
	case inv != nil && known:
		if s.bindJoin(ctx, inv, join) != keybundle.ReplacedInvite {
			inv = nil
		}
	case inv == nil && known && join.PrevMembership == event.MembershipInvite && join.PrevSender != "":
		// The bridge may call join before the invite's transaction reached heirloom: learn the
		// inviter from the homeserver's record of the membership the join replaced.
		inv = &database.Invite{Puppet: p.UserID, RoomID: roomID, Inviter: join.PrevSender,
			InviteEventID: join.ReplacesState, InvitedAt: time.Now().UnixMilli()}
		err := s.db.PutInvite(ctx, inv)
		if err == nil {
			err = s.db.ConfirmJoin(ctx, p.UserID, roomID, inv.InviteEventID, join.EventID)
		}
		if err != nil {
			return nil, err
		}
	case inv != nil:
		log.Warn().Msg("Could not read what the join replaced; the invite's acceptance waits for the join's event")
	}
	if inv == nil {
		log.Info().Msg("Joined room")
		return result, nil
	}
	log.Info().Stringer("inviter", inv.Inviter).Msg("Joined room from invite")
	bundle := s.tryAccept(ctx, p, roomID)
	if bundle == nil {
		// The bundle may be waiting in the device inbox, never pushed (see e2ee.SweepToDevice).
		if n, err := p.SweepToDevice(ctx, true); err != nil {
			log.Warn().Err(err).Msg("Failed to sweep to-device messages after joining")
		} else if n > 0 {
			bundle = s.tryAccept(ctx, p, roomID)
		}
	}
	result.Bundle, result.History = receivedReport(bundle), describe(bundle, inv.Inviter)
	return result, nil
}

// ownJoin reads the puppet's own member event in the room from the homeserver, with what it
// replaced (Synapse names it in unsigned: replaces_state, prev_content, prev_sender).
func (s *Service) ownJoin(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID) (keybundle.JoinInfo, bool) {
	var evt event.Event
	url := p.Client.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "rooms", roomID, "state", event.StateMember.Type, p.UserID},
		map[string]string{"format": "event"})
	if _, err := p.Client.MakeRequest(ctx, "GET", url, nil, &evt); err != nil {
		zerolog.Ctx(ctx).Debug().Err(err).Msg("Could not read own member event after joining")
		return keybundle.JoinInfo{}, false
	}
	if err := evt.Content.ParseRaw(event.StateMember); err != nil && !errors.Is(err, event.ErrContentAlreadyParsed) {
		return keybundle.JoinInfo{}, false
	}
	if evt.Content.AsMember().Membership != event.MembershipJoin {
		return keybundle.JoinInfo{}, false
	}
	return keybundle.JoinFromMemberEvent(&evt), true
}

func describe(b *database.ReceivedBundle, inviter id.UserID) string {
	if b == nil {
		return fmt.Sprintf("no key bundle from %s (yet): history is readable only if one arrives within the accept window", inviter)
	}
	switch b.State {
	case database.ReceivedImported:
		return fmt.Sprintf("imported %d keys shared by %s (%d withheld)", b.Imported, b.Sender, b.Withheld)
	case database.ReceivedRetry:
		return "downloading the key bundle failed; retrying: " + b.Error
	default:
		return fmt.Sprintf("key bundle %s: %s", b.State, b.Error)
	}
}

// tryAccept imports the inviter's bundle for the room if every rule allows it now. It runs right
// after a join, when a bundle arrives after the join, on retries and at startup; a per-room lock
// keeps two of them from importing the same bundle at once. Its callers' contexts name the puppet
// and the room in the log.
func (s *Service) tryAccept(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID) *database.ReceivedBundle {
	defer s.acceptLock.WithLock(p.UserID.String() + "|" + roomID.String())()
	log := zerolog.Ctx(ctx)
	inv, err := s.db.GetInvite(ctx, p.UserID, roomID)
	if err != nil || !inv.Confirmed() {
		return nil
	}
	s.rejectOthers(ctx, p.UserID, roomID, inv.Inviter)
	b, err := s.db.GetReceivedBundle(ctx, p.UserID, roomID, inv.Inviter)
	if err != nil {
		log.Err(err).Msg("Failed to load received bundle")
		return nil
	} else if b == nil || (b.State != database.ReceivedPending && b.State != database.ReceivedRetry) {
		return b
	}
	membership, _ := s.db.StateStore.GetMembership(ctx, roomID, p.UserID)
	verdict, reason := keybundle.Decide(keybundle.AcceptInput{
		AcceptedAt:  time.UnixMilli(inv.AcceptedAt),
		Inviter:     inv.Inviter,
		Sender:      b.Sender,
		Joined:      membership == event.MembershipJoin,
		SenderTrust: s.senderTrust(ctx, p, b),
		Now:         time.Now(),
		Window:      s.cfg.HistorySharing.AcceptWindow,
	})
	saved := false // an imported bundle's state is saved with its keys
	switch verdict {
	case keybundle.Wait:
		return b
	case keybundle.Reject:
		b.State, b.Error = database.ReceivedRejected, reason
	case keybundle.Expire:
		b.State, b.Error = database.ReceivedExpired, reason
	case keybundle.Import:
		fault.Crash("crash_before_import")
		b.ImportJoin = inv.JoinEventID
		saved = s.downloadAndImport(ctx, p, b)
	}
	if !saved {
		if err = s.db.UpdateReceivedBundle(ctx, b); err != nil {
			log.Err(err).Msg("Failed to save bundle state")
		}
	}
	log.Info().Str("state", b.State).Int("imported", b.Imported).Int("withheld", b.Withheld).Str("reason", b.Error).
		Stringer("sender", b.Sender).Msg("Processed key bundle")
	s.receivedOutcome(b, inv.AcceptedAt)
	return b
}

// rejectOthers marks bundles for the room from anyone but the inviter as never to be imported.
func (s *Service) rejectOthers(ctx context.Context, puppet id.UserID, roomID id.RoomID, inviter id.UserID) {
	if n, err := s.db.RejectBundlesNotFrom(ctx, puppet, roomID, inviter, "sender is not the inviter "+inviter.String()); err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to reject bundles from non-inviters")
	} else {
		s.Metrics.BundlesReceived(metrics.ReceivedRejected, metrics.ReasonNotInviter, n)
	}
}

// senderTrust queries the sender's keys fresh and resolves the trust in the sending device, using
// the device keys from the Olm message if the device has since been deleted (MSC4147).
func (s *Service) senderTrust(ctx context.Context, p *e2ee.Puppet, b *database.ReceivedBundle) id.TrustState {
	devices, err := p.FetchDevices(ctx, []id.UserID{b.Sender})
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to query the bundle sender's keys")
	}
	device := devices[b.Sender][b.SenderDevice]
	if device == nil {
		if device, err = p.Store.GetDevice(ctx, b.Sender, b.SenderDevice); err != nil || device == nil {
			return id.TrustStateUnknownDevice
		}
	}
	if device.IdentityKey != b.SenderKey {
		return id.TrustStateDeviceKeyMismatch
	}
	trust, err := p.Mach.ResolveTrustContext(ctx, device)
	if err != nil {
		return id.TrustStateUnset
	}
	return trust
}

// downloadAndImport fetches the bundle (capped, hash-checked) into a temporary file, then
// decrypts and imports it. It sets b's state: imported, expired (media gone), retry or failed. It
// reports whether the state is saved already: an imported bundle's state is written in the
// import's own transaction, so a crash can never leave the keys stored and the bundle pending.
func (s *Service) downloadAndImport(ctx context.Context, p *e2ee.Puppet, b *database.ReceivedBundle) (saved bool) {
	var info event.EncryptedFileInfo
	if err := p.Manager().Sealer.OpenJSON(receivedOwner(b), b.FileInfo, &info); err != nil {
		b.State, b.Error = database.ReceivedFailed, err.Error()
		return false
	}
	file, err := s.download(ctx, p, &info)
	if err != nil {
		b.Attempts++
		var he mautrix.HTTPError
		switch {
		case errors.Is(err, mautrix.MNotFound) || (errors.As(err, &he) && he.Response != nil && he.Response.StatusCode == 404):
			b.State, b.Error = database.ReceivedExpired, "bundle media is gone from the homeserver (M_NOT_FOUND)"
		case errors.Is(err, keybundle.ErrBundleTooLarge), errors.Is(err, errHashMismatch):
			b.State, b.Error = database.ReceivedFailed, err.Error()
		case b.Attempts >= s.maxAttempts:
			b.State, b.Error = database.ReceivedFailed, fmt.Sprintf("gave up after %d attempts: %v", b.Attempts, err)
		default:
			b.State, b.Error = database.ReceivedRetry, err.Error()
			b.NextAttempt = time.Now().Add(s.retryBase << (b.Attempts - 1)).UnixMilli()
		}
		return false
	}
	defer file.Close() // removes it
	plaintext, err := keybundle.Open(file, &info, s.cfg.HistorySharing.MaxBundleSize)
	if err != nil {
		b.State, b.Error = database.ReceivedFailed, err.Error()
		return false
	}
	if _, err = s.importBundle(ctx, p, b, plaintext, file.Size); err != nil {
		// Rolled back: nothing of the bundle is stored, and the report says so.
		b.State, b.Error = database.ReceivedFailed, err.Error()
		b.Imported, b.Withheld, b.Skipped = 0, 0, 0
		return false
	}
	return true
}

var errHashMismatch = errors.New("bundle hash does not match: refusing it")

// download streams the encrypted bundle into a temporary file, refusing more than the size cap
// before reading it all, and checks its SHA-256 hash.
func (s *Service) download(ctx context.Context, p *e2ee.Puppet, info *event.EncryptedFileInfo) (*mediafetch.File, error) {
	return mediafetch.Encrypted(ctx, p.Client, info, mediafetch.Options{
		What: "bundle", MaxSize: s.cfg.HistorySharing.MaxBundleSize, Setting: "history_sharing.max_bundle_size",
		TooLarge: keybundle.ErrBundleTooLarge, HashMismatch: errHashMismatch,
		Dir: s.TempDir, Pattern: "heirloom-download-*",
	})
}

// resumeReceiving finishes what a restart interrupted: invites auto_join allows but not yet
// joined, and imports of accepted invites still within the window. Older records are dropped.
func (s *Service) resumeReceiving(ctx context.Context) {
	s.expire(ctx)
	invites, err := s.db.ListAcceptedInvites(ctx, time.Now().Add(-s.cfg.HistorySharing.AcceptWindow))
	if err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to list accepted invites")
		return
	}
	for _, inv := range invites {
		p, err := s.mgr.Get(ctx, inv.Puppet)
		if err != nil {
			continue
		}
		log := zerolog.Ctx(ctx).With().Stringer("puppet", inv.Puppet).Stringer("room_id", inv.RoomID).Logger()
		if b := s.tryAccept(log.WithContext(ctx), p, inv.RoomID); b != nil {
			log.Info().Str("state", b.State).Msg("Resumed key bundle after restart")
		}
	}
}

// retryDue retries downloads whose backoff has passed.
func (s *Service) retryDue(ctx context.Context) {
	due, err := s.db.ListDueRetries(ctx)
	if err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to list bundle retries")
		return
	}
	for _, b := range due {
		if p, err := s.mgr.Get(ctx, b.Puppet); err == nil {
			log := zerolog.Ctx(ctx).With().Stringer("puppet", b.Puppet).Stringer("room_id", b.RoomID).Logger()
			s.tryAccept(log.WithContext(ctx), p, b.RoomID)
		}
	}
}

// expire drops acceptance records past the window, and gives up on bundles whose delivery waited
// past deliveryBound.
func (s *Service) expire(ctx context.Context) {
	if n, err := s.db.FailStaleSentBundles(ctx, time.Now().Add(-s.deliveryBound()), ReasonDeliveryTooLate); err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to expire undelivered bundles")
	} else if n > 0 {
		s.Metrics.BundlesSent(metrics.SentFailed, metrics.ReasonTooLate, n)
		zerolog.Ctx(ctx).Info().Int64("count", n).Msg("Gave up on bundles whose delivery did not finish in time")
	}
	n, err := s.db.ExpireAcceptWindow(ctx, s.cfg.HistorySharing.AcceptWindow)
	if err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to expire old invite acceptances")
	} else if n > 0 {
		zerolog.Ctx(ctx).Info().Int64("count", n).Msg("Dropped invite acceptances past the accept window")
	}
}
