// Package daemon provides heirloom's process lifecycle: loading the config, generating the
// registration, opening the database, checking the homeserver, serving, and shutting down.
package daemon

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/heirloom-matrix/heirloom/config"
	"github.com/heirloom-matrix/heirloom/database"
	"github.com/heirloom-matrix/heirloom/e2ee"
)

// Exit codes, distinct per failure so service managers and scripts can tell them apart.
const (
	ExitOK         = 0
	ExitConfig     = 2
	exitDatabase   = 3
	exitHomeserver = 4
	exitStartup    = 5
	// exitLeaseHeld: another heirloom process holds the SQLite database (only one may run on it).
	exitLeaseHeld = 6
	// exitLeaseLost: the process lost its lease on the database and stopped acting; started
	// again, it waits as a standby.
	exitLeaseLost = 7
)

// WriteExample writes the example config to path unless a file is already there.
func WriteExample(path string, example []byte) int {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Not writing the example config: %v\n", err)
		return ExitConfig
	}
	defer f.Close()
	if _, err = f.Write(example); err != nil {
		fmt.Fprintf(os.Stderr, "Failed to write the example config: %v\n", err)
		return ExitConfig
	}
	fmt.Printf("Wrote the example config to %s: edit it, then run heirloom -g to generate the registration.\n", path)
	return ExitOK
}

// GenerateRegistration fills the config's secrets (saving them) and writes the registration, mode 0600.
func GenerateRegistration(configPath, registrationPath string) int {
	cfg, err := config.Load(configPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Failed to load config: %v\n", err)
		return ExitConfig
	}
	data, err := config.RegistrationYAML(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Failed to build the registration: %v\n", err)
		return ExitConfig
	}
	if err = writeFile0600(registrationPath, data); err != nil {
		fmt.Fprintf(os.Stderr, "Failed to write the registration: %v\n", err)
		return ExitConfig
	}
	fmt.Printf("Wrote the registration to %s: add it to the homeserver's app_service_config_files.\n", registrationPath)
	return ExitOK
}

func writeFile0600(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}

func newLogger(cfg config.Logging) zerolog.Logger {
	// Milliseconds: an operator following one event through heirloom needs them.
	zerolog.TimeFieldFormat = "2006-01-02T15:04:05.000Z07:00"
	level, err := zerolog.ParseLevel(cfg.Level)
	if err != nil {
		level = zerolog.InfoLevel
	}
	var log zerolog.Logger
	if cfg.Format == "json" {
		log = zerolog.New(os.Stdout)
	} else {
		log = zerolog.New(zerolog.ConsoleWriter{Out: os.Stdout, TimeFormat: time.DateTime})
	}
	return log.Level(level).With().Timestamp().Logger()
}

// Run starts heirloom and blocks until SIGINT or SIGTERM, or until the process loses its lease on
// the database. It returns the process exit code.
func Run(configPath string) int {
	// Everything heirloom creates (the SQLite database and its WAL, temporary bundles) holds
	// secrets or key material: readable by heirloom's user only.
	syscall.Umask(0o077)
	e2ee.RegisterContentTypes()
	cfg, err := config.Load(configPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Failed to load config: %v\n", err)
		return ExitConfig
	}
	log := newLogger(cfg.Logging)
	ctx, stop := signal.NotifyContext(log.WithContext(context.Background()), os.Interrupt, syscall.SIGTERM)
	defer stop()

	lse, code := openLease(ctx, cfg.Database)
	if code != ExitOK {
		return code
	}
	defer lse.close()
	db, err := database.OpenFenced(cfg.Database, log, lse.Me().ID)
	if err != nil {
		log.Error().Err(err).Msg("Failed to open the database")
		return exitDatabase
	}
	defer db.Close()
	p, err := build(cfg, db, lse.Lease, log)
	if err != nil {
		return exitStartup
	}
	return p.run(ctx)
}
