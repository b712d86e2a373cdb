// Command benchtable prints `make bench`'s tables: heirloom's bundle build and import beside the
// reference implementation (matrix-sdk-crypto 0.19.1 as matrix-sdk-crypto-wasm in Node, and
// compiled natively on its memory and SQLite stores) on the same inputs, with the ratios, the peak
// memory of each side measured the same way, and how the measured figures stand against the
// project's targets. It fails when a side's counts differ from heirloom's.
//
// Usage: go run ./scripts/benchtable [-skipped 'side: reason'] RESULTS_DIR
//
// RESULTS_DIR holds one JSON file per side, operation and size (see history/bench_test.go,
// interop/bench/reference.mjs and bench/native/src/main.rs for how each is measured).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

type result struct {
	Impl           string    `json:"impl"`
	Side           string    `json:"side"`
	Op             string    `json:"op"`
	Sessions       int       `json:"sessions"`
	WarmupMS       float64   `json:"warmup_ms"`
	RunsMS         []float64 `json:"runs_ms"`
	MedianMS       float64   `json:"median_ms"`
	RoomKeys       int       `json:"room_keys"`
	Withheld       int       `json:"withheld"`
	BundleBytes    int64     `json:"bundle_bytes"`
	RSSBeforeBytes uint64    `json:"rss_before_bytes"`
	RSSPeakBytes   uint64    `json:"rss_peak_bytes"`
	DecryptMS      float64   `json:"decrypt_ms"`
}

func (r *result) growth() uint64 { return r.RSSPeakBytes - min(r.RSSPeakBytes, r.RSSBeforeBytes) }

var sides = []struct{ key, title string }{
	{"heirloom", "heirloom (SQLite)"},
	{"wasm", "wasm (memory store)"},
	{"native-memory", "native memory store"},
	{"native-sqlite", "native SQLite store"},
}

type key struct {
	side, op string
	n        int
}

func main() {
	skipped := flag.String("skipped", "", "sides left out of this run, and why (printed with the tables)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: benchtable [-skipped 'side: reason'] RESULTS_DIR")
		os.Exit(2)
	}
	files, _ := filepath.Glob(filepath.Join(flag.Arg(0), "*.json"))
	results := map[key]*result{}
	sizeSet := map[int]bool{}
	for _, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		var r result
		if err = json.Unmarshal(data, &r); err != nil || r.Side == "" || r.Sessions == 0 {
			fmt.Fprintf(os.Stderr, "benchtable: %s is not a result (%v)\n", path, err)
			os.Exit(1)
		}
		results[key{r.Side, r.Op, r.Sessions}] = &r
		if r.Side == "heirloom" {
			sizeSet[r.Sessions] = true
		}
	}
	sizes := make([]int, 0, len(sizeSet))
	for n := range sizeSet {
		sizes = append(sizes, n)
	}
	slices.Sort(sizes)
	if len(sizes) == 0 {
		fmt.Fprintln(os.Stderr, "benchtable: no heirloom results")
		os.Exit(1)
	}
	runs := len(results[key{"heirloom", "build", sizes[0]}].RunsMS)

	failed := checkCounts(results, sizes)
	if *skipped != "" {
		fmt.Printf("**SKIPPED: %s**\n\n", *skipped)
	}
	fmt.Printf("Every side: one process per operation and size; one warm-up operation after the setup, discarded,\n")
	fmt.Printf("then %d timed operations: median (min–max) in ms. Ratio = reference time ÷ heirloom time (above 1×:\n", runs)
	fmt.Printf("heirloom is faster).\n\n")
	timeTable(results, sizes, "build", "Build: collect the room's sessions, export, serialise, encrypt (AES-256-CTR + SHA-256)")
	timeTable(results, sizes, "import", "Import: decode the decrypted bundle and store its keys and withheld entries (the store's bundle import)")
	var decrypt []string
	for _, n := range sizes {
		if r := results[key{"wasm", "import", n}]; r != nil && r.DecryptMS > 0 {
			decrypt = append(decrypt, fmt.Sprintf("%d: %.0f ms", n, r.DecryptMS))
		}
	}
	if len(decrypt) > 0 {
		fmt.Printf("wasm's receiveRoomKeyBundle also checks the hash and decrypts the attachment; the decryption alone (Attachment.decrypt) took %s.\n\n",
			strings.Join(decrypt, ", "))
	}
	memoryTable(results, sizes)
	targets(results, sizes)
	if failed {
		fmt.Println("FAIL: the sides' counts differ (see above)")
		os.Exit(1)
	}
}

