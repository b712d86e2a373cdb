package e2ee

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

// memberServer is a homeserver that answers member state events from a table, and 404 for the rest.
type memberServer struct {
	*httptest.Server
	mu      sync.Mutex
	members map[string]event.Membership // "room|user" → membership
	// forbidden answers 403 to every question: the puppet may not read the room's state.
	forbidden bool
}

func newMemberServer(t *testing.T) *memberServer {
	t.Helper()
	ms := &memberServer{members: map[string]event.Membership{}}
	ms.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ms.mu.Lock()
		defer ms.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		path := r.URL.Path
		if i := strings.Index(path, "/rooms/"); i >= 0 && strings.Contains(path, "/state/m.room.member/") {
			if ms.forbidden {
				w.WriteHeader(http.StatusForbidden)
				_, _ = w.Write([]byte(`{"errcode":"M_FORBIDDEN","error":"User not in room"}`))
				return
			}
			rest := strings.TrimPrefix(path[i:], "/rooms/")
			room, user, _ := strings.Cut(rest, "/state/m.room.member/")
			if membership, ok := ms.members[room+"|"+user]; ok {
				_ = json.NewEncoder(w).Encode(map[string]any{"membership": membership})
				return
			}
		}
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"errcode":"M_NOT_FOUND","error":"not found"}`))
	}))
	t.Cleanup(ms.Close)
	return ms
}

func (ms *memberServer) set(roomID id.RoomID, userID id.UserID, membership event.Membership) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	ms.members[string(roomID)+"|"+string(userID)] = membership
}

// A room key counts only from someone who could have had it: a joined or invited member of the
// room it names. heirloom's state store decides when it knows the sender; otherwise the homeserver
// is asked, as for the puppet's own membership. A stranger or a past member gets nothing stored.
func TestRoomKeyOnlyFromAMemberOfItsRoom(t *testing.T) {
	hs := newMemberServer(t)
	mgr := testManagerAt(t, hs.URL)
	p := testPuppet(t, mgr, "victim")
	ctx := context.Background()
	db := mgr.db
	joined(t, db, roomA, p.UserID)
	for _, tc := range []struct {
		name string
		// known is what heirloom's state store holds of the sender ("" nothing); homeserver is what
		// the homeserver answers ("" 404).
		known, homeserver event.Membership
		stored            bool
	}{
		{"joined, as heirloom knows", event.MembershipJoin, "", true},
		{"invited, as heirloom knows", event.MembershipInvite, "", true},
		{"left, as heirloom knows and the homeserver says", event.MembershipLeave, event.MembershipLeave, false},
		{"left as heirloom knows, joined again says the homeserver", event.MembershipLeave, event.MembershipJoin, true},
		{"banned, as heirloom knows", event.MembershipBan, "", false},
		{"unknown to heirloom, joined says the homeserver", "", event.MembershipJoin, true},
		{"unknown to heirloom, invited says the homeserver", "", event.MembershipInvite, true},
		{"unknown to heirloom, left says the homeserver", "", event.MembershipLeave, false},
		{"a stranger (the homeserver knows nothing)", "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sender := newOlmSender(id.UserID("@" + strings.NewReplacer(" ", "_", ",", "", "(", "", ")", "").Replace(tc.name) + ":localhost"))
			if tc.known != "" {
				require.NoError(t, db.StateStore.SetMembership(ctx, roomA, sender.user, tc.known))
			}
			if tc.homeserver != "" {
				hs.set(roomA, sender.user, tc.homeserver)
			}
			out, err := olm.NewOutboundGroupSession()
			require.NoError(t, err)
			sender.sendRoomKey(ctx, p, roomA, out.ID(), out.Key(), true)
			require.Equal(t, tc.stored, heldRow(t, p, roomA, out.ID()) != nil)
		})
	}
}

// A puppet that is only invited cannot ask the homeserver who is a member (Synapse answers 403
// until it joins): a room key from its inviter is stored at once, one from anyone else is held
// until the join and stored then only if the homeserver says its sender is a member.
func TestRoomKeyWhileInvitedWaitsForTheJoin(t *testing.T) {
	hs := newMemberServer(t)
	mgr := testManagerAt(t, hs.URL)
	p := testPuppet(t, mgr, "invited")
	ctx := context.Background()
	db := mgr.db
	inviter, bob, stranger := newOlmSender("@inviter:localhost"), newOlmSender("@bob:localhost"), newOlmSender("@stranger:localhost")
	require.NoError(t, db.StateStore.SetMembership(ctx, roomA, p.UserID, event.MembershipInvite))
	require.NoError(t, db.PutInvite(ctx, &database.Invite{Puppet: p.UserID, RoomID: roomA, Inviter: inviter.user,
		InviteEventID: "$invite", InvitedAt: time.Now().UnixMilli()}))
	hs.mu.Lock()
	hs.forbidden = true
	hs.mu.Unlock()
	sessions := map[olmSender]olm.OutboundGroupSession{}
	for _, sender := range []olmSender{inviter, bob, stranger} {
		out, err := olm.NewOutboundGroupSession()
		require.NoError(t, err)
		sessions[sender] = out
		sender.sendRoomKey(ctx, p, roomA, out.ID(), out.Key(), true)
	}
	require.NotNil(t, heldRow(t, p, roomA, sessions[inviter].ID()), "the inviter is known to be a member")
	require.Nil(t, heldRow(t, p, roomA, sessions[bob].ID()), "nobody can tell yet whether bob is a member")
	require.Nil(t, heldRow(t, p, roomA, sessions[stranger].ID()))

	hs.mu.Lock()
	hs.forbidden = false
	hs.mu.Unlock()
	hs.set(roomA, bob.user, event.MembershipJoin)
	require.NoError(t, db.StateStore.SetMembership(ctx, roomA, p.UserID, event.MembershipJoin))
	p.ReleaseHeldKeys(ctx, roomA)
	require.NotNil(t, heldRow(t, p, roomA, sessions[bob].ID()), "bob is a member: his key is stored at the join")
	require.Nil(t, heldRow(t, p, roomA, sessions[stranger].ID()), "a stranger's key is dropped at the join")
}

// F3a: a room key's claimed Ed25519 key becomes the session's signing key, which every bundle the
// puppet builds for the room carries; rust-sdk refuses a whole bundle over one that is not a
// point. It is stored only if it is the sending device's key: a device heirloom knows, or the one
// the Olm payload carries in sender_device_keys (mautrix checks both and names the device).
func TestRoomKeyClaimedSigningKeyMustBeTheSendingDevices(t *testing.T) {
	mgr, db := testManager(t)
	p := testPuppet(t, mgr, "victim")
	ctx := context.Background()
	honest := newOlmSender("@honest:localhost")
	forger := newOlmSender("@forger:localhost")
	joined(t, db, roomA, p.UserID, honest.user, forger.user)
	junk := id.Ed25519("!!!! not an ed25519 key, 43 characters !!!!")
	notAPoint := id.Ed25519("AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA") // y = 2: no x on the curve
	identity := id.Ed25519("AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")  // y = 1: the identity, of small order
	for _, tc := range []struct {
		name   string
		sender olmSender
		stored bool
	}{
		{"the sending device's own key", honest, true},
		{"junk, from a device heirloom does not know", forger.withClaim(junk, false), false},
		{"32 bytes that are no point, from a device heirloom does not know", forger.withClaim(notAPoint, false), false},
		{"the identity point, from a device heirloom does not know", forger.withClaim(identity, false), false},
		{"a valid key, but no device heirloom knows has it", forger.withClaim(newOlmSender("@x:localhost").signing, false), false},
		{"a device heirloom knows, whose stored key is no point", forger.withClaim(notAPoint, true), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := olm.NewOutboundGroupSession()
			require.NoError(t, err)
			tc.sender.sendRoomKey(ctx, p, roomA, out.ID(), out.Key(), true)
			require.Equal(t, tc.stored, heldRow(t, p, roomA, out.ID()) != nil)
		})
	}
}

// The keys held until a join are bounded per sender: one sender cannot crowd out the others.
func TestHeldKeysAreBoundedPerSender(t *testing.T) {
	var h heldKeys
	const puppet id.UserID = "@heirloom_p:localhost"
	content := &RoomKeyContent{RoomKeyEventContent: event.RoomKeyEventContent{RoomID: roomA}}
	flood, other := newOlmSender("@flood:localhost").decrypted(), newOlmSender("@other:localhost").decrypted()
	for range heldKeysPerSender {
		require.True(t, h.hold(puppet, flood, content))
	}
	require.False(t, h.hold(puppet, flood, content), "the flooding sender's next key is not held")
	require.True(t, h.hold(puppet, other, content), "another sender's key still is")
	require.Len(t, h.take(puppet, roomA), heldKeysPerSender+1)
	require.Empty(t, h.take(puppet, roomA), "taken once")
}

// Keys held for rooms a puppet never joined are forgotten once they are too old and the bound is
// reached: they do not keep others out for good.
func TestStaleHeldKeysMakeRoom(t *testing.T) {
	var h heldKeys
	content := &RoomKeyContent{RoomKeyEventContent: event.RoomKeyEventContent{RoomID: roomA}}
	old := time.Now().Add(-heldKeyMaxAge - time.Minute)
	for i := range heldKeysTotal {
		sender := newOlmSender(id.UserID(fmt.Sprintf("@s%d:localhost", i))).decrypted()
		key := puppetRoom{id.UserID(fmt.Sprintf("@heirloom_p%d:localhost", i%300)), roomA}
		k, ok := newHeldKey(sender, content)
		require.True(t, ok)
		k.at = old
		h.add(key, k)
	}
	require.True(t, h.hold("@heirloom_new:localhost", newOlmSender("@fresh:localhost").decrypted(), content),
		"the stale keys made room")
	require.Equal(t, 1, h.total)
}
