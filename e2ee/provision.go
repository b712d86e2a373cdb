package e2ee

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/rs/zerolog"
	"go.mau.fi/util/random"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/heirloom-matrix/heirloom/database"
)

// Identity is what the API reports about a provisioned puppet. Keys are unpadded base64.
type Identity struct {
	UserID     id.UserID     `json:"user_id"`
	DeviceID   id.DeviceID   `json:"device_id"`
	Ed25519    id.Ed25519    `json:"ed25519"`
	Curve25519 id.Curve25519 `json:"curve25519"`
	MasterKey  id.Ed25519    `json:"master_key"`
}

// Provision makes sure the puppet exists as a full E2EE user: registered, with its device, its Olm
// account and one-time keys uploaded, and a cross-signing identity that signs its device. Every
// step is resumable: the device ID and the cross-signing seeds are saved before they are used, so
// a crash part-way never creates a second device or silently a second identity.
func (m *Manager) Provision(ctx context.Context, userID id.UserID, displayname string) (*Identity, error) {
	unlock := m.provisions.WithLock(userID)
	row, err := m.db.GetPuppet(ctx, userID)
	if err != nil {
		unlock()
		return nil, fmt.Errorf("failed to get puppet: %w", err)
	}
	if row == nil || !row.Ready {
		row, err = m.provision(ctx, row, userID, displayname)
		if err != nil {
			unlock()
			return nil, err
		}
	}
	unlock()
	p, err := m.Get(ctx, userID)
	if err != nil {
		return nil, err
	}
	signing, identity := p.Mach.OwnIdentity().SigningKey, p.Mach.OwnIdentity().IdentityKey
	return &Identity{UserID: userID, DeviceID: row.DeviceID, Ed25519: signing, Curve25519: identity, MasterKey: row.MasterKey}, nil
}

// ProvisionedIdentity returns the identity of a provisioned user, or nil if it is not (yet), without
// loading its machine.
func (m *Manager) ProvisionedIdentity(ctx context.Context, userID id.UserID) (*Identity, error) {
	row, err := m.db.GetPuppet(ctx, userID)
	if err != nil {
		return nil, fmt.Errorf("failed to get puppet: %w", err)
	} else if row == nil || !row.Ready {
		return nil, nil
	}
	return &Identity{UserID: userID, DeviceID: row.DeviceID, MasterKey: row.MasterKey}, nil
}

func (m *Manager) provision(ctx context.Context, row *database.Puppet, userID id.UserID, displayname string) (*database.Puppet, error) {
	log := zerolog.Ctx(ctx).With().Stringer("puppet", userID).Logger()
	ctx = log.WithContext(ctx)
	if row == nil {
		row = &database.Puppet{
			UserID:      userID,
			DeviceID:    id.DeviceID("HEIRLOOM_" + strings.ToUpper(random.String(10))),
			Displayname: displayname,
		}
		if err := m.register(ctx, userID); err != nil {
			return nil, err
		}
		// Save the device ID before creating it: a restart then reuses it instead of creating another.
		if err := m.db.PutPuppet(ctx, row); err != nil {
			return nil, fmt.Errorf("failed to save puppet: %w", err)
		}
	}
	cli := m.client(userID, "", log)
	if err := cli.CreateDeviceMSC4190(ctx, row.DeviceID, "heirloom"); err != nil {
		return nil, fmt.Errorf("failed to create device %s: %w", row.DeviceID, err)
	}
	if displayname != "" {
		if err := cli.SetDisplayName(ctx, displayname); err != nil {
			log.Warn().Err(err).Msg("Failed to set puppet displayname")
		}
	}
	p, err := m.newMachine(ctx, userID, row.DeviceID)
	if err != nil {
		return nil, err
	}
	// A device whose keys were never uploaded has no one-time key on the homeserver: 0. (-1, "ask
	// the homeserver", is asked only of a device already shared; otherwise mautrix takes it as one
	// fewer than none and uploads 51 keys, one row more than Element's 50 on the homeserver.)
	otks := -1
	if !p.Mach.GetAccount().Shared {
		otks = 0
	}
	unlock := m.lockAccount(userID)
	err = p.Mach.ShareKeys(ctx, otks)
	unlock()
	if err != nil {
		return nil, fmt.Errorf("failed to upload device keys: %w", err)
	}
	if err = m.ensureFallbackKey(ctx, p, fallbackPresent); err != nil {
		return nil, err
	}
	if err = m.ensureCrossSigning(ctx, p, row); err != nil {
		return nil, err
	}
	row.Ready = true
	if err = m.db.PutPuppet(ctx, row); err != nil {
		return nil, fmt.Errorf("failed to save puppet: %w", err)
	}
	m.remember(p)
	log.Info().Stringer("device_id", row.DeviceID).Stringer("master_key", row.MasterKey).Msg("Provisioned puppet")
	return row, nil
}

