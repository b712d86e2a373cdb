// Command registration rewrites the committed registration.yaml from config.example.yaml, the way
// `heirloom -g` renders a registration but with the example's placeholder tokens ("generate")
// kept and without validating the example's placeholders. Run it through `make registration`;
// config's TestCommittedRegistrationMatchesExample fails while the committed file is stale.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/heirloom-matrix/heirloom/config"
)

func main() {
	example := flag.String("c", "config.example.yaml", "the example config")
	out := flag.String("r", "registration.yaml", "the registration to write")
	flag.Parse()
	if err := run(*example, *out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(examplePath, outPath string) error {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		return fmt.Errorf("failed to read the example config: %w", err)
	}
	cfg, err := config.Parse(data)
	if err != nil {
		return fmt.Errorf("failed to parse the example config: %w", err)
	}
	reg, err := config.RegistrationYAML(cfg)
	if err != nil {
		return fmt.Errorf("failed to render the registration: %w", err)
	}
	if err = os.WriteFile(outPath, reg, 0o644); err != nil {
		return fmt.Errorf("failed to write %s: %w", outPath, err)
	}
	fmt.Printf("Wrote %s from %s\n", outPath, examplePath)
	return nil
}
