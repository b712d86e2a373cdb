#!/usr/bin/env bash
# make bench: heirloom's bundle build and import beside the reference implementation
# (matrix-sdk-crypto 0.19.1: as matrix-sdk-crypto-wasm 18.9.0 in Node, and compiled natively on its
# memory store and on its SQLite store) on the same inputs, and the send path (a puppet sending into a
# room of js-sdk members through Synapse), in one run.
#   HEIRLOOM_BENCH_SIZES   session counts (default 1000,10000,100000)
#   HEIRLOOM_BENCH_RUNS    timed operations per side and size, after one discarded warm-up (default 5)
#   HEIRLOOM_STATE         where results go (default .state; relative to the repository or absolute)
#   HEIRLOOM_BENCH_SEND    0 leaves out the send-path benchmark (default 1: it starts Synapse and
#                          js-sdk clients as the end-to-end suite does, for a few minutes)
#   HEIRLOOM_BENCH_SEND_MESSAGES, HEIRLOOM_BENCH_SEND_MEMBERS  its size (default 1000 and 20)
# Every side runs one process per operation and size (so its peak RSS is that work's): the setup,
# one warm-up operation (memory is measured there), then the timed operations.
# The native reference needs a nightly Rust toolchain (rustc >= 1.96); without one its columns are
# skipped, loudly. Its build is cached in ~/.cache/heirloom/native-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS="-tags=goolm -buildvcs=false"
STATE="${HEIRLOOM_STATE:-.state}"
[[ "${STATE}" = /* ]] || STATE="$(pwd)/${STATE}"
OUT="${STATE}/bench"
rm -rf "${OUT}" && mkdir -p "${OUT}/fixtures" "${OUT}/results" "${OUT}/logs" "${OUT}/tmp"
SIZES="${HEIRLOOM_BENCH_SIZES:-1000,10000,100000}"
RUNS="${HEIRLOOM_BENCH_RUNS:-5}"
ROOM='!bench:localhost'
NATIVE_TARGET="${HOME}/.cache/heirloom/native-bench"
NATIVE_BIN="${NATIVE_TARGET}/release/heirloom-native-bench"

banner() { printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n!!! %s\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n' "$*" >&2; }

skipped=""
native=1
if ! command -v rustup >/dev/null || ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  skipped="native-memory and native-sqlite: no nightly Rust toolchain (no rustup, or no nightly in rustup toolchain list; matrix-sdk-crypto 0.19.1 needs rustc >= 1.96: rustup toolchain install nightly)"
  native=0
  banner "SKIPPING THE NATIVE REFERENCE: ${skipped}"
else
  echo "== native reference: cargo +nightly build --release ($(rustc +nightly --version))"
  (cd bench/native && CARGO_TARGET_DIR="${NATIVE_TARGET}" nice -n 10 cargo +nightly build --release --locked --quiet)
fi

echo "== heirloom: go test -c ./history"
go test -c -o "${OUT}/history.test" ./history

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
echo "== load average before: $(loadavg) (this machine's cores are shared: a busy neighbour stretches wall times)"
for n in ${SIZES//,/ }; do
  echo "== ${n} sessions (load average $(loadavg))"
  for op in build import; do
    bench=BuildBundle; [[ ${op} = import ]] && bench=ImportBundle
    (cd history && HEIRLOOM_BENCH_SIZES="${n}" HEIRLOOM_BENCH_FIXTURES="${OUT}/fixtures" \
      HEIRLOOM_BENCH_RESULTS="${OUT}/results" TMPDIR="${OUT}/tmp" \
      "${OUT}/history.test" -test.run '^$' -test.bench "^Benchmark${bench}\$" -test.benchtime "${RUNS}x" -test.timeout 60m) \
      | tee -a "${OUT}/go.txt" | grep '^Benchmark' || { echo "heirloom ${op} ${n} failed: ${OUT}/go.txt"; exit 1; }
  done
  echo "   wasm build, import"
  node --expose-gc interop/bench/reference.mjs --op build --fixture "${OUT}/fixtures/fixture-${n}.json" --room "${ROOM}" \
    --runs "${RUNS}" >"${OUT}/results/wasm-build-${n}.json" 2>"${OUT}/logs/wasm-build-${n}.log" \
    || { echo "wasm build ${n} failed:"; tail "${OUT}/logs/wasm-build-${n}.log"; exit 1; }
  node --expose-gc interop/bench/reference.mjs --op import --bundle "${OUT}/fixtures/bundle-${n}.json" --room "${ROOM}" \
    --runs "${RUNS}" >"${OUT}/results/wasm-import-${n}.json" 2>"${OUT}/logs/wasm-import-${n}.log" \
    || { echo "wasm import ${n} failed:"; tail "${OUT}/logs/wasm-import-${n}.log"; exit 1; }
  if ((native)); then
    for store in memory sqlite; do
      echo "   native ${store}: build, import"
      "${NATIVE_BIN}" --op build --store "${store}" --fixture "${OUT}/fixtures/fixture-${n}.json" --room "${ROOM}" \
        --runs "${RUNS}" --dir "${OUT}/tmp" >"${OUT}/results/native-${store}-build-${n}.json" 2>"${OUT}/logs/native-${store}-build-${n}.log" \
        || { echo "native ${store} build ${n} failed:"; tail "${OUT}/logs/native-${store}-build-${n}.log"; exit 1; }
      "${NATIVE_BIN}" --op import --store "${store}" --bundle "${OUT}/fixtures/bundle-${n}.json" --room "${ROOM}" \
        --runs "${RUNS}" --dir "${OUT}/tmp" >"${OUT}/results/native-${store}-import-${n}.json" 2>"${OUT}/logs/native-${store}-import-${n}.log" \
        || { echo "native ${store} import ${n} failed:"; tail "${OUT}/logs/native-${store}-import-${n}.log"; exit 1; }
    done
  fi
done

if [[ "${HEIRLOOM_BENCH_SEND:-1}" != 0 ]]; then
  echo "== send path: a puppet sending ${HEIRLOOM_BENCH_SEND_MESSAGES:-1000} messages into a room of ${HEIRLOOM_BENCH_SEND_MEMBERS:-20} js-sdk members, through Synapse (load average $(loadavg))"
  (cd e2e && HEIRLOOM_BENCH_RESULTS="${OUT}/results" go test -count=1 -run '^$' -bench '^BenchmarkSendPath$' -benchtime 1x -timeout 60m -v .) \
    >"${OUT}/logs/send.log" 2>&1 || { echo "send-path benchmark failed:"; tail -30 "${OUT}/logs/send.log"; exit 1; }
  grep -E 'sendpath_test.go' "${OUT}/logs/send.log" || true
  echo "== send path, heirloom's part alone: the same send with a homeserver that answers at once (e2ee BenchmarkSendMessage)"
  go test -count=1 -run '^$' -bench '^BenchmarkSendMessage$' -benchtime 2000x ./e2ee 2>&1 | tee "${OUT}/logs/send-alone.log" | grep -E '^Benchmark' \
    || { echo "BenchmarkSendMessage failed:"; tail -20 "${OUT}/logs/send-alone.log"; exit 1; }
else
  skipped="${skipped:+${skipped}; }send path: HEIRLOOM_BENCH_SEND=0"
  banner "SKIPPING THE SEND-PATH BENCHMARK (HEIRLOOM_BENCH_SEND=0)"
fi

echo "== load average after: $(loadavg)"
echo
status=0
go run ./scripts/benchtable ${skipped:+-skipped "${skipped}"} "${OUT}/results" | tee "${OUT}/table.md" || status=$?
[[ -z "${skipped}" ]] || banner "LEFT OUT OF THIS RUN: ${skipped}"
exit "${status}"
