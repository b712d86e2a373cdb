package history

import (
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"runtime"
	"slices"
	"sync"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/e2ee"
	"github.com/heirloom-matrix/heirloom/e2ee/cryptostore"
	"github.com/heirloom-matrix/heirloom/keybundle"
)

// In gateway mode the bridge is one principal: heirloom decrypts the room for the bridge with the
// keys of any of its users there, and every one of them acts on the bridge's token. So a bundle
// one of them builds carries what all of them hold for the room (a pooled bundle): a ghost that
// joined without history shares what the bridge's bot received. What is pooled, and how:
//
//   - whose: the inviter's own store, the bridge's bot's, and those of the bridge's users the room
//     lists as joined or invited: the users heirloom reads the room with for the bridge. Each is
//     checked with config.IsBridgeUser, which heirloom's own puppets and bot never pass, whatever
//     the bridge's namespace says: they are other principals. An inviter that is not the bridge's
//     pools nothing.
//   - what: rows of the room only (every statement names it), each placed by keybundle.Place, as
//     in one store; one entry per session.
//   - shared_history stays false once any copy said false, across the accounts as within one
//     store: a session any of them holds as a key without shared history goes as
//     m.history_not_shared, never as a key. A withheld entry (a bundle sender's word) never blocks
//     a key, as in one store.
//   - several shareable copies of a session merge by e2ee.MergeSessions, folded in account order
//     (the inviter's first): a forgery imported under the session's ID never wins over a copy its
//     device sent, another sender's claims never replace the first copy's, and the earliest index
//     of the same ratchet wins.
//
// The bundle is then built, uploaded and sent by the inviter's device as any other: the invitee's
// client names the inviter as the one who shared the keys.

// bundleAccounts returns the accounts of the bridge's users whose rows a bundle the bridge user p
// builds for the room is made of, in the order their copies merge: p's own first, then the
// bridge's bot and the room's other bridge users, by user ID; only those that hold any row for
// the room.
func (s *Service) bundleAccounts(ctx context.Context, p *e2ee.Puppet, roomID id.RoomID) ([]string, error) {
	accounts := []string{p.UserID.String()}
	members, err := s.db.StateStore.GetRoomJoinedOrInvitedMembers(ctx, roomID)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to list the room's members: the bundle holds the inviter's and the bot's sessions only")
	}
	slices.Sort(members)
	for _, u := range append([]id.UserID{s.cfg.Bridge.Bot}, members...) {
		if s.cfg.IsBridgeUser(u) && !slices.Contains(accounts, u.String()) {
			accounts = append(accounts, u.String())
		}
	}
	return s.mgr.AccountsHolding(ctx, accounts, roomID)
}

// copies is what the pooled accounts hold of one session: how many keys with shared history, and
// whether any key without.
type copies struct {
	shared   int32
	unshared bool
}

// keyGoes reports whether the session goes into the bundle as a key (if Place lets it).
func (c copies) keyGoes() bool { return c.shared > 0 && !c.unshared }

// pool is the plan of a pooled bundle: every session the accounts hold for the room, and the
// accounts with rows for each pass, in merge order.
type pool struct {
	roomID   id.RoomID
	sessions map[id.SessionID]copies
	// withheldFrom hold keys without shared history or withheld entries; sharedFrom shareable keys.
	withheldFrom, sharedFrom []string
	// merged counts the copies beyond the first of shareable sessions.
	merged int
}

// planPool reads what the accounts hold for the room, without key material.
func (s *Service) planPool(ctx context.Context, accounts []string, roomID id.RoomID) (*pool, error) {
	pl := &pool{roomID: roomID, sessions: make(map[id.SessionID]copies)}
	withheld, shared := map[string]bool{}, map[string]bool{}
	err := s.mgr.EachRoomRow(ctx, accounts, roomID, func(r cryptostore.RoomRow) error {
		c := pl.sessions[r.SessionID]
		switch {
		case r.Shared:
			c.shared++
			shared[r.Account] = true
		case r.HasKey:
			c.unshared = true
			withheld[r.Account] = true
		default:
			withheld[r.Account] = true
		}
		pl.sessions[r.SessionID] = c
		return nil
	})
	for _, a := range accounts {
		if withheld[a] {
			pl.withheldFrom = append(pl.withheldFrom, a)
		}
		if shared[a] {
			pl.sharedFrom = append(pl.sharedFrom, a)
		}
	}
	for _, c := range pl.sessions {
		if c.keyGoes() {
			pl.merged += int(c.shared) - 1
		}
	}
	return pl, err
}

// writePooledBundle is writeBundle for a bundle of several accounts' rows: the withheld list
// first (keys without shared history, in any account, and the withheld entries of sessions no key
// goes out for), then one key per session whose every key copy is shareable, merged.
func (s *Service) writePooledBundle(ctx context.Context, p *e2ee.Puppet, accounts []string, roomID id.RoomID, w io.Writer) (keybundle.Counts, error) {
	builder := keybundle.NewBuilder(w, roomID, p.DeviceID)
	pl, err := s.planPool(ctx, accounts, roomID)
	for _, a := range pl.withheldFrom {
		if err != nil {
			break
		}
		err = s.mgr.EachWithheldEntryOf(ctx, a, roomID, func(h keybundle.Held) error {
			if !h.HasKey && pl.sessions[h.SessionID].keyGoes() {
				return nil // a withheld entry never blocks a key
			}
			return builder.Add(h, nil)
		})
	}
	if err == nil {
		err = s.exportPooled(ctx, pl, addExported(builder))
	}
	counts, err := closeBundle(ctx, builder, err)
	if err != nil {
		return counts, err
	}
	zerolog.Ctx(ctx).Info().Int("accounts", len(accounts)).Strs("pooled_from", pl.sharedFrom).Int("copies_merged", pl.merged).
		Int("sessions", counts.Sessions).Int("withheld", counts.Withheld).Msg("Built a bundle of what the bridge's users hold")
	return counts, err
}

