package e2ee

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/exsync"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee/cryptostore"
)

// sessionGate orders every write of a puppet's inbound megolm sessions. mautrix's decryption
// writes a session back after reading it (ratchet safety data), so a merge running beside a
// decryption could be undone by the older copy. Decryptions and single stores hold the gate shared
// and the session's own lock; a bundle import holds the gate alone for its whole transaction, so it
// needs no per-session lock (taking one inside the transaction would deadlock with a decryption
// waiting for the database).
type sessionGate struct {
	rw       sync.RWMutex
	sessions exsync.KeyedMutex[id.SessionID]
}

// gate returns the puppet's session gate, shared by every machine ever loaded for it.
func (m *Manager) gate(userID id.UserID) *sessionGate {
	g, _ := m.gates.LoadOrStore(userID, &sessionGate{})
	return g.(*sessionGate)
}

// megolmLock is the machine's MegolmDecryptLock: the gate shared, then the session's lock.
func (g *sessionGate) megolmLock(ctx context.Context, sessionID id.SessionID, _ bool, cb func(context.Context) error) error {
	g.rw.RLock()
	defer g.rw.RUnlock()
	defer g.sessions.WithLock(sessionID)()
	return cb(ctx)
}

// LockSessionsExclusive stops every decryption and session store of the puppet until the returned
// function is called. A bundle import holds it around its transaction.
func (p *Puppet) LockSessionsExclusive() func() {
	g := p.mgr.gate(p.UserID)
	g.rw.Lock()
	return g.rw.Unlock
}

// StoreSession stores a copy of an inbound session the puppet received under the room it claims,
// merging it with the copy the puppet holds for that room by MergeSessions. A copy claiming
// another room is another row: nothing it says changes, moves, shadows or blocks what the puppet
// holds for any other room. It reports whether the store changed and, if not, why.
func (p *Puppet) StoreSession(ctx context.Context, igs *crypto.InboundGroupSession) (stored bool, reason string, err error) {
	err = p.mgr.gate(p.UserID).megolmLock(ctx, igs.ID(), true, func(ctx context.Context) error {
		stored, reason, err = p.storeSessionLocked(ctx, igs)
		return err
	})
	if stored {
		p.Mach.MarkSessionReceived(ctx, igs.RoomID, igs.ID(), igs.Internal.FirstKnownIndex())
	}
	return
}

// StoreSessionInTxn is StoreSession for a caller that holds LockSessionsExclusive, inside its
// own database transaction, with what HeldSessions said the puppet holds for the session in its
// room (nil: nothing).
func (p *Puppet) StoreSessionInTxn(ctx context.Context, igs *crypto.InboundGroupSession, held *cryptostore.HeldSession) (bool, string, error) {
	return p.storeSession(ctx, igs, held)
}

func (p *Puppet) storeSessionLocked(ctx context.Context, igs *crypto.InboundGroupSession) (bool, string, error) {
	held, err := p.HeldSessions(ctx, igs.RoomID, []id.SessionID{igs.ID()})
	if err != nil {
		return false, "", err
	}
	var h *cryptostore.HeldSession
	if found, ok := held[igs.ID()]; ok {
		h = &found
	}
	return p.storeSession(ctx, igs, h)
}

func (p *Puppet) storeSession(ctx context.Context, igs *crypto.InboundGroupSession, held *cryptostore.HeldSession) (bool, string, error) {
	if held != nil && held.HasKey {
		existing, err := p.Store.GetGroupSession(ctx, igs.RoomID, igs.ID())
		if err != nil {
			return false, "", fmt.Errorf("failed to read held session: %w", err)
		} else if existing == nil {
			return false, "", errors.New("held session disappeared")
		}
		merged, reason := MergeSessions(existing, igs)
		if merged == nil {
			return false, reason, nil
		}
		igs = merged
	}
	// A withheld entry of the room holds no key, and gives way to one (rust-sdk too keeps both
	// facts, and the key decrypts): otherwise whoever names a session ID first could keep its key out.
	if err := p.Store.PutGroupSession(ctx, igs); err != nil {
		return false, "", fmt.Errorf("failed to store session: %w", err)
	}
	return true, "", nil
}

// RotationLimits returns how long and for how many messages the room's megolm sessions may be
// used, from its m.room.encryption event (the spec's defaults where it says nothing): the same
// limits for a key received directly and for one imported from a bundle.
func (p *Puppet) RotationLimits(ctx context.Context, roomID id.RoomID) (time.Duration, int) {
	maxAge, maxMessages := 7*24*time.Hour, 100
	if enc, err := p.Mach.StateStore.GetEncryptionEvent(ctx, roomID); err == nil && enc != nil {
		if enc.RotationPeriodMillis > 0 {
			maxAge = time.Duration(enc.RotationPeriodMillis) * time.Millisecond
		}
		if enc.RotationPeriodMessages > 0 {
			maxMessages = enc.RotationPeriodMessages
		}
	} else if err != nil && !errors.Is(err, sql.ErrNoRows) {
		zerolog.Ctx(ctx).Debug().Err(err).Msg("Failed to read room encryption settings; using the defaults")
	}
	return maxAge, maxMessages
}
