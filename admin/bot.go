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
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
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
	// keyWait bounds how long an admin's command waits for its room key to arrive.
	keyWait = 15 * time.Second
	// keyRequestAfter is how long the bot waits for a room key before it asks the sender for it.
	keyRequestAfter = 2 * time.Second
	// keyPoll is how often a waiting command tries its room key again, in case the key came
	// without the machine that waits hearing of it.
	keyPoll = 500 * time.Millisecond
)

// Bot is heirloom's bot.
type Bot struct {
	cfg     *config.Config
	db      *database.Database
	mgr     *e2ee.Manager
	history *history.Service
	version string
	userID  id.UserID
	// gateway is gateway mode's operations (UseGateway), nil when it is off.
	gateway Gateway

	queue chan queued
	// lanes holds the events of each sender being answered (lanes.go).
	lanes lanes
	// provisioned is closed once the bot's device exists.
	provisioned chan struct{}
	provOnce    sync.Once

	// keyWait and keyRequestAfter are the constants of the same names; now is the clock.
	keyWait, keyRequestAfter time.Duration
	now                      func() time.Time
}

type queued struct {
	ctx context.Context
	evt *event.Event
	// received is when heirloom got the event.
	received time.Time
}

// New creates the bot. version is what status reports.
func New(cfg *config.Config, db *database.Database, mgr *e2ee.Manager, hist *history.Service, version string) *Bot {
	return &Bot{
		cfg: cfg, db: db, mgr: mgr, history: hist, version: version, userID: cfg.BotUserID(),
		queue: make(chan queued, queueSize), provisioned: make(chan struct{}),
		keyWait: keyWait, keyRequestAfter: keyRequestAfter, now: time.Now,
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
// the events HandleEvent queued until ctx ends: each sender's in order, and no sender's waiting
// for another's (lanes.go). Events still queued then are dropped; Run returns once the events
// being answered are done.
func (b *Bot) Run(ctx context.Context) {
	defer b.lanes.wait()
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
			b.lanes.add(ctx, q, b.handle)
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
	if !b.lanes.admit(evt.Sender) {
		log.Warn().Msg("Too many of this sender's events wait for the bot: dropping the event")
		return
	}
	select {
	case b.queue <- queued{ctx: context.WithoutCancel(log.WithContext(ctx)), evt: evt, received: b.now()}:
	default:
		b.lanes.release(evt.Sender)
		log.Warn().Msg("The bot's queue is full: dropping the event")
	}
}

func (b *Bot) handle(ctx context.Context, q queued) {
	evt := q.evt
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
	b.handleMessage(ctx, bot, q)
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

// handleMessage runs an admin's command and answers it; others get the refusal once. In a DM (the
// bot and one other member) every message is for the bot; in a larger room only those addressed
// to it ("!heirloom status", "heirloom: status"), so that people can talk there. What it does
// is decide's to say (accept.go).
func (b *Bot) handleMessage(ctx context.Context, bot *e2ee.Puppet, q queued) {
	log := zerolog.Ctx(ctx)
	evt := q.evt
	encrypted, err := b.db.StateStore.IsEncrypted(ctx, evt.RoomID)
	if err != nil {
		log.Err(err).Msg("Failed to check the room's encryption")
		return
	}
	m := message{admin: b.cfg.IsAdmin(evt.Sender), dm: b.isDM(ctx, evt.RoomID), roomEncrypted: encrypted,
		eventEncrypted: evt.Type == event.EventEncrypted, sent: time.UnixMilli(evt.Timestamp), received: q.received}
	body := b.readCommand(evt, &m)
	v := decide(m)
	var decryptErr error
	if v.action == decrypt {
		var msg *event.Event
		if msg, decryptErr = b.decrypt(ctx, bot, evt, v.waitForKey); decryptErr != nil {
			m.undecryptable = true
		} else {
			m.decrypted, m.trust, m.forwarded = true, msg.Mautrix.TrustState, msg.Mautrix.ForwardedKeys
			body = b.readCommand(msg, &m)
		}
		v = decide(m)
	}
	b.act(ctx, bot, evt, v, m, body, decryptErr)
}

// readCommand returns the command a plaintext message carries, and sets m.command if it is one.
func (b *Bot) readCommand(msg *event.Event, m *message) string {
	body, ok := textOf(msg)
	if ok && !m.dm {
		body, ok = b.addressed(body)
	}
	m.command = ok
	return body
}

// act does what the verdict on a message says.
func (b *Bot) act(ctx context.Context, bot *e2ee.Puppet, evt *event.Event, v verdict, m message, body string, decryptErr error) {
	log := zerolog.Ctx(ctx)
	switch v.action {
	case ignore:
		level := zerolog.InfoLevel
		if v.reason == reasonNotCommand || v.reason == reasonUndecryptable {
			level = zerolog.DebugLevel
		}
		log.WithLevel(level).AnErr("decrypt_error", decryptErr).Str("reason", v.reason).Msg("Not handling a message")
	case refuse:
		b.refuse(ctx, bot, evt)
	case tellUndecryptable:
		log.Warn().Err(decryptErr).Msg("Cannot decrypt an admin's message")
		b.reply(ctx, bot, evt.RoomID, "I could not decrypt your message: "+decryptErr.Error())
	case tellNotEncrypted:
		b.reply(ctx, bot, evt.RoomID, NotEncrypted)
	case tellSendEncrypted:
		b.reply(ctx, bot, evt.RoomID, SendEncrypted)
	case tellUntrusted:
		log.Warn().Str("trust", e2ee.TrustName(m.trust, m.forwarded)).Str("reason", v.reason).
			Msg("Not running a command from a device the admin's identity does not sign")
		b.reply(ctx, bot, evt.RoomID, UntrustedEvent)
	case run:
		answer := b.run(ctx, evt.Sender, body)
		log.Info().Str("command", commandName(body)).Msg("Answered an admin's command")
		b.reply(ctx, bot, evt.RoomID, answer)
	default:
		log.Error().Int("action", int(v.action)).Msg("No handling for the bot's verdict")
	}
}

// refuse sends the refusal, if the sender never had it.
func (b *Bot) refuse(ctx context.Context, bot *e2ee.Puppet, evt *event.Event) {
	if b.refuseFirst(ctx, evt.Sender) {
		b.reply(ctx, bot, evt.RoomID, Refusal)
		zerolog.Ctx(ctx).Info().Msg("Refused someone who is not an admin")
	}
}

// isDM reports whether the bot and at most one other user are joined to the room.
func (b *Bot) isDM(ctx context.Context, roomID id.RoomID) bool {
	members, err := b.db.StateStore.GetRoomMembers(ctx, roomID, event.MembershipJoin)
	return err == nil && len(members) <= 2
}

// textOf returns the body of a text message event.
func textOf(evt *event.Event) (string, bool) {
	if evt.Type != event.EventMessage {
		return "", false
	}
	if err := evt.Content.ParseRaw(evt.Type); err != nil && !errors.Is(err, event.ErrContentAlreadyParsed) {
		return "", false
	}
	msg := evt.Content.AsMessage()
	return msg.Body, msg.MsgType == event.MsgText
}

// addressed returns the message without its address to the bot ("!heirloom", "heirloom:", the
// bot's localpart or user ID and a colon), and whether it had one.
func (b *Bot) addressed(body string) (string, bool) {
	first, rest, _ := strings.Cut(strings.TrimSpace(body), " ")
	switch strings.ToLower(first) {
	case "!heirloom", "heirloom:", strings.ToLower(b.cfg.AppService.BotUsername) + ":", strings.ToLower(b.userID.String()) + ":":
		return rest, true
	}
	return "", false
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

// decrypt decrypts an event as the puppets do (e2ee.Puppet.Decrypt). With waitForKey (an admin's message) it waits for a missing room
// key: it comes over to-device, which the homeserver may push after the event, or not at all
// (Synapse skips some pushes, and refuses /sync to the bot, which is the appservice's sender).
// Then the bot asks the sending device for the key. Without it, only a key already held is used.
func (b *Bot) decrypt(ctx context.Context, bot *e2ee.Puppet, evt *event.Event, waitForKey bool) (*event.Event, error) {
	content, ok := evt.Content.Parsed.(*event.EncryptedEventContent)
	if !ok {
		return nil, errors.New("malformed encrypted event")
	}
	start := b.now()
	requested := false
	for {
		// Through the puppets' path: the replay check is the puppet's own, per room, recorded only
		// once the plaintext names the event's room.
		decrypted, err := bot.Decrypt(ctx, evt)
		waited := b.now().Sub(start)
		if !waitForKey || !e2ee.IsMissingKey(err) || waited >= b.keyWait || ctx.Err() != nil {
			if err != nil {
				return nil, err
			}
			return decrypted.Event, nil
		}
		if !requested && waited >= b.keyRequestAfter {
			requested = true
			if err = bot.RequestRoomKeyForEvent(ctx, evt); err != nil {
				zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to ask for a missing room key")
			}
		}
		bot.Mach.WaitForSession(ctx, evt.RoomID, content.SenderKey, content.SessionID, keyPoll)
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
