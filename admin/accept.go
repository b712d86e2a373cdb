package admin

import (
	"fmt"
	"time"

	"maunium.net/go/mautrix/id"
)

// action is what the bot does with a message.
type action int

const (
	// ignore: nothing, not even a reply (the reason is logged).
	ignore action = iota
	// refuse: the refusal, the first time the sender gets one.
	refuse
	// decrypt: decrypt the message, then decide again. Only an admin's message may wait for its
	// room key and have it asked for (verdict.waitForKey).
	decrypt
	// tellUndecryptable: tell the admin the message could not be decrypted.
	tellUndecryptable
	// tellNotEncrypted, tellSendEncrypted, tellUntrusted: answer NotEncrypted, SendEncrypted or
	// UntrustedEvent instead of running the command.
	tellNotEncrypted
	tellSendEncrypted
	tellUntrusted
	// run: run the command and answer it.
	run
)

const (
	// maxAge: commands older than this (sent while heirloom was away) are not run.
	maxAge = 10 * time.Minute
	// maxAhead: commands dated further ahead of heirloom's clock than this are not run either: the
	// sender's homeserver clock is off, so their age is unknown.
	maxAhead = time.Minute
)

// message is what the bot knows of a message when it decides what to do with it.
type message struct {
	// admin: the sender is one of heirloom's admins (config admins).
	admin bool
	// dm: the bot and at most one other user are joined to the room.
	dm bool
	// roomEncrypted: the room's state says it is encrypted.
	roomEncrypted bool
	// eventEncrypted: the event came as m.room.encrypted.
	eventEncrypted bool
	// decrypted: an encrypted event was decrypted; undecryptable: decrypting it failed. Neither
	// is set before the bot tried.
	decrypted, undecryptable bool
	// command: the plaintext is a text message for the bot (in a DM every one, elsewhere one
	// addressed to it).
	command bool
	// trust is the sending device's, as decryption resolved it; forwarded: the room key came
	// forwarded by someone, not from the sending device.
	trust     id.TrustState
	forwarded bool
	// sent is the event's origin_server_ts; received is when heirloom got it.
	sent, received time.Time
}

// verdict is the bot's decision about a message.
type verdict struct {
	action action
	// waitForKey: with decrypt, the bot may wait for a missing room key and ask the sending
	// device for it.
	waitForKey bool
	// reason says why, for the log ("" when the command runs).
	reason string
}

// Reasons of the verdicts that the bot logs only at debug level: talk not meant for it.
const (
	reasonNotCommand    = "not a command for the bot"
	reasonUndecryptable = "could not decrypt it"
)

// decide is the bot's rule for which messages it acts on. Commands run only from an admin, in an
// encrypted room, sent encrypted, from a device the admin's cross-signing identity signs (not with
// a room key someone forwarded), and sent within maxAge before heirloom got them (and not dated
// ahead of its clock). Anyone else in a DM is refused before anything is decrypted; in a room with
// more members only a message addressed to the bot is refused. Only an admin's message waits for
// its room key: nobody else's can hold the bot up or make it ask anyone for keys.
func decide(m message) verdict {
	age := m.received.Sub(m.sent)
	switch {
	case !m.admin && m.dm:
		return verdict{action: refuse, reason: "not an admin"}
	case age > maxAge:
		return verdict{action: ignore, reason: fmt.Sprintf("sent %s before heirloom got it, over %s", age.Round(time.Second), maxAge)}
	case -age > maxAhead:
		return verdict{action: ignore, reason: fmt.Sprintf("dated %s ahead of heirloom's clock", (-age).Round(time.Second))}
	case m.eventEncrypted && !m.decrypted && !m.undecryptable:
		return verdict{action: decrypt, waitForKey: m.admin, reason: "encrypted: decrypt it first"}
	case m.undecryptable && m.admin && m.dm:
		return verdict{action: tellUndecryptable, reason: "could not decrypt an admin's message"}
	case m.undecryptable:
		return verdict{action: ignore, reason: reasonUndecryptable}
	case !m.command:
		return verdict{action: ignore, reason: reasonNotCommand}
	case !m.admin:
		return verdict{action: refuse, reason: "not an admin"}
	case !m.roomEncrypted:
		return verdict{action: tellNotEncrypted, reason: "the room is not encrypted"}
	case !m.eventEncrypted:
		return verdict{action: tellSendEncrypted, reason: "the command came in the clear"}
	case m.forwarded:
		return verdict{action: tellUntrusted, reason: "its room key was forwarded, not sent by the admin's device"}
	case m.trust < id.TrustStateCrossSignedTOFU:
		return verdict{action: tellUntrusted, reason: "sent from a device the admin's cross-signing identity does not sign"}
	}
	return verdict{action: run}
}
