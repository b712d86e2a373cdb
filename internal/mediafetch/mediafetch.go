// Package mediafetch downloads files from the media repository into temporary files: streamed
// under a byte cap (refused from the Content-Length before a byte is read, and counted while
// reading), and, for an encrypted file, checked against the SHA-256 hash its event names before
// anything of it is used. History sharing fetches key bundles with it, the gateway media.
package mediafetch

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// The errors of a refused file, unless Options names the caller's own.
var (
	// errHashMismatch: the file's SHA-256 hash is not the one its event names (or it names none
	// that decodes).
	errHashMismatch = errors.New("file hash does not match: refusing it")
	// errTooLarge: the file is over its cap.
	errTooLarge = errors.New("file too large")
)

// Options says what is fetched and where it goes.
type Options struct {
	// What names the file in errors ("bundle": "failed to download bundle: …").
	What string
	// MaxSize is the cap in bytes; a file of exactly MaxSize bytes is taken.
	MaxSize int64
	// Setting is the config key of the cap, named in the error ("", none).
	Setting string
	// TooLarge is the error a file over the cap wraps (nil: errTooLarge).
	TooLarge error
	// HashMismatch is the error for a file whose hash does not match (nil: errHashMismatch).
	HashMismatch error
	// Dir and Pattern name the temporary file as os.CreateTemp does ("" Dir: the system's).
	Dir, Pattern string
}

// File is a downloaded file, positioned at its start. Close removes it.
type File struct {
	*os.File
	// Size is its length in bytes.
	Size int64
}

// Close closes and removes the temporary file.
func (f *File) Close() error {
	err := f.File.Close()
	_ = os.Remove(f.Name())
	return err
}

// Encrypted downloads an encrypted file into a temporary file, within the cap, and checks its
// ciphertext's SHA-256 against the one file names: the file is returned only if it matches.
func Encrypted(ctx context.Context, cli *mautrix.Client, file *event.EncryptedFileInfo, opts Options) (*File, error) {
	mxc, err := file.URL.Parse()
	if err != nil {
		return nil, fmt.Errorf("bad %s URL: %w", opts.What, err)
	}
	want, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(file.Hashes.SHA256, "="))
	if err != nil || len(want) != sha256.Size {
		want = nil // matches no hash
	}
	return fetch(ctx, cli, mxc, opts, func(got []byte) bool { return subtle.ConstantTimeCompare(want, got) == 1 })
}

// Plain downloads a file into a temporary file, within the cap. Its content is not checked: use it
// only for what heirloom encrypts itself, never for what it decrypts.
func Plain(ctx context.Context, cli *mautrix.Client, mxc id.ContentURI, opts Options) (*File, error) {
	return fetch(ctx, cli, mxc, opts, nil)
}

func fetch(ctx context.Context, cli *mautrix.Client, mxc id.ContentURI, opts Options, hashOK func([]byte) bool) (*File, error) {
	resp, err := cli.Download(ctx, mxc)
	if err != nil {
		return nil, fmt.Errorf("failed to download %s: %w", opts.What, err)
	}
	defer resp.Body.Close()
	return toTemp(resp.Body, resp.ContentLength, opts, hashOK)
}

// toTemp copies body into a new temporary file: refused before reading when announced (the
// Content-Length, -1 unknown) is over the cap, and as soon as body runs past it. When hashOK is not
// nil, it is given the SHA-256 of everything read and the file is kept only if it answers true.
// On any error nothing is left behind.
func toTemp(body io.Reader, announced int64, opts Options, hashOK func(sum []byte) bool) (*File, error) {
	if announced > opts.MaxSize {
		return nil, opts.tooLarge(fmt.Sprintf("%d bytes, over", announced))
	}
	tmp, err := os.CreateTemp(opts.Dir, opts.Pattern)
	if err != nil {
		return nil, fmt.Errorf("failed to create temporary file: %w", err)
	}
	f := &File{File: tmp}
	hasher, to := sha256.New(), io.Writer(tmp)
	if hashOK != nil {
		to = io.MultiWriter(tmp, hasher)
	}
	f.Size, err = io.Copy(to, io.LimitReader(body, opts.MaxSize+1))
	switch {
	case err != nil: // a failed read, returned as it came
	case f.Size > opts.MaxSize:
		err = opts.tooLarge("over")
	case hashOK != nil && !hashOK(hasher.Sum(nil)):
		err = opts.hashMismatch()
	default:
		_, err = tmp.Seek(0, io.SeekStart)
	}
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return f, nil
}

// tooLarge is the error for a file over the cap; how says by how much, as far as is known.
func (o Options) tooLarge(how string) error {
	sentinel := o.TooLarge
	if sentinel == nil {
		sentinel = errTooLarge
	}
	limit := fmt.Sprint(o.MaxSize)
	if o.Setting != "" {
		limit = o.Setting + " " + limit
	}
	return fmt.Errorf("%w: %s %s", sentinel, how, limit)
}

func (o Options) hashMismatch() error {
	if o.HashMismatch != nil {
		return o.HashMismatch
	}
	return errHashMismatch
}
