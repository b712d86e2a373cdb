package e2ee

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/heirloom-matrix/heirloom/database"
	"github.com/stretchr/testify/require"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/olm"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// While a puppet is only invited, keys of senders whose membership cannot be asked are held in
// memory. Sixteen accounts (free on the attacker's own homeserver; a to-device message needs no
// shared room, and MSC4147 sender_device_keys names a device nobody published) filling the room's
// slots with junk first must not get the key of a real member who is not the inviter, for a
// message sent while the puppet is invited, dropped for good: nobody re-sends it after the join.
func TestJunkHeldKeysCannotCrowdOutAMembersKey(t *testing.T) {
	hs := newMemberServer(t)
	mgr := testManagerAt(t, hs.URL)
	p := testPuppet(t, mgr, "invited")
	ctx := context.Background()
	db := mgr.db
	inviter, alice := newOlmSender("@inviter:localhost"), newOlmSender("@alice:localhost")
	require.NoError(t, db.StateStore.SetMembership(ctx, roomA, p.UserID, event.MembershipInvite))
	require.NoError(t, db.PutInvite(ctx, &database.Invite{Puppet: p.UserID, RoomID: roomA, Inviter: inviter.user,
		InviteEventID: "$invite", InvitedAt: time.Now().UnixMilli()}))
	hs.mu.Lock()
	hs.forbidden = true // Synapse answers an invited puppet's membership questions with 403
	hs.mu.Unlock()

	for i := range heldKeysPerRoom / heldKeysPerSender {
		sybil := newOlmSender(id.UserID(fmt.Sprintf("@sybil%d:evil.example", i)))
		for range heldKeysPerSender {
			junk, err := olm.NewOutboundGroupSession()
			require.NoError(t, err)
			sybil.sendRoomKey(ctx, p, roomA, junk.ID(), junk.Key(), true)
		}
	}
	real, err := olm.NewOutboundGroupSession()
	require.NoError(t, err)
	alice.sendRoomKey(ctx, p, roomA, real.ID(), real.Key(), true)

	hs.mu.Lock()
	hs.forbidden = false
	hs.mu.Unlock()
	hs.set(roomA, alice.user, event.MembershipJoin)
	require.NoError(t, db.StateStore.SetMembership(ctx, roomA, p.UserID, event.MembershipJoin))
	p.ReleaseHeldKeys(ctx, roomA)
	require.NotNil(t, heldRow(t, p, roomA, real.ID()), "alice is a member: her key, sent while the puppet was invited, must survive a junk flood")
}