// pooledCopy is one shareable copy on its way to the worker that owns its session.
type pooledCopy struct {
	cryptostore.SharedCopy
	// want is how many copies of the session the plan found (1: export it at once).
	want int32
}

// exportPooled reads the shareable copies of the sessions that go out as keys, account by account
// in merge order, and calls each once per session with its merged copy exported at its first known
// index. Each session belongs to one worker (by a hash of its ID), which folds its copies in the
// order they were read, so the merge order holds on every core. A session whose copies change
// while it is read goes out with those read.
func (s *Service) exportPooled(ctx context.Context, pl *pool, each func(*storedSession) error) error {
	workers := max(1, runtime.GOMAXPROCS(0))
	ins := make([]chan pooledCopy, workers)
	done := make(chan *storedSession, 256)
	var wg sync.WaitGroup
	for i := range ins {
		ins[i] = make(chan pooledCopy, 128)
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.foldCopies(ins[i], done)
		}()
	}
	readErr := make(chan error, 1)
	go func() {
		defer func() {
			for _, in := range ins {
				close(in)
			}
		}()
		readErr <- s.readShared(ctx, pl, func(c pooledCopy) {
			h := fnv.New32a()
			_, _ = h.Write([]byte(c.SessionID))
			ins[h.Sum32()%uint32(workers)] <- c
		})
	}()
	return collect(&wg, done, readErr, each)
}

// readShared hands send every shareable copy of a session that goes out as a key.
func (s *Service) readShared(ctx context.Context, pl *pool, send func(pooledCopy)) error {
	for _, a := range pl.sharedFrom {
		err := s.mgr.EachSharedCopy(ctx, a, pl.roomID, func(c cryptostore.SharedCopy) error {
			if planned := pl.sessions[c.SessionID]; !planned.unshared {
				send(pooledCopy{SharedCopy: c, want: planned.shared})
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// foldCopies is one export worker of a pooled bundle: a session of one copy is exported as it
// comes; the copies of another are merged as they come, and the result exported once the last
// planned copy came, or once nothing more comes.
func (s *Service) foldCopies(in <-chan pooledCopy, done chan<- *storedSession) {
	folds := map[id.SessionID]*fold{}
	finish := func(sessionID id.SessionID, f *fold) {
		delete(folds, sessionID)
		done <- f.export(s.mgr.Pickles)
	}
	for c := range in {
		if c.want <= 1 {
			st := &storedSession{StoredSession: c.StoredSession}
			st.exported, st.err = s.mgr.Pickles.ExportPickled(st.Pickled)
			st.Pickled = nil
			done <- st
			continue
		}
		f := folds[c.SessionID]
		if f == nil {
			f = &fold{first: c.SharedCopy}
			folds[c.SessionID] = f
		} else {
			f.add(s.mgr.Pickles, c.SharedCopy)
		}
		if f.seen++; f.seen >= c.want {
			finish(c.SessionID, f)
		}
	}
	for sessionID, f := range folds {
		finish(sessionID, f)
	}
}

// fold is the merge of one session's copies so far.
type fold struct {
	first  cryptostore.SharedCopy
	merged *crypto.InboundGroupSession // nil while every copy is the first one's very state
	seen   int32
	err    error
}

// add merges one more copy in. A copy whose pickle is the first copy's, byte for byte, is the same
// ratchet from the same index (pickles are deterministic): e2ee.MergeSessions would keep the first
// copy's key and claims, so it is not even unpickled. That is most copies in a room whose members
// all got a session when it began.
func (f *fold) add(pickles *cryptostore.PickleCipher, c cryptostore.SharedCopy) {
	if f.err != nil || f.merged == nil && bytes.Equal(c.Pickled, f.first.Pickled) {
		return
	}
	if f.merged == nil {
		if f.merged, f.err = pickles.Session(f.first); f.err != nil {
			return
		}
	}
	incoming, err := pickles.Session(c)
	if err != nil {
		f.err = fmt.Errorf("failed to read session %s: %w", c.SessionID, err)
	} else if out, _ := e2ee.MergeSessions(f.merged, incoming); out != nil {
		f.merged = out
	}
}

// export is the merged session as the builder takes it, exported at its first known index; with
// an error, the first copy's row, which fails the bundle as an unreadable session of one store does.
func (f *fold) export(pickles *cryptostore.PickleCipher) *storedSession {
	st := &storedSession{StoredSession: cryptostore.StoredSession{Held: f.first.Held}, err: f.err}
	switch {
	case f.err != nil:
	case f.merged == nil:
		st.exported, st.err = pickles.ExportPickled(f.first.Pickled)
	default:
		st.SenderKey, st.SigningKey = f.merged.SenderKey, f.merged.SigningKey
		st.SharedHistory = f.merged.SharedHistory != nil && *f.merged.SharedHistory
		exported, err := f.merged.Internal.Export(f.merged.Internal.FirstKnownIndex())
		st.exported, st.err = string(exported), err
	}
	return st
}
