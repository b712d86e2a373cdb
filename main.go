// Command heirloom is a Matrix application service that makes a bridge's puppets end-to-end
// encrypted users and shares encrypted room history with invitees (MSC4268).
package main

import (
	_ "embed"
	"flag"
	"fmt"
	"os"

	"github.com/heirloom-matrix/heirloom/daemon"
)

//go:embed config.example.yaml
var exampleConfig []byte

func main() {
	configPath := flag.String("c", "config.yaml", "path to the config file")
	registrationPath := flag.String("r", "registration.yaml", "path to the registration file (with -g)")
	generate := flag.Bool("g", false, "write the appservice registration to -r and exit")
	example := flag.Bool("e", false, "write the example config to -c (if it does not exist) and exit")
	flag.Parse()

	switch {
	case *example:
		os.Exit(daemon.WriteExample(*configPath, exampleConfig))
	case *generate:
		os.Exit(daemon.GenerateRegistration(*configPath, *registrationPath))
	default:
		code := daemon.Run(*configPath)
		if code != 0 {
			fmt.Fprintf(os.Stderr, "heirloom exited with code %d\n", code)
		}
		os.Exit(code)
	}
}
