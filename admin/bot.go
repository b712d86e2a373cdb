// Package admin provides heirloom's bot (appservice.bot_username): in an encrypted DM it answers
// heirloom's admins (config admins) with the state of the puppets, their bundles and the
// identities heirloom pins, and runs reshares and retries for them. It writes from its own device,
// signed by its own cross-signing identity, provisioned like a puppet's. Anyone else gets one
// polite refusal and is ignored from then on.
package admin

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/history"
)

// Refusal is what the bot says, once, to someone who is not an admin.
const Refusal = "Sorry, I only answer the administrators of this heirloom bridge, so I will not reply to you again."

// Texts the bot answers admins with outside of commands.
const (
	Greeting       = "Hello! I am heirloom's bot. Send help for the list of commands."
	NotEncrypted   = "This room is not encrypted: I take commands only in encrypted rooms. Enable encryption, or start an encrypted DM with me."
	SendEncrypted  = "I take commands only encrypted: this one came in the clear."
	UntrustedEvent = "I did not run that: it was not sent from a device your cross-signing identity signs. Verify this session, then send it again."
)

const (
	// queueSize bounds the events waiting for the bot; more are dropped (and logged).
	queueSize = 256
	// keyWait bounds how long a command waits for its room key to arrive.
	keyWait = 15 * time.Second
	// maxAge: commands older than this (sent while heirloom was away) are not run.
	maxAge = 10 * time.Minute
)

// Bot is heirloom's bot.
type Bot struct {
	cfg     *config.Config
	db      *database.Database
	mgr     *e2ee.Manager
	history *history.Service
	version string
	userID  id.UserID

	queue chan queued
	// provisioned is closed once the bot's device exists.
	provisioned chan struct{}
	provOnce    sync.Once
	done        chan struct{}
}

type queued struct {
	ctx context.Context
	evt *event.Event
}

// New creates the bot. version is what status reports.
func New(cfg *config.Config, db *database.Database, mgr *e2ee.Manager, hist *history.Service, version string) *Bot {
	return &Bot{
		cfg: cfg, db: db, mgr: mgr, history: hist, version: version, userID: cfg.BotUserID(),
		queue: make(chan queued, queueSize), provisioned: make(chan struct{}), done: make(chan struct{}),
	}
}

// Provision gives the bot its device and cross-signing identity (as a puppet's; idempotent).
func (b *Bot) Provision(ctx context.Context) error {
	ident, err := b.mgr.Provision(ctx, b.userID, "heirloom")
	if err != nil {
		return fmt.Errorf("failed to provision the bot: %w", err)
	}
	b.provOnce.Do(func() { close(b.provisioned) })
	zerolog.Ctx(ctx).Info().Stringer("bot", b.userID).Stringer("device_id", ident.DeviceID).
		Stringer("master_key", ident.MasterKey).Msg("The bot's device is ready")
	return nil
}

// Run provisions the bot if Provision did not succeed yet (retrying with backoff), then answers
// the events HandleEvent queued, in order, until ctx ends. Events still queued then are dropped.
func (b *Bot) Run(ctx context.Context) {
	defer close(b.done)
	log := zerolog.Ctx(ctx).With().Str("component", "admin_bot").Logger()
	ctx = log.WithContext(ctx)
	for delay := 5 * time.Second; !b.isProvisioned(); delay = min(2*delay, 5*time.Minute) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		if err := b.Provision(ctx); err != nil {
			log.Err(err).Dur("retry_in", delay).Msg("The bot has no device yet: it answers nobody")
		}
	}
	for {
		select {
		case <-ctx.Done():
			if n := len(b.queue); n > 0 {
				log.Warn().Int("events", n).Msg("Shutting down with events for the bot unanswered")
			}
			return
		case q := <-b.queue:
			b.handle(q.ctx, q.evt)
		}
	}
}

func (b *Bot) isProvisioned() bool {
	select {
	case <-b.provisioned:
		return true
	default:
		return false
	}
}

// HandleEvent queues the room events the bot acts on: invites of the bot, and messages in rooms
// the bot is in. It does no network call: the transaction stream calls it.
func (b *Bot) HandleEvent(ctx context.Context, evt *event.Event) {
	if evt.Sender == b.userID || evt.RoomID == "" {
		return
	}
	switch {
	case evt.Type == event.StateMember && evt.GetStateKey() == b.userID.String():
		if evt.Content.AsMember().Membership != event.MembershipInvite {
			return
		}
	case evt.Type == event.EventMessage || evt.Type == event.EventEncrypted:
		if evt.StateKey != nil || !b.db.StateStore.IsInRoom(ctx, evt.RoomID, b.userID) {
			return
		}
	default:
		return
	}
	log := zerolog.Ctx(ctx).With().Str("component", "admin_bot").Stringer("room_id", evt.RoomID).
		Stringer("sender", evt.Sender).Stringer("event_id", evt.ID).Logger()
	select {
	case b.queue <- queued{ctx: context.WithoutCancel(log.WithContext(ctx)), evt: evt}:
	default:
		log.Warn().Msg("The bot's queue is full: dropping the event")
	}
}

func (b *Bot) handle(ctx context.Context, evt *event.Event) {
	if !b.isProvisioned() {
		zerolog.Ctx(ctx).Warn().Msg("The bot has no device yet: not answering")
		return
	}
	bot, err := b.mgr.Get(ctx, b.userID)
	if err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to load the bot's device")
		return
	}
	if evt.Type == event.StateMember {
		b.handleInvite(ctx, bot, evt)
		return
	}
	b.handleMessage(ctx, bot, evt)
}

