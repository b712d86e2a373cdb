#!/usr/bin/env bash
# Prints one closing line for a `go test -v` log: "N passed, N failed, N skipped".
set -euo pipefail
log="$1"
passed=$(grep -cE '^\s*--- PASS' "$log" || true)
failed=$(grep -cE '^\s*--- FAIL' "$log" || true)
skipped=$(grep -cE '^\s*--- SKIP' "$log" || true)
if grep -qE '^(FAIL|panic:)' "$log" && [ "$failed" -eq 0 ]; then
  failed=1
fi
echo
grep -E '^\s*--- SKIP' "$log" | sed -E 's/^\s*--- SKIP: ([^ ]+).*/skipped: \1 (its reason is printed above it)/' || true
echo "tests: ${passed} passed, ${failed} failed, ${skipped} skipped"
