// Command benchtable prints `make bench`'s table: heirloom's Go benchmark figures beside the
// reference implementation's (matrix-sdk-crypto-wasm) on the same sessions, with the ratios.
//
// Usage: go run ./scripts/benchtable GO_BENCH_OUTPUT REFERENCE_JSON...
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

type goFigures struct {
	buildMS, importMS     float64
	bundleBytes           float64
	buildPeak, importPeak float64
}

type refFigures struct {
	Sessions int `json:"sessions"`
	ImportMS struct {
		Median float64   `json:"median"`
		Runs   []float64 `json:"runs"`
	} `json:"import_ms"`
	BuildMS struct {
		Median float64 `json:"median"`
	} `json:"build_ms"`
	BundleBytes float64 `json:"bundle_bytes"`
	PeakRSS     float64 `json:"peak_rss_bytes"`
}

var benchLine = regexp.MustCompile(`^Benchmark(BuildBundle|ImportBundle)/sessions=(\d+)\S*\s+\d+\s+(.*)$`)

// metric returns the value before the unit in a benchmark line's metrics.
func metric(fields []string, unit string) float64 {
	for i := 1; i < len(fields); i++ {
		if fields[i] == unit {
			v, _ := strconv.ParseFloat(fields[i-1], 64)
			return v
		}
	}
	return 0
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchtable GO_BENCH_OUTPUT REFERENCE_JSON...")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	figures := map[int]*goFigures{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[2])
		g := figures[n]
		if g == nil {
			g = &goFigures{}
			figures[n] = g
		}
		fields := strings.Fields(m[3])
		if m[1] == "BuildBundle" {
			g.buildMS, g.bundleBytes, g.buildPeak = metric(fields, "median-ms"), metric(fields, "bundle-bytes"), metric(fields, "peak-heap-bytes")
		} else {
			g.importMS, g.importPeak = metric(fields, "median-ms"), metric(fields, "peak-heap-bytes")
		}
	}
	refs := map[int]refFigures{}
	for _, path := range os.Args[2:] {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		var r refFigures
		if json.Unmarshal(data, &r) == nil && r.Sessions > 0 {
			refs[r.Sessions] = r
		}
	}
	sizes := make([]int, 0, len(figures))
	for n := range figures {
		sizes = append(sizes, n)
	}
	sort.Ints(sizes)
	mb := func(b float64) string { return fmt.Sprintf("%.1f MB", b/1e6) }
	ratio := func(ref, ours float64) string {
		if ref == 0 || ours == 0 {
			return "—"
		}
		return fmt.Sprintf("%.1f×", ref/ours)
	}
	fmt.Println("| sessions | heirloom build+encrypt | reference build | ratio | heirloom import | reference import (first run) | ratio | bundle (heirloom / ref) | heirloom peak heap: build / import (× bundle) | reference peak RSS |")
	fmt.Println("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, n := range sizes {
		g, r := figures[n], refs[n]
		firstImport := 0.0
		if len(r.ImportMS.Runs) > 0 {
			firstImport = r.ImportMS.Runs[0]
		}
		fmt.Printf("| %d | %.1f ms | %.1f ms | %s | %.1f ms | %.1f ms (%.0f ms) | %s | %s / %s | %s / %s (%.2f×) | %s |\n",
			n, g.buildMS, r.BuildMS.Median, ratio(r.BuildMS.Median, g.buildMS),
			g.importMS, r.ImportMS.Median, firstImport, ratio(r.ImportMS.Median, g.importMS),
			mb(g.bundleBytes), mb(r.BundleBytes), mb(g.buildPeak), mb(g.importPeak), g.buildPeak/max(g.bundleBytes, 1), mb(r.PeakRSS))
	}
	fmt.Println()
	fmt.Println("Medians; ratio = reference time / heirloom time (higher is faster for heirloom). heirloom works on SQLite,")
	fmt.Println("the reference on its in-memory store. Targets at 10,000 sessions: build ≥ 10×, import ≥ 2.5×, peak ≤ 3× bundle.")
}