// handleInvite joins an admin's room; anyone else's invite is rejected, with the refusal the first time.
func (b *Bot) handleInvite(ctx context.Context, bot *e2ee.Puppet, evt *event.Event) {
	log := zerolog.Ctx(ctx)
	if !b.cfg.IsAdmin(evt.Sender) {
		reason := ""
		if b.refuseFirst(ctx, evt.Sender) {
			reason = Refusal
		}
		if _, err := bot.Client.LeaveRoom(ctx, evt.RoomID, &mautrix.ReqLeave{Reason: reason}); err != nil {
			log.Err(err).Msg("Failed to reject an invite from someone who is not an admin")
		}
		log.Info().Bool("refusal_sent", reason != "").Msg("Rejected an invite to the bot from someone who is not an admin")
		return
	}
	if _, err := bot.Client.JoinRoomByID(ctx, evt.RoomID); err != nil {
		log.Err(err).Msg("Failed to join an admin's room")
		return
	}
	log.Info().Msg("The bot joined an admin's room")
	if err := b.mgr.EnsureRoomState(ctx, bot.Client, evt.RoomID); err != nil {
		log.Warn().Err(err).Msg("Failed to read the room's state")
	}
	text := Greeting
	if encrypted, _ := b.db.StateStore.IsEncrypted(ctx, evt.RoomID); !encrypted {
		text = NotEncrypted
	}
	b.reply(ctx, bot, evt.RoomID, text)
}

// handleMessage runs an admin's command and answers it; others get the refusal once.
func (b *Bot) handleMessage(ctx context.Context, bot *e2ee.Puppet, evt *event.Event) {
	log := zerolog.Ctx(ctx)
	if !b.cfg.IsAdmin(evt.Sender) {
		if b.refuseFirst(ctx, evt.Sender) {
			b.reply(ctx, bot, evt.RoomID, Refusal)
			log.Info().Msg("Refused someone who is not an admin")
		}
		return
	}
	if age := time.Since(time.UnixMilli(evt.Timestamp)); age > maxAge {
		log.Info().Dur("age", age).Msg("Not running a command sent while heirloom was away")
		return
	}
	encrypted, err := b.db.StateStore.IsEncrypted(ctx, evt.RoomID)
	switch {
	case err != nil:
		log.Err(err).Msg("Failed to check the room's encryption")
		return
	case !encrypted:
		b.reply(ctx, bot, evt.RoomID, NotEncrypted)
		return
	case evt.Type != event.EventEncrypted:
		b.reply(ctx, bot, evt.RoomID, SendEncrypted)
		return
	}
	decrypted, err := b.decrypt(ctx, bot, evt)
	if err != nil {
		log.Warn().Err(err).Msg("Cannot decrypt an admin's message")
		b.reply(ctx, bot, evt.RoomID, "I could not decrypt your message: "+err.Error())
		return
	}
	if decrypted.Mautrix.ForwardedKeys || decrypted.Mautrix.TrustState < id.TrustStateCrossSignedTOFU {
		log.Warn().Str("trust", e2ee.TrustName(decrypted.Mautrix.TrustState, decrypted.Mautrix.ForwardedKeys)).
			Msg("Not running a command from a device the admin's identity does not sign")
		b.reply(ctx, bot, evt.RoomID, UntrustedEvent)
		return
	}
	if decrypted.Type != event.EventMessage {
		return
	}
	if err = decrypted.Content.ParseRaw(decrypted.Type); err != nil && !errors.Is(err, event.ErrContentAlreadyParsed) {
		return
	}
	msg := decrypted.Content.AsMessage()
	if msg.MsgType != event.MsgText {
		return
	}
	answer := b.run(ctx, evt.Sender, msg.Body)
	log.Info().Str("command", commandName(msg.Body)).Msg("Answered an admin's command")
	b.reply(ctx, bot, evt.RoomID, answer)
}

// refuseFirst records the refusal of userID and reports whether it is the first one.
func (b *Bot) refuseFirst(ctx context.Context, userID id.UserID) bool {
	first, err := b.db.RecordRefusal(ctx, userID)
	if err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to record a refusal")
		return false // better silent than refusing over and over
	}
	return first
}

// decrypt decrypts an event, waiting for its room key if it has not arrived yet (it comes over
// to-device, which the homeserver may push after the event, or not at all: then a sweep finds it).
func (b *Bot) decrypt(ctx context.Context, bot *e2ee.Puppet, evt *event.Event) (*event.Event, error) {
	content, ok := evt.Content.Parsed.(*event.EncryptedEventContent)
	if !ok {
		return nil, errors.New("malformed encrypted event")
	}
	deadline := time.Now().Add(keyWait)
	swept := false
	for {
		decrypted, err := bot.Mach.DecryptMegolmEvent(ctx, evt)
		if !errors.Is(err, crypto.ErrNoSessionFound) || time.Now().After(deadline) {
			return decrypted, err
		}
		if !bot.Mach.WaitForSession(ctx, evt.RoomID, content.SenderKey, content.SessionID, time.Second) && !swept &&
			time.Until(deadline) < keyWait-3*time.Second {
			swept = true
			if _, err = bot.SweepToDevice(ctx, true); err != nil {
				zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to sweep the bot's to-device inbox")
			}
		}
	}
}

// reply sends text into the room as a notice, encrypted if the room is.
func (b *Bot) reply(ctx context.Context, bot *e2ee.Puppet, roomID id.RoomID, text string) {
	content := &event.MessageEventContent{MsgType: event.MsgNotice, Body: text}
	if _, err := bot.SendMessage(ctx, roomID, event.EventMessage, content); err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to send the bot's answer")
	}
}

// commandName names the command of a message for the log: a known command, or "unknown".
func commandName(body string) string {
	name, _ := parse(body)
	if _, ok := commands[name]; ok {
		return name
	}
	return "unknown"
}
