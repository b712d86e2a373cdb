#!/usr/bin/env bash
# make bench: heirloom's bundle build and import benchmarks beside the reference implementation
# (matrix-rust-sdk via matrix-sdk-crypto-wasm 18.9.0) on the same sessions, in one run.
#   HEIRLOOM_BENCH_SIZES   session counts (default 1000,10000,100000)
#   HEIRLOOM_BENCH_RUNS    iterations per size (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS="-tags=goolm -buildvcs=false"
OUT="${HEIRLOOM_STATE:-.state}/bench"
rm -rf "${OUT}" && mkdir -p "${OUT}/fixtures"
SIZES="${HEIRLOOM_BENCH_SIZES:-1000,10000,100000}"
RUNS="${HEIRLOOM_BENCH_RUNS:-5}"

echo "== heirloom (go test -bench, SQLite), sizes ${SIZES}, ${RUNS} runs each"
HEIRLOOM_BENCH_SIZES="${SIZES}" HEIRLOOM_BENCH_FIXTURES="$(pwd)/${OUT}/fixtures" \
  go test ./history -run '^$' -bench 'BuildBundle|ImportBundle' -benchmem -benchtime "${RUNS}x" -timeout 60m \
  | tee "${OUT}/go.txt"

echo "== reference (matrix-sdk-crypto-wasm 18.9.0, in-memory store) on the same fixtures"
refs=()
for fixture in "${OUT}"/fixtures/fixture-*.json; do
  n="${fixture##*fixture-}"; n="${n%.json}"
  node interop/bench/reference.mjs --fixture "${fixture}" --runs "${RUNS}" --room '!bench:localhost' \
    >"${OUT}/reference-${n}.json" 2>"${OUT}/reference-${n}.log"
  refs+=("${OUT}/reference-${n}.json")
  cat "${OUT}/reference-${n}.json"
done

echo
go run ./scripts/benchtable "${OUT}/go.txt" "${refs[@]}" | tee "${OUT}/table.md"