// EnsureRegistered registers the user on the homeserver through the appservice, if it is not
// already: in gateway mode heirloom's own bot is not the registration's sender, so the homeserver
// does not create it.
func (m *Manager) EnsureRegistered(ctx context.Context, userID id.UserID) error {
	return m.register(ctx, userID)
}

func (m *Manager) register(ctx context.Context, userID id.UserID) error {
	localpart, _, _ := userID.Parse()
	cli := m.client(userID, "", *zerolog.Ctx(ctx))
	_, _, err := cli.Register(ctx, &mautrix.ReqRegister[any]{
		Username:     localpart,
		Type:         mautrix.AuthTypeAppservice,
		InhibitLogin: true,
	})
	if err != nil && !errors.Is(err, mautrix.MUserInUse) {
		return fmt.Errorf("failed to register %s: %w", userID, err)
	}
	return nil
}

// ensureCrossSigning creates (or reloads) the puppet's cross-signing identity, publishes it and
// signs the device with it. Seeds are saved encrypted before they are published.
func (m *Manager) ensureCrossSigning(ctx context.Context, p *Puppet, row *database.Puppet) error {
	if row.CrossSigningSeeds != "" {
		seeds, err := m.Sealer.openSeeds(string(row.UserID), row.CrossSigningSeeds)
		if err != nil {
			return err
		}
		if err = p.Mach.ImportCrossSigningKeys(seeds); err != nil {
			return fmt.Errorf("failed to import cross-signing keys: %w", err)
		}
	} else {
		keys, err := p.Mach.GenerateCrossSigningKeys()
		if err != nil {
			return fmt.Errorf("failed to generate cross-signing keys: %w", err)
		}
		p.Mach.CrossSigningKeys = keys
		sealed, err := m.Sealer.sealSeeds(string(row.UserID), p.Mach.ExportCrossSigningKeys())
		if err != nil {
			return fmt.Errorf("failed to encrypt cross-signing seeds: %w", err)
		}
		row.CrossSigningSeeds = sealed
		row.MasterKey = keys.MasterKey.PublicKey()
		if err = m.db.PutPuppet(ctx, row); err != nil {
			return fmt.Errorf("failed to save cross-signing seeds: %w", err)
		}
	}
	// Appservice users publish cross-signing keys without user-interactive auth on Synapse.
	if err := p.Mach.PublishCrossSigningKeys(ctx, p.Mach.CrossSigningKeys, nil); err != nil {
		return fmt.Errorf("failed to publish cross-signing keys: %w", err)
	}
	// Sign the device before the machine sends any Olm message: mautrix caches the device keys it
	// embeds as sender_device_keys the first time, and rust-sdk needs the self-signing signature there.
	if err := p.Mach.SignOwnDevice(ctx, p.Mach.OwnIdentity()); err != nil {
		return fmt.Errorf("failed to sign own device: %w", err)
	}
	return nil
}

// OwnDeviceSigned reports whether the store holds the puppet's self-signing signature on its own
// device: the signature mautrix puts into sender_device_keys, without which matrix-rust-sdk
// refuses the puppet's bundles. (Resolving the trust of the machine's own device would say
// "verified" whatever the signatures.)
func (p *Puppet) OwnDeviceSigned(ctx context.Context) (bool, error) {
	keys := p.Mach.CrossSigningKeys
	if keys == nil || keys.SelfSigningKey == nil {
		return false, nil
	}
	signed, err := p.Store.IsKeySignedBy(ctx, p.UserID, p.Mach.OwnIdentity().SigningKey, p.UserID, keys.SelfSigningKey.PublicKey())
	if err != nil {
		return false, fmt.Errorf("failed to check own device signature: %w", err)
	}
	return signed, nil
}
