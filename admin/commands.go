package admin

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/history"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// command is one command of the bot: its arguments' synopsis, what it does, and its code.
type command struct {
	args string
	help string
	run  func(b *Bot, ctx context.Context, admin id.UserID, args []string) string
}

var commands map[string]command

func init() {
	commands = map[string]command{
		"help":     {"", "this list", (*Bot).help},
		"status":   {"", "the homeserver, the puppets, loaded machines, bundles pending, retrying or failed, devices not restored", (*Bot).status},
		"puppet":   {"<user>", "a puppet's device, master key, rooms and last activity", (*Bot).puppet},
		"bundles":  {"<room>", "the bundles sent and received in a room, with each device's outcome", (*Bot).bundles},
		"identity": {"<user> [confirm <master key>]", "the master key heirloom sees for a user and the one it first saw; confirm trusts a changed one (after you checked it with the user)", (*Bot).identity},
		"reshare":  {"<room> <user> [puppet]", "build and deliver a fresh bundle of the room's history to an invited or joined user", (*Bot).reshare},
		"retry":    {"<room> [puppet]", "retry the room's failed received bundles now", (*Bot).retry},
		"resend": {"all|<event ID>", "gateway mode: deliver again the events the bridge refused every time (set aside), all of them or the one named",
			(*Bot).resend},
	}
}

// parse splits a command into its name (case-insensitive) and its arguments.
func parse(body string) (string, []string) {
	fields := strings.Fields(body)
	if len(fields) == 0 {
		return "", nil
	}
	return strings.ToLower(fields[0]), fields[1:]
}

// run answers one command.
func (b *Bot) run(ctx context.Context, admin id.UserID, body string) string {
	name, args := parse(body)
	cmd, ok := commands[name]
	if !ok {
		return fmt.Sprintf("I do not know the command %q. Send help for the list.", name)
	}
	return cmd.run(b, ctx, admin, args)
}

func (b *Bot) help(_ context.Context, _ id.UserID, _ []string) string {
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	var sb strings.Builder
	sb.WriteString("Commands:\n")
	for _, name := range names {
		c := commands[name]
		fmt.Fprintf(&sb, "- %s", name)
		if c.args != "" {
			fmt.Fprintf(&sb, " %s", c.args)
		}
		fmt.Fprintf(&sb, ": %s\n", c.help)
	}
	return strings.TrimRight(sb.String(), "\n")
}

func (b *Bot) status(ctx context.Context, _ id.UserID, _ []string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "heirloom %s\n", b.version)
	cli := b.mgr.Client(ctx, b.userID)
	cli.DefaultHTTPRetries = 0 // an answer now, not after mautrix's retries against a homeserver that is down
	_, err := cli.Versions(ctx)
	fmt.Fprintf(&sb, "homeserver reachable: %s\n", yesNo(err == nil))
	if puppets, err := b.db.CountPuppets(ctx, b.userID); err != nil {
		fmt.Fprintf(&sb, "puppets: unknown (%v)\n", err)
	} else {
		fmt.Fprintf(&sb, "puppets: %d\n", puppets)
	}
	fmt.Fprintf(&sb, "loaded machines: %d\n", b.mgr.LoadedCount())
	if c, err := b.db.CountBundles(ctx); err != nil {
		fmt.Fprintf(&sb, "bundles: unknown (%v)\n", err)
	} else {
		fmt.Fprintf(&sb, "bundles sent: %d being delivered, %d failed\n", c.Sending, c.SendFailed)
		fmt.Fprintf(&sb, "bundles received: %d pending, %d retrying, %d failed\n", c.Pending, c.Retrying, c.Failed)
	}
	if b.cfg.Bridge != nil {
		b.gatewayStatus(ctx, &sb)
	}
	problems := b.mgr.DeviceProblems()
	if len(problems) == 0 {
		sb.WriteString("devices not restored: none")
	} else {
		fmt.Fprintf(&sb, "devices not restored: %d", len(problems))
		for _, p := range problems {
			fmt.Fprintf(&sb, "\n- %s %s: %s", p.UserID, p.DeviceID, p.Error)
		}
	}
	return sb.String()
}

