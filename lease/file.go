package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// fileStore is the lease of an SQLite database: an exclusive flock on a file beside it. The kernel
// releases the lock when the process ends, however it ends, so the lease never outlives its
// holder and needs no renewal; the file holds the holder's host and pid, for the message a second
// process gives. It is a file of its own, not the database: SQLite's locks are POSIX record locks,
// which an flock on NFS would be emulated with.
type fileStore struct {
	path     string
	database string
	file     *os.File
}

var _ Store = (*fileStore)(nil)

// NewFileStore returns the lease of the database at database, held on the file at path.
func NewFileStore(path, database string) *fileStore {
	return &fileStore{path: path, database: database}
}

// Describe names the database and the lock file.
func (s *fileStore) Describe() string {
	return fmt.Sprintf("%s (lock file %s)", s.database, s.path)
}

// TryAcquire takes the flock without waiting; if another process holds it, it says who.
func (s *fileStore) TryAcquire(_ context.Context, me Holder, _ time.Duration) (Attempt, error) {
	if s.file != nil {
		return Attempt{Acquired: true, Holder: me}, nil
	}
	for range 3 {
		f, err := os.OpenFile(s.path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return Attempt{}, fmt.Errorf("failed to open the lock file: %w", err)
		}
		if err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); errors.Is(err, syscall.EWOULDBLOCK) {
			holder := readHolder(f)
			f.Close()
			return Attempt{Holder: holder}, nil
		} else if err != nil {
			f.Close()
			return Attempt{}, fmt.Errorf("failed to lock the lock file: %w", err)
		}
		// The file may have been removed or replaced between the open and the lock: lock the one
		// at the path.
		if same, _ := s.sameFile(f); !same {
			f.Close()
			continue
		}
		me.Since = time.Now()
		if err = writeHolder(f, me); err != nil {
			f.Close()
			return Attempt{}, err
		}
		s.file = f
		return Attempt{Acquired: true, Holder: me}, nil
	}
	return Attempt{}, errors.New("the lock file keeps being replaced")
}

// Renew checks that the lock file is still the one locked: a process that removed or replaced it
// would let a second process lock another file of the same name.
func (s *fileStore) Renew(context.Context, Holder, time.Duration) error {
	if s.file == nil {
		return ErrNotHolder
	}
	same, err := s.sameFile(s.file)
	if err != nil {
		return fmt.Errorf("failed to check the lock file: %w", err)
	} else if !same {
		return fmt.Errorf("%w: the lock file %s was removed or replaced", ErrNotHolder, s.path)
	}
	return nil
}

// Release empties the file and unlocks it.
func (s *fileStore) Release(context.Context, Holder) error {
	if s.file == nil {
		return nil
	}
	_ = s.file.Truncate(0)
	err := s.file.Close() // closing the last descriptor releases the flock
	s.file = nil
	return err
}

// sameFile reports whether f is the file now at the path.
func (s *fileStore) sameFile(f *os.File) (bool, error) {
	held, err := f.Stat()
	if err != nil {
		return false, err
	}
	atPath, err := os.Stat(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	return os.SameFile(held, atPath), nil
}

func writeHolder(f *os.File, h Holder) error {
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if err = f.Truncate(0); err == nil {
		if _, err = f.WriteAt(append(data, '\n'), 0); err == nil {
			err = f.Sync()
		}
	}
	if err != nil {
		return fmt.Errorf("failed to write the lock file: %w", err)
	}
	return nil
}

// readHolder reads who holds the lock; a file it cannot read names nobody (PID 0).
func readHolder(f *os.File) Holder {
	var h Holder
	data, err := io.ReadAll(io.LimitReader(f, 4096))
	if err == nil {
		_ = json.Unmarshal(data, &h)
	}
	return h
}

// Solo is the lease of a database no other process can open (SQLite in memory): always this
// process's.
type Solo string

var _ Store = Solo("")

func (s Solo) Describe() string { return string(s) }
func (s Solo) TryAcquire(_ context.Context, me Holder, _ time.Duration) (Attempt, error) {
	me.Since = time.Now()
	return Attempt{Acquired: true, Holder: me}, nil
}
func (Solo) Renew(context.Context, Holder, time.Duration) error { return nil }
func (Solo) Release(context.Context, Holder) error              { return nil }
