#!/usr/bin/env bash
# make fuzz: runs every fuzz target for FUZZTIME each (default 30s); CI runs them briefly.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS="-tags=goolm -buildvcs=false"
fuzztime="${1:-30s}"
targets=(
  "./keybundle FuzzDecode"
  "./keybundle FuzzDecodeMatchesEncodingJSON"
  "./keybundle FuzzHistoryFlagJSON"
  "./keybundle FuzzWriteRoomKeyMatchesEncodingJSON"
  "./e2ee FuzzRoomKeyContent"
  "./e2ee FuzzBundleContent"
  "./e2ee/cryptostore FuzzImportSessionKeyMatchesGoolm"
  "./server FuzzParseTransaction"
)
for t in "${targets[@]}"; do
  read -r pkg name <<<"$t"
  echo "== ${name} (${pkg}) for ${fuzztime}"
  log="$(mktemp)"
  if ! go test "${pkg}" -run '^$' -fuzz "^${name}\$" -fuzztime "${fuzztime}" >"${log}" 2>&1; then
    cat "${log}"
    status=1
  else
    grep -E 'fuzz: elapsed.*execs' "${log}" | tail -n 1
  fi
  rm -f "${log}"
done
exit "${status:-0}"
