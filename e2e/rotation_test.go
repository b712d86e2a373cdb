package e2e

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
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

// A departure that reaches heirloom in a transaction after the puppet already rotated for it (its
// send saw the member list first) must not rotate the new session again. The late transaction is
// made deterministic here by delivering the kick once more, in a transaction of the test's own.
func TestLateDepartureTransactionRotatesOnce(t *testing.T) {
	admin, gone := newJSUser(t, true), newJSUser(t, true)
	p := newPuppet(t)
	roomID := jsRoomWithPuppet(t, admin, p, "shared")
	e.peer(t, "invite", map[string]any{"user": admin.UserID, "room_id": roomID, "target": gone.UserID, "share_history": false}, nil)
	e.peer(t, "join", map[string]any{"user": gone.UserID, "room_id": roomID}, nil)
	e.peer(t, "waitForMembership", map[string]any{"user": admin.UserID, "room_id": roomID, "target": gone.UserID, "membership": "join"}, nil)
	puppetSend(t, p, roomID, "before the kick")

	before := rotateAfter(t, roomID)
	var kick struct {
		EventID string `json:"event_id"`
	}
	e.peer(t, "kick", map[string]any{"user": admin.UserID, "room_id": roomID, "target": gone.UserID}, &kick)
	eventually(t, 30*time.Second, "heirloom to process the kick", func() (bool, string) {
		return rotateAfter(t, roomID) > before, ""
	})
	puppetSend(t, p, roomID, "after the kick")
	s1 := jsSessionOf(t, admin, roomID, "after the kick", 2)

	var raw json.RawMessage
	path := fmt.Sprintf("%s/_matrix/client/v3/rooms/%s/event/%s?user_id=%s", e.hsURL, url.PathEscape(roomID),
		url.PathEscape(kick.EventID), url.QueryEscape(p.UserID))
	if code, err := e.request("GET", path, "Bearer "+e.asToken, nil, &raw); err != nil || code != 200 {
		t.Fatalf("fetching the kick event: %d %v", code, err)
	}
	txn := fmt.Sprintf("http://127.0.0.1:%d/_matrix/app/v1/transactions/%s", e.asPort, name("late"))
	if code, err := e.request("PUT", txn, "Bearer "+readHSToken(t), map[string]any{"events": []json.RawMessage{raw}}, nil); err != nil || code != 200 {
		t.Fatalf("delivering the kick late: %d %v", code, err)
	}
	puppetSend(t, p, roomID, "after the late transaction")
	if s2 := jsSessionOf(t, admin, roomID, "after the late transaction", 3); s2 != s1 {
		t.Fatalf("the late transaction of a departure already rotated for rotated the new session %s again (now %s)", s1, s2)
	}
}