// userArg reads a user ID argument; a bare localpart is taken on the homeserver's domain.
func (b *Bot) userArg(arg string) (id.UserID, error) {
	userID := id.UserID(arg)
	if !strings.HasPrefix(arg, "@") {
		userID = id.NewUserID(arg, b.cfg.Homeserver.Domain)
	}
	if _, _, err := userID.Parse(); err != nil {
		return "", fmt.Errorf("%q is not a user ID", arg)
	}
	return userID, nil
}

func roomArg(arg string) (id.RoomID, error) {
	if len(arg) < 2 || arg[0] != '!' {
		return "", fmt.Errorf("%q is not a room ID (they start with !)", arg)
	}
	return id.RoomID(arg), nil
}

// roomCommand checks that a command has lo to hi arguments, the first a room ID, and returns the
// room; a reply that is not empty answers the command instead (its usage, or why the room is not one).
func roomCommand(name string, args []string, lo, hi int) (id.RoomID, string) {
	if len(args) < lo || len(args) > hi {
		return "", usage(name)
	}
	roomID, err := roomArg(args[0])
	if err != nil {
		return "", err.Error()
	}
	return roomID, ""
}

func usage(name string) string {
	return fmt.Sprintf("Usage: %s %s", name, commands[name].args)
}

func (b *Bot) puppet(ctx context.Context, _ id.UserID, args []string) string {
	if len(args) != 1 {
		return usage("puppet")
	}
	userID, err := b.userArg(args[0])
	if err != nil {
		return err.Error()
	}
	row, err := b.db.GetPuppet(ctx, userID)
	if err != nil {
		return "Failed to read the puppet: " + err.Error()
	} else if row == nil || !row.Ready || !b.cfg.IsManaged(userID) {
		return fmt.Sprintf("%s is not a provisioned puppet.", userID)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s\ndevice: %s", userID, row.DeviceID)
	if problem, ok := b.mgr.DeviceProblem(userID); ok {
		fmt.Fprintf(&sb, " (gone from the homeserver and not restored: %s)", problem.Error)
	}
	fmt.Fprintf(&sb, "\nmaster key: %s\n", row.MasterKey)
	rooms, err := b.mgr.Client(ctx, userID).JoinedRooms(ctx)
	if err != nil {
		fmt.Fprintf(&sb, "rooms: unknown (%v)\n", err)
	} else {
		fmt.Fprintf(&sb, "rooms (%d):", len(rooms.JoinedRooms))
		for i, roomID := range rooms.JoinedRooms {
			if i == 50 {
				fmt.Fprintf(&sb, "\n- … and %d more", len(rooms.JoinedRooms)-50)
				break
			}
			fmt.Fprintf(&sb, "\n- %s", roomID)
		}
		sb.WriteString("\n")
	}
	fmt.Fprintf(&sb, "last activity: %s", ago(row.LastActiveAt))
	return sb.String()
}

// maxListed bounds the bundles an answer lists per direction.
const maxListed = 20

func (b *Bot) bundles(ctx context.Context, _ id.UserID, args []string) string {
	roomID, reply := roomCommand("bundles", args, 1, 1)
	if reply != "" {
		return reply
	}
	res, err := b.history.RoomBundles(ctx, roomID)
	if err != nil {
		return "Failed to list the bundles: " + err.Error()
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "Bundles in %s\nsent (%d):", roomID, len(res.Sent))
	for i, s := range res.Sent {
		if i == maxListed {
			fmt.Fprintf(&sb, "\n- … and %d older", len(res.Sent)-maxListed)
			break
		}
		fmt.Fprintf(&sb, "\n- %s %s by %s to %s, %s: %s, %d sessions, %d withheld", s.Kind, s.BundleID, s.Puppet, s.Invitee,
			ago(s.CreatedAt), s.State, s.Sessions, s.Withheld)
		if s.Reason != "" {
			fmt.Fprintf(&sb, " (%s)", s.Reason)
		}
		for _, d := range s.Devices {
			outcome := deliveryOutcome(d)
			if d.AddedLater {
				outcome += " (added later)"
			}
			fmt.Fprintf(&sb, "\n  - device %s: %s", d.DeviceID, outcome)
		}
	}
	fmt.Fprintf(&sb, "\nreceived (%d):", len(res.Received))
	for i, r := range res.Received {
		if i == maxListed {
			fmt.Fprintf(&sb, "\n- … and %d older", len(res.Received)-maxListed)
			break
		}
		fmt.Fprintf(&sb, "\n- by %s from %s (device %s), %s: %s", r.Puppet, r.Sender, r.SenderDevice, ago(r.ReceivedAt), describeReceived(r))
	}
	return sb.String()
}

func describeReceived(r *history.ReceivedReport) string {
	out := fmt.Sprintf("%s, %d keys imported, %d withheld", r.State, r.Imported, r.Withheld)
	if r.Skipped > 0 {
		out += fmt.Sprintf(", %d skipped", r.Skipped)
	}
	if r.Error != "" {
		out += " (" + r.Error + ")"
	}
	return out
}

func (b *Bot) identity(ctx context.Context, _ id.UserID, args []string) string {
	if len(args) != 1 && (len(args) != 3 || strings.ToLower(args[1]) != "confirm") {
		return usage("identity")
	}
	userID, err := b.userArg(args[0])
	if err != nil {
		return err.Error()
	}
	if bot, err := b.mgr.Get(ctx, b.userID); err == nil {
		// The identity as the homeserver has it now: a change heirloom had not heard of shows.
		_, _ = bot.FetchDevices(ctx, []id.UserID{userID})
	}
	var status *e2ee.IdentityStatus
	if len(args) == 3 {
		status, err = b.mgr.ConfirmIdentity(ctx, userID, id.Ed25519(args[2]))
	} else {
		status, err = b.mgr.Identity(ctx, userID)
	}
	switch {
	case errors.Is(err, e2ee.ErrUnknownIdentity):
		return fmt.Sprintf("heirloom has seen no cross-signing identity of %s.", userID)
	case errors.Is(err, e2ee.ErrIdentityMismatch):
		return fmt.Sprintf("Not confirmed: %v.", err)
	case err != nil:
		return "Failed: " + err.Error()
	}
	var sb strings.Builder
	if len(args) == 3 {
		fmt.Fprintf(&sb, "Confirmed: history sharing with %s resumes.\n", userID)
	}
	fmt.Fprintf(&sb, "%s\nmaster key: %s\nfirst seen: %s\n", userID, status.Current, status.FirstSeen)
	if status.Changed {
		fmt.Fprintf(&sb, "changed: yes. heirloom shares no history with them and accepts none from them until you check the new key with them and send: identity %s confirm %s", userID, status.Current)
	} else {
		sb.WriteString("changed: no")
	}
	return sb.String()
}

// sharingPuppet picks the puppet that shares a room's history with user: the one named, else the
// one that last built a bundle for them there, else the only puppet joined to the room.
func (b *Bot) sharingPuppet(ctx context.Context, roomID id.RoomID, userID id.UserID, named string) (*e2ee.Puppet, error) {
	var puppet id.UserID
	if named != "" {
		var err error
		if puppet, err = b.userArg(named); err != nil {
			return nil, err
		}
	} else if last, err := b.db.LatestSentTo(ctx, roomID, userID); err != nil {
		return nil, err
	} else if last != nil {
		puppet = last.Puppet
	} else {
		joined, err := b.joinedPuppets(ctx, roomID)
		if err != nil {
			return nil, err
		}
		switch len(joined) {
		case 0:
			return nil, fmt.Errorf("no puppet is joined to %s", roomID)
		case 1:
			puppet = joined[0]
		default:
			return nil, fmt.Errorf("several puppets are joined to %s: name one (%s)", roomID, joinIDs(joined))
		}
	}
	if !b.cfg.IsManaged(puppet) {
		return nil, fmt.Errorf("%s is not a puppet", puppet)
	}
	p, err := b.mgr.Get(ctx, puppet)
	if errors.Is(err, e2ee.ErrNotProvisioned) {
		return nil, fmt.Errorf("%s is not a provisioned puppet", puppet)
	}
	return p, err
}

func (b *Bot) joinedPuppets(ctx context.Context, roomID id.RoomID) ([]id.UserID, error) {
	members, err := b.db.StateStore.GetRoomMembers(ctx, roomID, event.MembershipJoin)
	if err != nil {
		return nil, err
	}
	var out []id.UserID
	for userID := range members {
		if b.cfg.IsManaged(userID) {
			out = append(out, userID)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

func (b *Bot) reshare(ctx context.Context, _ id.UserID, args []string) string {
	roomID, reply := roomCommand("reshare", args, 2, 3)
	if reply != "" {
		return reply
	}
	userID, err := b.userArg(args[1])
	if err != nil {
		return err.Error()
	}
	named := ""
	if len(args) == 3 {
		named = args[2]
	}
	p, err := b.sharingPuppet(ctx, roomID, userID, named)
	if err != nil {
		return "Cannot reshare: " + err.Error()
	}
	res, err := b.history.Reshare(ctx, p, roomID, userID)
	switch {
	case errors.Is(err, history.ErrNotMember):
		return fmt.Sprintf("Cannot reshare: %s is neither invited to nor joined in %s.", userID, roomID)
	case errors.Is(err, keybundle.ErrBundleTooLarge), err != nil:
		return "Cannot reshare: " + err.Error()
	}
	r := res.Bundle
	var sb strings.Builder
	fmt.Fprintf(&sb, "Reshared %s's history of %s with %s: bundle %s %s, %d sessions, %d withheld", p.UserID, roomID, userID,
		r.BundleID, r.State, r.Sessions, r.Withheld)
	if r.Reason != "" {
		fmt.Fprintf(&sb, " (%s)", r.Reason)
	}
	for _, d := range r.Devices {
		fmt.Fprintf(&sb, "\n- device %s: %s", d.DeviceID, deliveryOutcome(d))
	}
	return sb.String()
}

// deliveryOutcome says whether a bundle reached a device, and why not.
func deliveryOutcome(d history.DeliveryReport) string {
	if d.Delivered {
		return "delivered"
	}
	return "not delivered: " + d.Reason
}

func (b *Bot) retry(ctx context.Context, _ id.UserID, args []string) string {
	roomID, reply := roomCommand("retry", args, 1, 2)
	if reply != "" {
		return reply
	}
	var puppets []id.UserID
	if len(args) == 2 {
		puppet, err := b.userArg(args[1])
		if err != nil {
			return err.Error()
		}
		puppets = []id.UserID{puppet}
	} else {
		retryable, err := b.db.ListRetryable(ctx, roomID)
		if err != nil {
			return "Failed to list the room's bundles: " + err.Error()
		}
		seen := map[id.UserID]bool{}
		for _, r := range retryable {
			if !seen[r.Puppet] {
				seen[r.Puppet] = true
				puppets = append(puppets, r.Puppet)
			}
		}
	}
	var lines []string
	for _, puppet := range puppets {
		p, err := b.mgr.Get(ctx, puppet)
		if err != nil {
			lines = append(lines, fmt.Sprintf("- %s: %v", puppet, err))
			continue
		}
		res, err := b.history.RetryReceived(ctx, p, roomID)
		if err != nil {
			lines = append(lines, fmt.Sprintf("- %s: %v", puppet, err))
			continue
		}
		for _, r := range res.Bundles {
			lines = append(lines, fmt.Sprintf("- by %s from %s: %s", r.Puppet, r.Sender, describeReceived(r)))
		}
	}
	if len(lines) == 0 {
		return fmt.Sprintf("No received bundle in %s failed or waits for a retry.", roomID)
	}
	return fmt.Sprintf("Retried the received bundles in %s:\n%s", roomID, strings.Join(lines, "\n"))
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

func joinIDs(ids []id.UserID) string {
	out := make([]string, len(ids))
	for i, userID := range ids {
		out[i] = userID.String()
	}
	return strings.Join(out, ", ")
}

// ago writes a Unix-millisecond time for people: the UTC time and how long ago it was.
func ago(ms int64) string {
	if ms == 0 {
		return "never recorded"
	}
	t := time.UnixMilli(ms).UTC()
	return fmt.Sprintf("%s (%s ago)", t.Format("2006-01-02 15:04:05 UTC"), time.Since(t).Round(time.Second))
}

// deadLettersShown is how many events set aside the status lists.
const deadLettersShown = 10

// gatewayStatus writes the state of the bridge's outbox: its depth, whether it is full, and the
// events set aside.
func (b *Bot) gatewayStatus(ctx context.Context, sb *strings.Builder) {
	depth, size, err := b.db.GatewayOutboxSize(ctx)
	if err != nil {
		fmt.Fprintf(sb, "gateway outbox: unknown (%v)\n", err)
		return
	}
	fmt.Fprintf(sb, "gateway outbox (%s): %d events not yet acknowledged by the bridge\n", b.cfg.Bridge.Registration.ID, depth)
	if limit := b.cfg.Gateway.OutboxCap(); size >= limit {
		fmt.Fprintf(sb, "gateway outbox full (%d bytes, gateway.max_outbox_size %d): the homeserver's transactions are refused "+
			"until the bridge catches up\n", size, limit)
	}
	dead, n, err := b.db.GatewayDeadLetters(ctx, deadLettersShown)
	if err != nil {
		fmt.Fprintf(sb, "gateway events set aside: unknown (%v)\n", err)
		return
	}
	if n == 0 {
		sb.WriteString("gateway events set aside: none\n")
		return
	}
	fmt.Fprintf(sb, "gateway events set aside (the bridge refused them every time): %d; resend all (or resend <event ID>) delivers them again\n", n)
	for _, e := range dead {
		name := e.Key
		if e.EventID != "" {
			name = string(e.EventID)
		}
		fmt.Fprintf(sb, "- %s in %s: refused %d time(s), last %q, set aside %s\n", name, e.RoomID, e.Refusals, e.LastError,
			time.UnixMilli(e.DeadAt).UTC().Format(time.RFC3339))
	}
}

// Gateway is what the bot asks of gateway mode.
type Gateway interface {
	// Resend delivers again the events set aside (the one with the ID given, or all) and returns
	// how many there were.
	Resend(ctx context.Context, eventID id.EventID) (int, error)
}

// UseGateway gives the bot gateway mode's operations, before Run.
func (b *Bot) UseGateway(g Gateway) { b.gateway = g }

func (b *Bot) resend(ctx context.Context, _ id.UserID, args []string) string {
	if len(args) != 1 {
		return usage("resend")
	}
	if b.gateway == nil {
		return "Gateway mode is off: there is no bridge to deliver to."
	}
	var eventID id.EventID
	if args[0] != "all" {
		if !strings.HasPrefix(args[0], "$") {
			return fmt.Sprintf("%q is not an event ID (they start with $)", args[0])
		}
		eventID = id.EventID(args[0])
	}
	n, err := b.gateway.Resend(ctx, eventID)
	switch {
	case err != nil:
		return "Failed to deliver the events set aside again: " + err.Error()
	case n == 0 && eventID != "":
		return fmt.Sprintf("No event set aside has the ID %s.", eventID)
	case n == 0:
		return "No event is set aside."
	}
	return fmt.Sprintf("Delivering %d event(s) to the bridge again, each in its place. If the bridge refuses one every time again, it is set aside again.", n)
}
