package e2ee

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// A room that has had an m.room.encryption is encrypted from then on, whatever later
// m.room.encryption events say (matrix-rust-sdk refuses such a downgrade as well, and keeps the
// settings it saw first): heirloom records every m.room.encryption it sees, in a transaction, a
// state fetch or the answer to a createRoom that asked for it, in its own table
// (database.RoomEncryption). A send is megolm-encrypted with the first settings heirloom could use;
// it is refused if there are none (an algorithm heirloom does not know, a content it cannot read);
// and it goes out in the clear only when the homeserver has just said the room has no
// m.room.encryption, never because heirloom merely has no record of one: the homeserver may hold
// heirloom's transactions back for minutes, and a room's state may be ahead of them.

// ErrUnusableEncryption means the room is encrypted with nothing heirloom can encrypt with: an
// algorithm it does not know, or settings it cannot read. Sends into it are refused.
var ErrUnusableEncryption = errors.New("the room is encrypted with settings heirloom cannot use")

// plaintextConfirmation is how long the homeserver's answer that a room has no m.room.encryption
// lets plaintext sends go without asking again: a burst of sends asks once, and a room encrypted
// meanwhile is at most this long behind.
const plaintextConfirmation = 2 * time.Second

// plainRooms remembers when the homeserver last said a room has no m.room.encryption, to whom: a
// user who left the room is answered with its state as it was when they left, so an answer counts
// only for the user it was given to, only if that user was joined when it was asked (a departed
// user's answer never counts), and no longer once the user's membership changes (ForgetPlaintext).
type plainRooms struct {
	mu   sync.Mutex
	seen map[plainKey]time.Time
}

type plainKey struct {
	room id.RoomID
	user id.UserID
}

func (pr *plainRooms) confirmed(roomID id.RoomID, userID id.UserID, now time.Time) bool {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	at, ok := pr.seen[plainKey{roomID, userID}]
	return ok && !now.Before(at) && now.Sub(at) < plaintextConfirmation
}

func (pr *plainRooms) confirm(roomID id.RoomID, userID id.UserID, now time.Time) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.seen == nil || len(pr.seen) > 4096 {
		pr.seen = make(map[plainKey]time.Time)
	}
	pr.seen[plainKey{roomID, userID}] = now
}

// forget drops the answers about the room ("": every room) given to the user ("": anyone).
func (pr *plainRooms) forget(roomID id.RoomID, userID id.UserID) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	for k := range pr.seen {
		if (roomID == "" || k.room == roomID) && (userID == "" || k.user == userID) {
			delete(pr.seen, k)
		}
	}
}

// ForgetPlaintext drops the homeserver's answers that the room ("": any room) has no
// m.room.encryption given to the user: their membership changed (a join, a leave, a membership
// event, a send refused because they are not in the room), and an answer they got while departed,
// with the room's state at their leave, must not outlive their return.
func (m *Manager) ForgetPlaintext(roomID id.RoomID, userID id.UserID) {
	m.plain.forget(roomID, userID)
}

// usableEncryption reads an m.room.encryption content the way heirloom encrypts with it, keys
// matched exactly as the homeserver and matrix-rust-sdk read them: the megolm algorithm, and
// rotation settings that are non-negative integers if present. It returns the settings as JSON,
// or "" if heirloom cannot use them.
func usableEncryption(raw json.RawMessage) string {
	var fields map[string]json.RawMessage
	if json.Unmarshal(raw, &fields) != nil {
		return ""
	}
	var settings event.EncryptionEventContent
	if json.Unmarshal(fields["algorithm"], &settings.Algorithm) != nil || settings.Algorithm != id.AlgorithmMegolmV1 {
		return ""
	}
	var ok bool
	if settings.RotationPeriodMillis, ok = rotationSetting(fields, "rotation_period_ms"); !ok {
		return ""
	}
	period, ok := rotationSetting(fields, "rotation_period_msgs")
	if !ok {
		return ""
	}
	settings.RotationPeriodMessages = int(period)
	out, err := json.Marshal(&settings)
	if err != nil {
		return ""
	}
	return string(out)
}

