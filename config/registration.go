package config

import (
	"fmt"
	"regexp"

	"maunium.net/go/mautrix/appservice"
)

// Registration builds the appservice registration the homeserver loads: an exclusive
// namespace for the puppets and the bot, and the flags heirloom's E2EE needs
// (MSC2409 to-device and ephemeral pushes, MSC3202 device lists and OTK counts,
// MSC4190 device management).
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
	domain := regexp.QuoteMeta(cfg.Homeserver.Domain)
	reg.Namespaces.UserIDs.Register(regexp.MustCompile(fmt.Sprintf(`^@%s.+:%s$`, regexp.QuoteMeta(cfg.AppService.PuppetPrefix), domain)), true)
	reg.Namespaces.UserIDs.Register(regexp.MustCompile(fmt.Sprintf(`^@%s:%s$`, regexp.QuoteMeta(cfg.AppService.BotUsername), domain)), true)
	return reg
}

// RegistrationYAML renders the registration as the homeserver reads it.
func RegistrationYAML(cfg *Config) ([]byte, error) {
	out, err := cfg.Registration().YAML()
	if err != nil {
		return nil, err
	}
	return []byte(out), nil
}
