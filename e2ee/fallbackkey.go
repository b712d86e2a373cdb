package e2ee

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/goolm/account"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

// Fallback keys (MSC2732, in the spec since v1.2). Every device heirloom holds keeps a signed
// fallback key on the homeserver, which /keys/claim hands out once the device's one-time keys have
// run out, as Element's devices do. Without one, anyone who claims a puppet's one-time keys faster
// than heirloom replenishes them (a claim is one request, from any user of any server, and the
// homeserver tells heirloom of the claims only with the next transaction that concerns the puppet)
// leaves a new peer no way to open an Olm session with it: no room key, no bundle reaches it, and
// the puppet cannot read that peer's messages.
//
// mautrix's machine uploads one-time keys only; the fallback key is kept in the same goolm account
// (its pickle holds the current and the previous fallback key, and an incoming pre-key message may
// use either) and uploaded here. Which key the homeserver holds, and when the current one was made,
// is heirloom's own record (table heirloom_fallback_key): goolm's "published" flag cannot tell,
// as mautrix sets it whenever it uploads one-time keys.

// fallbackKeyMaxAge is how old a fallback key the homeserver has handed out may get before it is
// replaced: a week, matrix-rust-sdk's rule (the lower bound of X3DH's signed pre-key rotation). A
// used key is not replaced at once: the homeserver keeps handing it out until a new one comes, and
// a transaction computed before an upload would otherwise replace the key just uploaded, and with
// it drop the previous one (goolm keeps two), which a peer may have claimed.
const fallbackKeyMaxAge = 7 * 24 * time.Hour

// fallbackNeed is why a device's fallback key is looked at.
type fallbackNeed int

const (
	// fallbackPresent: the homeserver should hold the current key (provisioning, maintenance).
	fallbackPresent fallbackNeed = iota
	// fallbackHandedOut: the homeserver holds no unused key; replace the current one if it is old.
	fallbackHandedOut
	// fallbackLost: the homeserver lost the device, and its key with it; upload the same one again.
	fallbackLost
)

// RouteUnusedFallbackKeys hears from a transaction which fallback key types the homeserver holds
// unused for a device heirloom manages. Without an unused signed_curve25519 key (never uploaded,
// or handed out since) the device gets a new one if its current one is a week old, and the current
// one uploaded if the homeserver never had it.
func (m *Manager) RouteUnusedFallbackKeys(ctx context.Context, userID id.UserID, deviceID id.DeviceID, unused []string) {
	if !m.managesDevice(userID) || slices.Contains(unused, string(id.KeyAlgorithmSignedCurve25519)) {
		return
	}
	p, err := m.Get(ctx, userID)
	if err != nil || p.DeviceID != deviceID {
		return
	}
	if err = m.ensureFallbackKey(ctx, p, fallbackHandedOut); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Stringer("puppet", userID).Msg("Failed to replace the used fallback key")
	}
}

// ensureFallbackKey makes sure the homeserver holds the device's current fallback key: it makes
// one if the account has none (or, handed out, if the current one is a week old), and uploads the
// current one unless heirloom's record says the homeserver has it. A new key is saved with the
// account, and recorded, before it is uploaded: the homeserver never hands out a key heirloom lost.
func (m *Manager) ensureFallbackKey(ctx context.Context, p *Puppet, need fallbackNeed) error {
	p, unlock, err := m.lockCurrent(ctx, p)
	if err != nil {
		return err
	}
	defer unlock()
	acc, ok := p.Mach.GetAccount().Internal.(*account.Account)
	if !ok {
		return fmt.Errorf("the Olm account is not goolm's (%T): no fallback key", p.Mach.GetAccount().Internal)
	}
	now := m.now()
	current := ""
	if acc.NumFallbackKeys > 0 {
		current = acc.CurrentFallbackKey.KeyIDEncoded()
	}
	rec, err := m.db.GetFallbackKey(ctx, p.UserID.String())
	if err != nil {
		return err
	}
	if rec == nil || rec.DeviceID != p.DeviceID || rec.KeyID != current {
		// A key heirloom has no record of (made before it kept them, or saved with the account
		// just before a crash) counts as made now, and as not on the homeserver.
		rec = &database.FallbackKey{AccountID: p.UserID.String(), DeviceID: p.DeviceID, KeyID: current, CreatedAt: now}
	}
	if need == fallbackLost {
		rec.UploadedKeyID = ""
	}
	renew := current == "" ||
		(need == fallbackHandedOut && rec.UploadedKeyID == current && now.Sub(rec.CreatedAt) >= fallbackKeyMaxAge)
	if !renew && rec.UploadedKeyID == current {
		return nil
	}
	if renew {
		if err = acc.GenFallbackKey(); err != nil {
			return fmt.Errorf("failed to make a fallback key: %w", err)
		}
		current = acc.CurrentFallbackKey.KeyIDEncoded()
		rec = &database.FallbackKey{AccountID: p.UserID.String(), DeviceID: p.DeviceID, KeyID: current, CreatedAt: now}
	}
	// Whatever goes up is in the saved account first, and recorded as not yet uploaded.
	if err = p.Mach.CryptoStore.PutAccount(ctx, p.Mach.GetAccount()); err != nil {
		return fmt.Errorf("failed to save the account before uploading its fallback key: %w", err)
	}
	if err = m.db.PutFallbackKey(ctx, rec); err != nil {
		return err
	}
	if err = uploadFallbackKey(ctx, p, acc); err != nil {
		return err
	}
	// The key ages from when the homeserver starts handing it out: until now it handed out the
	// previous one, which a peer may have claimed a moment ago.
	rec.UploadedKeyID, rec.CreatedAt = current, now
	if err = m.db.PutFallbackKey(ctx, rec); err != nil {
		return err
	}
	zerolog.Ctx(ctx).Debug().Stringer("puppet", p.UserID).Stringer("device_id", p.DeviceID).Str("key_id", current).
		Bool("new", renew).Msg("Uploaded the device's fallback key")
	return nil
}

// uploadFallbackKey uploads the account's current fallback key, signed by the device. Uploading
// the key the homeserver holds already changes nothing there (Synapse keeps it, used or not: the
// signed JSON is the same, Ed25519 signatures being deterministic).
func uploadFallbackKey(ctx context.Context, p *Puppet, acc *account.Account) error {
	keys := make(map[id.KeyID]mautrix.OneTimeKey, 1)
	for keyID, public := range acc.FallbackKey() {
		key := mautrix.OneTimeKey{Key: public, Fallback: true, IsSigned: true}
		signature, err := p.Mach.GetAccount().SignJSON(&key)
		if err != nil {
			return fmt.Errorf("failed to sign the fallback key: %w", err)
		}
		key.Signatures = signatures.NewSingleSignature(p.UserID, id.KeyAlgorithmEd25519, p.DeviceID.String(), signature)
		keys[id.NewKeyID(id.KeyAlgorithmSignedCurve25519, keyID)] = key
	}
	if len(keys) == 0 {
		return errors.New("the account has no fallback key to upload")
	}
	url := p.Client.BuildClientURL("v3", "keys", "upload")
	if _, err := p.Client.MakeRequest(ctx, http.MethodPost, url, map[string]any{"fallback_keys": keys}, nil); err != nil {
		return fmt.Errorf("failed to upload the fallback key: %w", err)
	}
	return nil
}