// rotationSetting reads an optional non-negative integer setting; ok is false if it is present
// and anything else.
func rotationSetting(fields map[string]json.RawMessage, key string) (int64, bool) {
	raw, present := fields[key]
	if !present {
		return 0, true
	}
	if len(raw) == 0 || raw[0] < '0' || raw[0] > '9' {
		return 0, false // a string, a negative number, null: not what the homeserver's clients read
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var n json.Number
	if dec.Decode(&n) != nil {
		return 0, false
	}
	v, err := n.Int64()
	return v, err == nil && v >= 0
}

// RecordEncryption records an m.room.encryption content seen for the room, whatever it holds:
// the room is encrypted from now on.
func (m *Manager) RecordEncryption(ctx context.Context, roomID id.RoomID, content json.RawMessage) error {
	usable := usableEncryption(content)
	if err := m.db.RecordRoomEncryption(ctx, roomID, string(content), usable); err != nil {
		return err
	}
	m.plain.forget(roomID, "")
	if usable == "" {
		zerolog.Ctx(ctx).Warn().Stringer("room_id", roomID).Str("content", truncate(string(content), 200)).
			Msg("The room's m.room.encryption is one heirloom cannot encrypt with; sends into the room are refused")
	}
	return nil
}

// RoomEncrypted reports whether a send into the room must be megolm-encrypted. It is false only
// when the homeserver said within plaintextConfirmation that the room has no m.room.encryption
// (asked now if need be, with cli); ErrUnusableEncryption if the room is encrypted with nothing
// heirloom can use; ErrUnknownRoom if cli's user cannot see the room.
func (m *Manager) RoomEncrypted(ctx context.Context, cli *mautrix.Client, roomID id.RoomID) (bool, error) {
	rec, err := m.db.GetRoomEncryption(ctx, roomID)
	if err != nil {
		return false, err
	}
	if rec == nil {
		if m.plain.confirmed(roomID, cli.UserID, m.db.Now()) {
			return false, nil
		}
		encrypted, err := m.fetchEncryption(ctx, cli, roomID)
		if err != nil || !encrypted {
			return false, err
		}
		if rec, err = m.db.GetRoomEncryption(ctx, roomID); err != nil {
			return false, err
		} else if rec == nil {
			return false, fmt.Errorf("the room's encryption was not recorded")
		}
	}
	if rec.Settings == "" {
		return false, fmt.Errorf("%w (m.room.encryption %s)", ErrUnusableEncryption, truncate(rec.Latest, 200))
	}
	return true, nil
}

// fetchEncryption asks the homeserver for the room's current m.room.encryption and records it:
// true if there is one, false (remembered for plaintextConfirmation) if the homeserver says there
// is none. The homeserver answers a user who left the room with its state at their leave, so a
// "none" counts only if the user is joined: their membership is asked first (an answer given after
// it reflects the room at that time or later), and a user who is not joined gets ErrUnknownRoom.
func (m *Manager) fetchEncryption(ctx context.Context, cli *mautrix.Client, roomID id.RoomID) (bool, error) {
	asked := m.db.Now()
	joined, err := m.joined(ctx, cli, roomID)
	if err != nil {
		return false, err
	}
	var content json.RawMessage
	_, err = cli.MakeFullRequest(ctx, mautrix.FullRequest{
		Method:       http.MethodGet,
		URL:          cli.BuildClientURL("v3", "rooms", roomID, "state", event.StateEncryption.Type, ""),
		ResponseJSON: &content,
	})
	switch {
	case err == nil:
		return true, m.RecordEncryption(ctx, roomID, content)
	case isNotFound(err) && !joined:
		return false, notJoined(cli.UserID)
	case isNotFound(err):
		m.plain.confirm(roomID, cli.UserID, asked)
		return false, nil
	case errors.Is(err, mautrix.MForbidden):
		return false, fmt.Errorf("%w: %w", ErrUnknownRoom, err)
	default:
		return false, fmt.Errorf("failed to fetch the room's encryption state: %w", err)
	}
}

// joined asks the homeserver whether the user is joined to the room now (its m.room.member).
func (m *Manager) joined(ctx context.Context, cli *mautrix.Client, roomID id.RoomID) (bool, error) {
	var member struct {
		Membership event.Membership `json:"membership"`
	}
	_, err := cli.MakeFullRequest(ctx, mautrix.FullRequest{
		Method:       http.MethodGet,
		URL:          cli.BuildClientURL("v3", "rooms", roomID, "state", event.StateMember.Type, cli.UserID),
		ResponseJSON: &member,
	})
	switch {
	case err == nil:
		return member.Membership == event.MembershipJoin, nil
	case isNotFound(err):
		return false, nil
	case errors.Is(err, mautrix.MForbidden):
		return false, fmt.Errorf("%w: %w", ErrUnknownRoom, err)
	default:
		return false, fmt.Errorf("failed to fetch the user's membership of the room: %w", err)
	}
}

// isNotFound reports whether the homeserver answered 404 M_NOT_FOUND.
func isNotFound(err error) bool {
	var he mautrix.HTTPError
	return errors.As(err, &he) && he.Response != nil && he.Response.StatusCode == http.StatusNotFound && errors.Is(err, mautrix.MNotFound)
}

// notJoined refuses a send of a user who is not in the room, as the homeserver would (403
// M_FORBIDDEN): their word that the room is unencrypted is the room's state at their leave.
func notJoined(userID id.UserID) error {
	return fmt.Errorf("%w: %w", ErrUnknownRoom, mautrix.MForbidden.WithMessage("%s is not in the room", userID).WithStatus(http.StatusForbidden))
}

// encryptionSettings returns the settings a new outbound session of the room is created with: the
// first usable m.room.encryption heirloom recorded, else the one mautrix's state store holds.
func (m *Manager) encryptionSettings(ctx context.Context, roomID id.RoomID) (*event.EncryptionEventContent, error) {
	rec, err := m.db.GetRoomEncryption(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if rec == nil || rec.Settings == "" {
		return m.db.StateStore.GetEncryptionEvent(ctx, roomID)
	}
	var settings event.EncryptionEventContent
	if err = json.Unmarshal([]byte(rec.Settings), &settings); err != nil {
		return nil, fmt.Errorf("failed to read the room's recorded encryption settings: %w", err)
	}
	return &settings, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
