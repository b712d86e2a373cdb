#!/usr/bin/env bash
# Mutation check of heirloom's security rules (make mutants): takes each guard of
# scripts/mutants.txt out of the code in turn, runs the tests the list names for it (in the packages it
# names, whose whole unit tests pass first, unmutated),
# puts the code back, and fails unless every mutant is caught by the test the list names for it.
#
#   scripts/mutants.sh [--e2e] [--only ID,ID...] [--list FILE]
#
# --e2e also runs the end-to-end tests the list names for a mutant (real Synapse: make deps first;
# minutes per mutant). --only runs the mutants given. The working tree's files are put back after
# each mutant, and on exit however the script ends (but for kill -9).
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS="${GOFLAGS:--tags=goolm -buildvcs=false}"

list=scripts/mutants.txt
e2e=false
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --e2e) e2e=true ;;
    --only) only="$2"; shift ;;
    --list) list="$2"; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

work=$(mktemp -d)
backups="$work/backups"
mkdir -p "$backups"
# backup keeps a file's content before a mutant changes it (once per mutant); restore puts back
# every file kept.
backup() {
  touch "$backups/files"
  grep -qxF "$1" "$backups/files" && return
  cp "$1" "$backups/$(wc -l < "$backups/files")"
  echo "$1" >> "$backups/files"
}
restore() {
  local i=0 file
  [ -f "$backups/files" ] || return 0
  while IFS= read -r file; do
    cp "$backups/$i" "$file"
    i=$((i + 1))
  done < "$backups/files"
  find "$backups" -mindepth 1 -delete
}
trap 'restore; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# edit applies (or, with --check, only looks for) one mutation: the original snippet must be on
# exactly one line of the file.
edit() {
  python3 - "$@" <<'EOF'
import sys
check = sys.argv[1] == "--check"
if check:
    sys.argv.pop(1)
path, original, replacement = sys.argv[1:4]
with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
hits = [i for i, line in enumerate(lines) if original in line]
if len(hits) != 1:
    where = ", ".join(str(i + 1) for i in hits) or "no line"
    sys.exit(f"{path}: the snippet is on {where}, not on exactly one line: {original!r}")
if not check:
    i = hits[0]
    lines[i] = lines[i].replace(original, replacement, 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
EOF
}

# The list, without comments and blank lines, one edit per line.
grep -vE '^(#|[[:space:]]*$)' "$list" > "$work/edits"
ids=()
while IFS=$'\t' read -r id file original replacement packages tests e2etests rest; do
  if [ -z "${tests:-}" ] || [ -z "${e2etests:-}" ] || [ -n "${rest:-}" ]; then
    echo "$list: the line of $id does not have the 7 tab-separated fields" >&2
    exit 2
  fi
  if [ -n "$only" ] && [[ ",$only," != *",$id,"* ]]; then
    continue
  fi
  edit --check "$file" "$original" "$replacement" || exit 2
  [[ " ${ids[*]-} " == *" $id "* ]] || ids+=("$id")
done < "$work/edits"
if [ ${#ids[@]} -eq 0 ]; then
  echo "no mutant selected" >&2
  exit 2
fi

# field prints field n (1-based) of the first edit of a mutant.
field() {
  awk -F'\t' -v id="$1" -v n="$2" '$1 == id { print $n; exit }' "$work/edits"
}

# failures prints the names of the tests that failed in a go test -v log.
failures() {
  sed -nE 's/^[[:space:]]*--- FAIL: ([^ ]+).*/\1/p' "$1" | sort -u
}

start=$(date +%s)
packages=$(for id in "${ids[@]}"; do field "$id" 5; done | tr ',' '\n' | sort -u | tr '\n' ' ')
echo "== baseline: the unit tests of $packages on the code as it is"
if ! go test -count=1 $packages > "$work/baseline.log" 2>&1; then
  cat "$work/baseline.log"
  echo "the tests fail without any mutant: fix that first" >&2
  exit 1
fi

results=()
bad=0
for id in "${ids[@]}"; do
  t0=$(date +%s)
  pkgs=$(field "$id" 5 | tr ',' ' ')
  want=$(field "$id" 6)
  e2ewant=$(field "$id" 7)
  while IFS=$'\t' read -r eid file original replacement _; do
    [ "$eid" = "$id" ] || continue
    backup "$file"
    edit "$file" "$original" "$replacement"
  done < "$work/edits"
  log="$work/$id.log"
  status=KILLED
  by=""
  if go test -count=1 -timeout 10m -v -run "$want" $pkgs > "$log" 2>&1; then
    status=SURVIVED
  elif grep -qE '\[(build failed|setup failed)\]' "$log"; then
    status=BROKEN
    by="the mutant does not build: $(grep -m1 -E '\.go:[0-9]+:[0-9]+: ' "$log" || true)"
  else
    by=$(failures "$log" | grep -E "$want" | grep -v / | tr '\n' ' ' || true)
    if [ -z "$by" ]; then
      by=$(failures "$log" | grep -E "$want" | tr '\n' ' ' || true)
    fi
    if [ -z "$by" ]; then
      status=MISSED
      by="not by $want; failed: $(failures "$log" | grep -v / | tr '\n' ' ')"
    else
      others=$(failures "$log" | grep -v / | grep -vcE "$want" || true)
      [ "$others" -eq 0 ] || by="$by(and $others more)"
    fi
  fi
  if [ "$status" = KILLED ] && $e2e && [ "$e2ewant" != "-" ]; then
    if go test -count=1 -timeout 40m -v ./e2e -run "$e2ewant" > "$work/$id.e2e.log" 2>&1; then
      status=E2E-SURVIVED
    else
      by="$by + e2e $(failures "$work/$id.e2e.log" | grep -v / | tr '\n' ' ')"
    fi
  fi
  restore
  [ "$status" = KILLED ] || { bad=$((bad + 1)); echo "--- $id: $status"; tail -20 "$log"; }
  results+=("$(printf '%-8s %-12s %4ss  %s' "$id" "$status" "$(($(date +%s) - t0))" "$by")")
  echo "${results[-1]}"
done

echo
echo "== mutants ($list)"
printf '%-8s %-12s %5s  %s\n' id result time "caught by"
printf '%s\n' "${results[@]}"
echo "mutants: ${#ids[@]}, not caught as listed: $bad, wall time: $(($(date +%s) - start)) s"
[ "$bad" -eq 0 ]
