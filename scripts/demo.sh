#!/usr/bin/env bash
# make demo: brings up a local Synapse with heirloom registered (SQLite), then shows history
# sharing both ways with Element-grade clients (matrix-js-sdk + Rust crypto). Synapse and heirloom
# keep running afterwards; `make stop` stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
STATE="${HEIRLOOM_STATE:-${ROOT}/.state}"
DEMO="${STATE}/demo"
PORT_HS="${SYNAPSE_PORT:-8008}"
PORT_AS="${HEIRLOOM_PORT:-29340}"
SECRET="${SYNAPSE_SHARED_SECRET:-heirloom-dev-registration-secret}"
mkdir -p "${DEMO}"
start=$(date +%s)

# shellcheck source=scripts/demo-lib.sh
source scripts/demo-lib.sh

config="${DEMO}/config.yaml"
write_config "${config}" "${PORT_AS}" "${DEMO}/heirloom.db"
step "Generating the registration"
./heirloom -g -c "${config}" -r "${DEMO}/registration.yaml"

step "Stopping a heirloom left from an earlier run"
stop_pid "${DEMO}/heirloom.pid"
step "Starting Synapse (pinned, in ${STATE}/venv) with heirloom registered"
start_synapse "${DEMO}/registration.yaml" "${SECRET}" "${PORT_HS}"

step "Starting heirloom"
api_secret="$(start_heirloom "${config}" "${DEMO}/heirloom.log" "${DEMO}/heirloom.pid" "${PORT_AS}")"

step "History sharing, both directions"
node interop/demo.mjs --homeserver "http://127.0.0.1:${PORT_HS}" --shared-secret "${SECRET}" \
  --heirloom "http://127.0.0.1:${PORT_AS}" --api-secret "${api_secret}"

echo
echo "Demo finished in $(( $(date +%s) - start )) s. Synapse: http://127.0.0.1:${PORT_HS}, heirloom: http://127.0.0.1:${PORT_AS}"
echo "Logs: ${DEMO}/heirloom.log, $(scripts/synapse.sh status >/dev/null 2>&1 && echo "${STATE}/synapse/homeserver.log"). Stop both with: make stop"
