#!/usr/bin/env bash
# Prints the closing lines for a `go test -v` log: each skip with its reason (grouped), then
# "tests: N passed, N failed, N skipped".
set -euo pipefail
log="$1"
passed=$(grep -cE '^\s*--- PASS' "$log" || true)
failed=$(grep -cE '^\s*--- FAIL' "$log" || true)
skipped=$(grep -cE '^\s*--- SKIP' "$log" || true)
if grep -qE '^(FAIL|panic:)' "$log" && [ "$failed" -eq 0 ]; then
  failed=1
fi
echo
# go test -v prints a test's messages ("    file_test.go:12: reason") under its "=== RUN Name" (or
# "=== NAME/CONT Name") header, and its "--- SKIP: Name" line later: pair them by name, and count
# the skips per reason.
awk '
  /^=== (RUN|CONT|NAME|PAUSE)/ { current = $3; next }
  /^[[:space:]]+[^[:space:]]+_test\.go:[0-9]+: / {
    msg = $0; sub(/^[[:space:]]+[^[:space:]]+_test\.go:[0-9]+: /, "", msg); said[current] = msg; next
  }
  /^[[:space:]]*--- SKIP: / {
    name = $0; sub(/^[[:space:]]*--- SKIP: /, "", name); sub(/ .*/, "", name)
    reason = (name in said ? said[name] : "no reason given")
    if (!(reason in count)) { order[++n] = reason; first[reason] = name }
    count[reason]++; next
  }
  END {
    for (i = 1; i <= n; i++) {
      r = order[i]
      if (count[r] == 1) printf "skipped: %s: %s\n", first[r], r
      else printf "skipped: %d tests (%s, ...): %s\n", count[r], first[r], r
    }
  }
' "$log"
echo "tests: ${passed} passed, ${failed} failed, ${skipped} skipped"
