// Command heirloom is a Matrix application service that makes a bridge's puppets end-to-end
// encrypted users and shares encrypted room history with invitees (MSC4268).
package main

import (
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/heirloom-matrix/heirloom/daemon"
)

//go:embed config.example.yaml
var exampleConfig []byte

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run parses the command line and does what it asks, returning the exit code.
func run(args []string, stderr io.Writer) int {
	flags := flag.NewFlagSet("heirloom", flag.ContinueOnError)
	flags.SetOutput(stderr)
	configPath := flags.String("c", "config.yaml", "path to the config file")
	registrationPath := flags.String("r", "registration.yaml", "path to the registration file (with -g)")
	generate := flags.Bool("g", false, "write the appservice registration to -r and exit")
	example := flags.Bool("e", false, "write the example config to -c (if it does not exist) and exit")
	if err := flags.Parse(args); errors.Is(err, flag.ErrHelp) {
		return daemon.ExitOK
	} else if err != nil {
		return daemon.ExitConfig
	}

	if !*example && noConfig(*configPath) {
		fmt.Fprint(stderr, firstSteps(*configPath, *registrationPath))
		fmt.Fprintf(stderr, "heirloom exited with code %d\n", daemon.ExitConfig)
		return daemon.ExitConfig
	}
	switch {
	case *example:
		return daemon.WriteExample(*configPath, exampleConfig)
	case *generate:
		return daemon.GenerateRegistration(*configPath, *registrationPath)
	default:
		code := daemon.Run(*configPath)
		if code != 0 {
			fmt.Fprintf(stderr, "heirloom exited with code %d\n", code)
		}
		return code
	}
}

// noConfig reports whether there is no file at the config path.
func noConfig(path string) bool {
	_, err := os.Stat(path)
	return errors.Is(err, fs.ErrNotExist)
}

// firstSteps tells someone who runs heirloom without a config how to set it up.
func firstSteps(configPath, registrationPath string) string {
	c, r := shellQuote(configPath), shellQuote(registrationPath)
	return fmt.Sprintf(`There is no config file at %s. To set heirloom up:
  1. heirloom -e -c %s
     writes the commented example config there;
  2. edit it: at least homeserver.address, homeserver.domain and appservice.address
     (heirloom refuses to start on the example's placeholders and names the key);
  3. heirloom -g -c %s -r %s
     fills in the generated secrets and writes the appservice registration: add it to the
     homeserver's app_service_config_files and restart the homeserver;
  4. heirloom -c %s
     starts heirloom.
`, configPath, c, c, r, c)
}

// shellQuote quotes a path for a shell command line when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/+=:@,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
