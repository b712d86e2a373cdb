package keybundle

import (
	"maunium.net/go/mautrix/id"
)

// Held is one row a store holds for a room, as a bundle sees it: a session the store holds a key
// for, with its history flag, or a withheld entry.
type Held struct {
	RoomID    id.RoomID
	SessionID id.SessionID
	SenderKey id.SenderKey
	// SigningKey is a session's claimed Ed25519 key (sender_claimed_keys.ed25519 in a bundle).
	SigningKey id.Ed25519
	// HasKey is true for a session, false for a withheld entry.
	HasKey        bool
	SharedHistory bool
	// Code and Reason are a withheld entry's; FromBundle is true for one imported from an accepted
	// bundle, false for a withheld message that arrived over to-device.
	Code, Reason string
	FromBundle   bool
}

// Placement is where a held row goes in a bundle.
type Placement int

const (
	// Left: the row goes nowhere.
	Left Placement = iota
	// AsKey: into room_keys, the session exported at its first known index.
	AsKey
	// AsWithheld: into withheld, as m.history_not_shared.
	AsWithheld
)

// Reasons Place leaves a row out of a bundle.
const (
	LeftOtherRoom     = "a row of another room"
	LeftMalformedIDs  = "session_id or sender_key is not a 32-byte key in canonical base64 (rust-sdk refuses the whole bundle)"
	LeftBadSigningKey = "the claimed Ed25519 key is not a valid point in canonical base64 (rust-sdk refuses the whole bundle)"
	LeftToDevice      = "a withheld message that arrived over to-device is never passed on"
	LeftOtherCode     = "only m.history_not_shared withheld entries are passed on"
	LeftMalformedText = "the withheld entry's code or reason is not storable text"
)

// Place decides what one row a store holds puts into a bundle for roomID: the counterpart of
// matrix-rust-sdk's build_room_key_bundle loop, and the one home of that rule. The store's
// streaming queries (cryptostore.EachSharedSession, EachWithheldEntry) only narrow down what they
// read; every row they return goes through Place, and a table test holds them to it.
//
//   - A session whose creator shared history (shared_history true) goes into room_keys, exported at
//     its first known index.
//   - Any other session goes into withheld as m.history_not_shared: its key never leaves.
//   - A withheld entry goes into withheld only if it is an m.history_not_shared entry (either name)
//     imported from an accepted bundle: a withheld message over to-device is anyone's word, and
//     MSC4268 uses that code only inside bundles.
//   - Nothing rust-sdk would refuse is ever written, whatever the store holds (rows stored before
//     heirloom checked them included): rust-sdk parses a bundle with serde and fails the whole of
//     it over one entry whose keys do not parse.
func Place(roomID id.RoomID, h Held) (Placement, string) {
	return place(roomID, h, ValidSigningKeyString)
}

// place is Place with the check of a claimed signing key given: the builder's remembers the keys it
// found valid (a room has few sending devices for many sessions, and each check is a point
// decompression).
func place(roomID id.RoomID, h Held, validSigningKey func(id.Ed25519) bool) (Placement, string) {
	switch {
	case h.RoomID != roomID:
		return Left, LeftOtherRoom
	case !ValidKey(string(h.SessionID)) || !ValidKey(string(h.SenderKey)):
		return Left, LeftMalformedIDs
	case h.HasKey && h.SharedHistory && !validSigningKey(h.SigningKey):
		return Left, LeftBadSigningKey
	case h.HasKey && h.SharedHistory:
		return AsKey, ""
	case h.HasKey:
		return AsWithheld, ""
	case !h.FromBundle:
		return Left, LeftToDevice
	case !IsHistoryNotShared(h.Code):
		return Left, LeftOtherCode
	case !ValidText(h.Code, MaxText) || !ValidText(h.Reason, MaxText):
		return Left, LeftMalformedText
	}
	return AsWithheld, ""
}

// withheldEntry is the withheld entry a row placed AsWithheld becomes in a bundle built by device:
// the stable code, and for a session without shared history the reason rust-sdk gives.
func withheldEntry(h Held, device id.DeviceID) Withheld {
	w := Withheld{Algorithm: id.AlgorithmMegolmV1, Code: CodeHistoryNotShared, Reason: h.Reason, RoomID: h.RoomID,
		SenderKey: h.SenderKey, SessionID: h.SessionID}
	if h.HasKey {
		w.Reason, w.FromDevice = reasonHistoryNotShared, device
	}
	return w
}

// signingKeys remembers the claimed signing keys found valid, up to maxSigningKeys.
type signingKeys map[id.Ed25519]struct{}

const maxSigningKeys = 1024

// valid reports whether key is a valid Ed25519 public key (ValidSigningKeyString).
func (c *signingKeys) valid(key id.Ed25519) bool {
	if _, ok := (*c)[key]; ok {
		return true
	}
	if !ValidSigningKeyString(key) {
		return false
	}
	if *c == nil || len(*c) >= maxSigningKeys {
		*c = make(signingKeys, 64)
	}
	(*c)[key] = struct{}{}
	return true
}