// checkCounts prints each side's room_keys / withheld and reports whether any differs from heirloom's.
func checkCounts(results map[key]*result, sizes []int) bool {
	failed := false
	fmt.Println("Counts (room_keys / withheld) per side:")
	for _, op := range []string{"build", "import"} {
		for _, n := range sizes {
			want := results[key{"heirloom", op, n}]
			line := []string{}
			for _, s := range sides {
				r := results[key{s.key, op, n}]
				if r == nil {
					continue
				}
				mark := ""
				if want == nil || r.RoomKeys != want.RoomKeys || r.Withheld != want.Withheld {
					mark = " ← DIFFERS"
					failed = true
				}
				line = append(line, fmt.Sprintf("%s %d / %d%s", s.key, r.RoomKeys, r.Withheld, mark))
			}
			fmt.Printf("- %s %d: %s\n", op, n, strings.Join(line, ", "))
		}
	}
	fmt.Println()
	return failed
}

func spread(r *result) string {
	if r == nil || len(r.RunsMS) == 0 {
		return "—"
	}
	return fmt.Sprintf("%s (%s–%s)", ms(r.MedianMS), ms(slices.Min(r.RunsMS)), ms(slices.Max(r.RunsMS)))
}

func ms(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func ratio(ref, ours *result) string {
	if ref == nil || ours == nil || ours.MedianMS == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", ref.MedianMS/ours.MedianMS)
}

func timeTable(results map[key]*result, sizes []int, op, title string) {
	fmt.Printf("%s:\n\n", title)
	fmt.Print("| sessions |")
	for _, s := range sides {
		fmt.Printf(" %s |", s.title)
		if s.key != "heirloom" {
			fmt.Print(" ratio |")
		}
	}
	fmt.Println()
	fmt.Print("|---:|")
	for range len(sides)*2 - 1 {
		fmt.Print("---:|")
	}
	fmt.Println()
	for _, n := range sizes {
		ours := results[key{"heirloom", op, n}]
		fmt.Printf("| %d |", n)
		for _, s := range sides {
			r := results[key{s.key, op, n}]
			fmt.Printf(" %s |", spread(r))
			if s.key != "heirloom" {
				fmt.Printf(" %s |", ratio(r, ours))
			}
		}
		fmt.Println()
	}
	fmt.Println()
}

func mb(b uint64) string { return fmt.Sprintf("%.1f", float64(b)/1e6) }

func memoryTable(results map[key]*result, sizes []int) {
	fmt.Println("Peak memory: the growth of the process's peak RSS (VmHWM) during its first (warm-up) operation over the RSS")
	fmt.Println("just before it (freed memory returned to the OS and the peak mark reset through /proc/self/clear_refs), in MB;")
	fmt.Println("in brackets the process's absolute peak RSS in that operation:")
	fmt.Println()
	fmt.Print("| sessions | operation | bundle |")
	for _, s := range sides {
		fmt.Printf(" %s |", s.title)
	}
	fmt.Println(" heirloom growth ÷ bundle |")
	fmt.Println("|---:|---|---:|---:|---:|---:|---:|---:|")
	for _, n := range sizes {
		for _, op := range []string{"build", "import"} {
			ours := results[key{"heirloom", op, n}]
			fmt.Printf("| %d | %s | %s |", n, op, mb(uint64(ours.BundleBytes)))
			for _, s := range sides {
				if r := results[key{s.key, op, n}]; r != nil {
					fmt.Printf(" %s (%s) |", mb(r.growth()), mb(r.RSSPeakBytes))
				} else {
					fmt.Print(" — |")
				}
			}
			fmt.Printf(" %.2f |\n", float64(ours.growth())/float64(max(ours.BundleBytes, 1)))
		}
	}
	fmt.Println()
}

// targets says, from the figures measured in this run, where heirloom meets the project's targets
// and where it misses them.
func targets(results map[key]*result, sizes []int) {
	fmt.Println("Targets, against this run's medians:")
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	for _, n := range sizes {
		if n < 10_000 {
			continue
		}
		ours := results[key{"heirloom", "import", n}]
		if nm := results[key{"native-memory", "import", n}]; nm != nil {
			fmt.Printf("- import at %d, heirloom on SQLite at least as fast as native on its memory store: %s (%s vs %s ms, %s)\n",
				n, verdict(ours.MedianMS <= nm.MedianMS), ms(ours.MedianMS), ms(nm.MedianMS), ratio(nm, ours))
		} else {
			fmt.Printf("- import at %d against native memory: not measured in this run\n", n)
		}
	}
	for _, n := range sizes {
		ours := results[key{"heirloom", "build", n}]
		for _, side := range []string{"native-memory", "native-sqlite"} {
			if r := results[key{side, "build", n}]; r != nil {
				fmt.Printf("- build at %d ≥ 3× %s: %s (%s)\n", n, side, verdict(r.MedianMS >= 3*ours.MedianMS), ratio(r, ours))
			}
		}
	}
	for _, n := range sizes {
		for _, op := range []string{"build", "import"} {
			r := results[key{"heirloom", op, n}]
			fmt.Printf("- %s at %d, peak RSS growth under one bundle (%s MB): %s (%s MB)\n",
				op, n, mb(uint64(r.BundleBytes)), verdict(r.growth() < uint64(r.BundleBytes)), mb(r.growth()))
		}
	}
	fmt.Println()
}
