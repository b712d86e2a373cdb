package e2e

import (
	"database/sql"
	"errors"
	"testing"
	"time"
)

// rotateAfter is the room's rotation mark heirloom set from the transaction stream (0 if none).
func rotateAfter(t testing.TB, roomID string) int64 {
	t.Helper()
	var ms int64
	err := e.db(t).QueryRow(`SELECT rotate_after FROM room_rotation WHERE room_id=?`, roomID).Scan(&ms)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		t.Fatalf("reading room_rotation: %v", err)
	}
	return ms
}

// jsSessionOf returns the megolm session of the message with this body as the js user sees it.
func jsSessionOf(t *testing.T, u jsUser, roomID, body string, minCount int) string {
	t.Helper()
	msgs := decryptedBodies(jsMessages(t, u, roomID, minCount, 60000))
	m, ok := msgs[body]
	if !ok || m.SessionID == "" {
		t.Fatalf("%s cannot decrypt %q; decrypted: %v", u.UserID, body, keys(msgs))
	}
	return m.SessionID
}

// When a room admin (a js-sdk user) kicks a member, and again when they ban one, the puppet's next
// message uses a new megolm session (MSC4268's security section), as the remaining js user sees.
func TestPuppetRotatesOnKickAndBan(t *testing.T) {
	admin, kicked, banned := newJSUser(t, true), newJSUser(t, true), newJSUser(t, true)
	p := newPuppet(t)
	roomID := jsRoomWithPuppet(t, admin, p, "shared")
	for _, u := range []jsUser{kicked, banned} {
		e.peer(t, "invite", map[string]any{"user": admin.UserID, "room_id": roomID, "target": u.UserID, "share_history": false}, nil)
		e.peer(t, "join", map[string]any{"user": u.UserID, "room_id": roomID}, nil)
		e.peer(t, "waitForMembership", map[string]any{"user": admin.UserID, "room_id": roomID, "target": u.UserID, "membership": "join"}, nil)
	}
	puppetSend(t, p, roomID, "one")
	puppetSend(t, p, roomID, "two")
	s1, s2 := jsSessionOf(t, admin, roomID, "one", 2), jsSessionOf(t, admin, roomID, "two", 2)
	if s1 != s2 {
		t.Fatalf("the puppet rotated without a reason: %s then %s", s1, s2)
	}

	// The kick reaches heirloom in a transaction first (it marks the room for rotation); the ban
	// below is sent on at once, so the send's own look at the members must catch it.
	before := rotateAfter(t, roomID)
	e.peer(t, "kick", map[string]any{"user": admin.UserID, "room_id": roomID, "target": kicked.UserID}, nil)
	eventually(t, 30*time.Second, "heirloom to process the kick", func() (bool, string) {
		return rotateAfter(t, roomID) > before, ""
	})
	puppetSend(t, p, roomID, "after the kick")
	s3 := jsSessionOf(t, admin, roomID, "after the kick", 3)
	if s3 == s2 {
		t.Fatalf("a member was kicked but the puppet kept session %s", s3)
	}
	puppetSend(t, p, roomID, "still after the kick")
	if s := jsSessionOf(t, admin, roomID, "still after the kick", 4); s != s3 {
		t.Fatalf("the puppet rotated again without a reason: %s then %s", s3, s)
	}

	e.peer(t, "kick", map[string]any{"user": admin.UserID, "room_id": roomID, "target": banned.UserID, "ban": true}, nil)
	puppetSend(t, p, roomID, "after the ban")
	if s4 := jsSessionOf(t, admin, roomID, "after the ban", 5); s4 == s3 {
		t.Fatalf("a member was banned but the puppet kept session %s", s4)
	}
}
