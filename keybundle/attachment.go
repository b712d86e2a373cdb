package keybundle

import (
	"errors"
	"fmt"
	"io"
	"os"

	"maunium.net/go/mautrix/crypto/attachment"
	"maunium.net/go/mautrix/event"
)

// ErrBundleTooLarge means a bundle is over history_sharing.max_bundle_size (or the homeserver's
// media limit): heirloom neither builds nor downloads such a bundle.
var ErrBundleTooLarge = errors.New("key bundle too large")

// Sealed is an encrypted bundle in a temporary file, ready to upload.
type Sealed struct {
	File   *os.File
	Size   int64
	Info   *event.EncryptedFileInfo
	Counts Counts
}

// Close removes the temporary file.
func (s *Sealed) Close() error {
	if s == nil || s.File == nil {
		return nil
	}
	name := s.File.Name()
	_ = s.File.Close()
	return os.Remove(name)
}

// limitedWriter fails once more than limit bytes were written.
type limitedWriter struct {
	w       io.Writer
	limit   int64
	written int64
}

func (lw *limitedWriter) Write(p []byte) (int, error) {
	if lw.written+int64(len(p)) > lw.limit {
		return 0, ErrBundleTooLarge
	}
	n, err := lw.w.Write(p)
	lw.written += int64(n)
	return n, err
}

// encryptingWriter encrypts with AES-256-CTR as it writes and hashes the ciphertext (attachment v2).
type encryptingWriter struct {
	dst io.Writer
	buf []byte
	enc *attachment.EncryptedFile
	rdr io.ReadSeekCloser
	pr  *pipeReader
}

// pipeReader feeds exactly the bytes handed to it into mautrix's encrypting reader.
type pipeReader struct{ next []byte }

func (p *pipeReader) Read(b []byte) (int, error) {
	if len(p.next) == 0 {
		return 0, io.EOF
	}
	n := copy(b, p.next)
	p.next = p.next[n:]
	return n, nil
}

func newEncryptingWriter(dst io.Writer) *encryptingWriter {
	ew := &encryptingWriter{dst: dst, enc: attachment.NewEncryptedFile(), pr: &pipeReader{}}
	ew.rdr = ew.enc.EncryptStream(ew.pr)
	return ew
}

func (ew *encryptingWriter) Write(p []byte) (int, error) {
	ew.pr.next = p
	if cap(ew.buf) < len(p) {
		ew.buf = make([]byte, len(p))
	}
	out := ew.buf[:len(p)]
	n, err := io.ReadFull(ew.rdr, out)
	if err != nil {
		return 0, fmt.Errorf("failed to encrypt bundle: %w", err)
	}
	if _, err = ew.dst.Write(out[:n]); err != nil {
		return 0, err
	}
	return len(p), nil
}

// finish computes the hash; the file info is valid only afterwards.
func (ew *encryptingWriter) finish() error { return ew.rdr.Close() }

// Seal runs build, which writes the bundle's plaintext JSON, through attachment encryption into a
// temporary file in dir, refusing to write more than maxSize encrypted bytes. Only the ciphertext
// ever reaches the disk; the plaintext exists only in small buffers on its way through.
func Seal(dir string, maxSize int64, build func(w io.Writer) (Counts, error)) (*Sealed, error) {
	f, err := os.CreateTemp(dir, "heirloom-bundle-*")
	if err != nil {
		return nil, fmt.Errorf("failed to create temporary file: %w", err)
	}
	sealed := &Sealed{File: f}
	limited := &limitedWriter{w: f, limit: maxSize}
	ew := newEncryptingWriter(limited)
	counts, err := build(ew)
	sealed.Counts = counts
	if err == nil {
		err = ew.finish()
	}
	if err != nil {
		_ = sealed.Close()
		if errors.Is(err, ErrBundleTooLarge) {
			return nil, fmt.Errorf("%w: over %d bytes with %d sessions and %d withheld entries written so far",
				ErrBundleTooLarge, maxSize, counts.Sessions, counts.Withheld)
		}
		return nil, err
	}
	if _, err = f.Seek(0, io.SeekStart); err != nil {
		_ = sealed.Close()
		return nil, err
	}
	sealed.Size = limited.written
	// Copy the exported fields only: mautrix caches decoded keys (with the hash still unset while
	// encrypting) in an unexported field, which would make Open on this Info fail its hash check.
	sealed.Info = &event.EncryptedFileInfo{EncryptedFile: attachment.EncryptedFile{
		Key: ew.enc.Key, InitVector: ew.enc.InitVector, Hashes: ew.enc.Hashes, Version: ew.enc.Version,
	}}
	return sealed, nil
}

// ErrFileVersion means a bundle's file is not encrypted as MSC4268 says: attachment version v2
// (AES-256-CTR with a SHA-256 hash). mautrix-go ≥ v0.33.0 would also decrypt other versions
// (MSC4571's FLOE), which no bundle uses.
var ErrFileVersion = errors.New("key bundle file is not an attachment of version v2")

// PrepareFile checks a bundle's file details: version v2, and keys mautrix can decrypt with.
func PrepareFile(info *event.EncryptedFileInfo) error {
	if info.Version != attachment.VersionAES256CTR {
		return fmt.Errorf("%w (%q)", ErrFileVersion, info.Version)
	}
	return info.PrepareForDecryption()
}

// Open returns a reader of the decrypted bundle. It reads at most maxSize bytes from src and fails
// with ErrBundleTooLarge beyond that; Close verifies the SHA-256 hash and must be checked: a bundle
// whose hash does not match must not be used (callers import inside a transaction they roll back).
func Open(src io.Reader, info *event.EncryptedFileInfo, maxSize int64) (io.ReadCloser, error) {
	if err := PrepareFile(info); err != nil {
		return nil, fmt.Errorf("bad bundle file keys: %w", err)
	}
	limited := &limitedReader{r: src, remaining: maxSize}
	return info.DecryptStream(limited), nil
}

type limitedReader struct {
	r         io.Reader
	remaining int64
}

func (lr *limitedReader) Read(p []byte) (int, error) {
	if lr.remaining <= 0 {
		// One more byte means the source is longer than allowed.
		var probe [1]byte
		if n, _ := lr.r.Read(probe[:]); n > 0 {
			return 0, ErrBundleTooLarge
		}
		return 0, io.EOF
	}
	if int64(len(p)) > lr.remaining {
		p = p[:lr.remaining]
	}
	n, err := lr.r.Read(p)
	lr.remaining -= int64(n)
	return n, err
}
