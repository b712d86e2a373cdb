package config

import (
	"fmt"
	"regexp"

	"maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/id"
)

// Registration builds the appservice registration the homeserver loads: an exclusive
// namespace for the puppets and the bot, and the flags heirloom's E2EE needs
// (MSC2409 to-device and ephemeral pushes, MSC3202 device lists and OTK counts,
// MSC4190 device management). In gateway mode it is the bridge's registration as the homeserver
// must see it: the bridge's ID, sender_localpart, namespaces and protocols, with heirloom's URL
// and heirloom's own tokens (never the bridge's), and heirloom's namespace beside the bridge's so
// that API-mode puppets keep working in the same process.
func (cfg *Config) Registration() *appservice.Registration {
	rateLimited := false
	reg := &appservice.Registration{
		ID:                  cfg.AppService.ID,
		URL:                 cfg.AppService.Address,
		AppToken:            cfg.AppService.ASToken,
		ServerToken:         cfg.AppService.HSToken,
		SenderLocalpart:     cfg.AppService.BotUsername,
		RateLimited:         &rateLimited,
		EphemeralEvents:     true,
		SoruEphemeralEvents: true,
		MSC3202:             true,
		MSC4190:             true,
	}
	if b := cfg.Bridge; b != nil {
		reg.ID, reg.SenderLocalpart, reg.Protocols = b.Registration.ID, b.Registration.SenderLocalpart, b.Registration.Protocols
		if b.Registration.RateLimited != nil {
			reg.RateLimited = b.Registration.RateLimited
		}
		reg.Namespaces = b.Registration.Namespaces
	}
	domain := regexp.QuoteMeta(cfg.Homeserver.Domain)
	reg.Namespaces.UserIDs.Register(regexp.MustCompile(fmt.Sprintf(`^@%s.+:%s$`, regexp.QuoteMeta(cfg.AppService.PuppetPrefix), domain)), true)
	reg.Namespaces.UserIDs.Register(regexp.MustCompile(fmt.Sprintf(`^@%s:%s$`, regexp.QuoteMeta(cfg.AppService.BotUsername), domain)), true)
	return reg
}

// SenderUserID is the appservice's sender as the homeserver knows it (the registration's
// sender_localpart): the bridge's bot in gateway mode, heirloom's own bot otherwise. Synapse refuses
// /sync to it.
func (cfg *Config) SenderUserID() id.UserID {
	if cfg.Bridge != nil {
		return cfg.Bridge.Bot
	}
	return cfg.BotUserID()
}

// RegisteredID is the appservice ID the homeserver knows heirloom by: the bridge's in gateway mode.
func (cfg *Config) RegisteredID() string {
	if cfg.Bridge != nil {
		return cfg.Bridge.Registration.ID
	}
	return cfg.AppService.ID
}

// RegistrationYAML renders the registration as the homeserver reads it.
func RegistrationYAML(cfg *Config) ([]byte, error) {
	out, err := cfg.Registration().YAML()
	if err != nil {
		return nil, err
	}
	return []byte(out), nil
}