// The held-key buffer is bounded in bytes, not only in number: it must not keep each key's whole
// Olm envelope (the encrypted to-device event as it arrived, raw and parsed, and the decrypted
// content), whose size the sender chooses up to Synapse's 64 KiB to-device content limit
// (MAX_TO_DEVICE_CONTENT_SIZE). Sixteen sender accounts and sixteen invites of puppets would
// otherwise pin hundreds of MiB for 24 hours, repeatably.
func TestHeldKeysAreBoundedInBytes(t *testing.T) {
	const contentSize = 60 << 10 // under Synapse's 64 KiB to-device content limit
	padding := strings.Repeat("A", contentSize*3/4-200)
	var h heldKeys
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	// One puppet and room's worth (256 keys) is measured, and the total bound projected from it.
	const measured = heldKeysPerRoom
	for i := range measured {
		puppet := id.UserID(fmt.Sprintf("@heirloom_p%d:localhost", i/heldKeysPerRoom))
		sender := id.UserID(fmt.Sprintf("@sybil%d:evil.example", i%heldKeysPerSender))
		// What mautrix hands over: the to-device event as parsed from the transaction, and the
		// decrypted payload's content (here with the padding in an unknown field).
		ciphertext := strings.Repeat("B", contentSize-300) + fmt.Sprint(i)
		var source event.Event
		require.NoError(t, json.Unmarshal([]byte(`{"type":"m.room.encrypted","sender":"`+string(sender)+`","content":{"algorithm":"m.olm.v1.curve25519-aes-sha2","sender_key":"k","ciphertext":{"me":{"type":0,"body":"`+ciphertext+`"}}}}`), &source))
		source.Type.Class = event.ToDeviceEventType
		require.NoError(t, source.Content.ParseRaw(source.Type))
		var content event.Content
		require.NoError(t, json.Unmarshal([]byte(`{"algorithm":"m.megolm.v1.aes-sha2","room_id":"!r:localhost","session_id":"s","session_key":"k","pad":"`+padding+fmt.Sprint(i)+`"}`), &content))
		require.NoError(t, content.ParseRaw(event.ToDeviceRoomKey))
		evt := &crypto.DecryptedOlmEvent{Source: &source, Sender: sender, Content: content}
		require.True(t, h.hold(puppet, evt, content.Parsed.(*RoomKeyContent)))
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	perKey := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / measured
	projected := perKey * heldKeysTotal
	t.Logf("%d held keys: %d KiB each; at the bound of %d keys, %d MiB", h.total, perKey>>10, heldKeysTotal, projected>>20)
	runtime.KeepAlive(&h)
	require.Less(t, projected, int64(64<<20), "the keys held until a join must be bounded in bytes, not only in number")
}

// A flood of held keys from accounts of one homeserver, in one puppet's room and across every room,
// takes the place of its own keys, never of the key of a sender of another homeserver that holds
// fewer; and no key is held whose texts are longer than any valid one.
func TestHeldKeysFloodPushesOutOnlyTheFloodersKeys(t *testing.T) {
	var h heldKeys
	const puppet id.UserID = "@heirloom_p:localhost"
	content := func(room id.RoomID) *RoomKeyContent {
		return &RoomKeyContent{RoomKeyEventContent: event.RoomKeyEventContent{RoomID: room, SessionKey: strings.Repeat("k", 306)}}
	}
	alice := newOlmSender("@alice:localhost").decrypted()
	sybil := func(i int) *crypto.DecryptedOlmEvent {
		return newOlmSender(id.UserID(fmt.Sprintf("@sybil%d:evil.example", i))).decrypted()
	}
	for i := range heldKeysPerRoom {
		require.True(t, h.hold(puppet, sybil(i/heldKeysPerSender), content(roomA)))
	}
	require.True(t, h.hold(puppet, alice, content(roomA)), "alice's key takes the place of a flooder's")
	for i := range heldKeysTotal {
		h.hold(puppet, sybil(1000+i), content(roomA))
		h.hold(id.UserID(fmt.Sprintf("@heirloom_p%d:localhost", i%32)), sybil(5000+i), content(roomA))
	}
	require.Equal(t, heldKeysTotal, h.total, "the flood filled the bound of all keys")
	require.LessOrEqual(t, h.bytes, heldBytesTotal)
	require.True(t, h.hold("@heirloom_new:localhost", alice, content(roomA)),
		"with every bound full of one homeserver's keys, another's key still gets in")
	kept := h.take(puppet, roomA)
	require.LessOrEqual(t, len(kept), heldKeysPerRoom)
	found := false
	for _, k := range kept {
		found = found || k.sender == alice.Sender
	}
	require.True(t, found, "no flood from another homeserver pushes out alice's key")

	long := content(roomA)
	long.SessionKey = strings.Repeat("k", 60<<10)
	require.False(t, h.hold(puppet, alice, long), "a session key longer than any valid one is not held")
}

// The keys held for a puppet's room are bounded in bytes before they are in number when their
// texts are long.
func TestHeldKeysOfARoomAreBoundedInBytes(t *testing.T) {
	var h heldKeys
	const puppet id.UserID = "@heirloom_p:localhost"
	content := &RoomKeyContent{RoomKeyEventContent: event.RoomKeyEventContent{RoomID: roomA, SessionKey: strings.Repeat("k", 306)}}
	for i := range heldKeysPerRoom {
		sender := newOlmSender(id.UserID(fmt.Sprintf("@s%d:server%d.example", i, i))).decrypted()
		sender.SenderDevice.DeviceID = id.DeviceID(strings.Repeat("D", heldKeyMaxText))
		sender.Keys.Ed25519 = id.Ed25519(strings.Repeat("E", heldKeyMaxText))
		sender.SenderDevice.SigningKey = sender.Keys.Ed25519
		h.hold(puppet, sender, content)
	}
	bytes := 0
	for _, k := range h.rooms[puppetRoom{puppet, roomA}] {
		bytes += k.size
	}
	require.LessOrEqual(t, bytes, heldBytesPerRoom)
	require.Less(t, h.total, heldKeysPerRoom, "the bytes bound came first")
}

// A server name is the sender's to choose by the hundred on one host: evil.example:1,
// evil.example:2, ... (each port a server name), or wildcard subdomains. Membership cannot be asked
// while the puppet is invited, so the senders need not even be in the room. One key from each of
// 256 such servers must not fill the room's slots against alice's key: they count as one host.
func TestHeldKeysCountServerNamesOfOneHostAsOne(t *testing.T) {
	const puppet id.UserID = "@heirloom_p:localhost"
	content := &RoomKeyContent{RoomKeyEventContent: event.RoomKeyEventContent{RoomID: roomA, SessionKey: strings.Repeat("k", 306)}}
	for _, name := range []string{"evil.example:%d", "h%d.evil.example", "[2001:db8::%x]:8448"} {
		t.Run(name, func(t *testing.T) {
			var h heldKeys
			for i := range heldKeysPerRoom {
				sybil := newOlmSender(id.UserID("@s:" + fmt.Sprintf(name, 1+i))).decrypted()
				require.True(t, h.hold(puppet, sybil, content))
			}
			alice := newOlmSender("@alice:localhost").decrypted()
			require.True(t, h.hold(puppet, alice, content),
				"a member's key must not be refused because 256 server names of one host each hold one key")
			// Fresh server names of the host, by the hundred: each would hold nothing, were they
			// counted apart, and push out the oldest key of those who hold one, alice's in turn.
			for i := range 2 * heldKeysPerRoom {
				sybil := newOlmSender(id.UserID("@t:" + fmt.Sprintf(name, 10000+i))).decrypted()
				h.hold(puppet, sybil, content)
			}
			require.Contains(t, senders(h.take(puppet, roomA)), alice.Sender, "no more keys of that host push alice's out")
		})
	}
}

// However many distinct homeservers fill a room's slots with one key each, a sender who holds
// nothing (a member's first key) gets in: it takes the place of the oldest key of one who holds
// more, never of one who holds as many.
func TestHeldKeysTakeAFirstKeyWhenEveryHolderHoldsOne(t *testing.T) {
	var h heldKeys
	const puppet id.UserID = "@heirloom_p:localhost"
	content := &RoomKeyContent{RoomKeyEventContent: event.RoomKeyEventContent{RoomID: roomA, SessionKey: strings.Repeat("k", 306)}}
	for i := range heldKeysPerRoom {
		require.True(t, h.hold(puppet, newOlmSender(id.UserID(fmt.Sprintf("@s:evil%d.example", i))).decrypted(), content))
	}
	alice := newOlmSender("@alice:localhost").decrypted()
	require.True(t, h.hold(puppet, alice, content), "a member's first key gets in")
	require.False(t, h.hold(puppet, alice, content), "a second takes the place of nobody who holds as many (one)")
	kept := senders(h.take(puppet, roomA))
	require.Len(t, kept, heldKeysPerRoom)
	require.Contains(t, kept, alice.Sender)
	require.NotContains(t, kept, id.UserID("@s:evil0.example"), "the oldest key of those who hold as many made room")
}

// senders lists the senders of held keys.
func senders(keys []heldKey) []id.UserID {
	out := make([]id.UserID, len(keys))
	for i := range keys {
		out[i] = keys[i].sender
	}
	return out
}
