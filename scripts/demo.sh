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

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

config="${DEMO}/config.yaml"
if [[ ! -f "${config}" ]]; then
  step "Writing ${config}"
  ./heirloom -e -c "${config}" >/dev/null
  sed -i \
    -e "s#address: https://matrix.example.com#address: http://127.0.0.1:${PORT_HS}#" \
    -e "s#domain: example.com#domain: localhost#" \
    -e "s#address: http://localhost:29340#address: http://127.0.0.1:${PORT_AS}#" \
    -e "s#port: 29340#port: ${PORT_AS}#" \
    -e "s#uri: file:heirloom.db#uri: file:${DEMO}/heirloom.db#" \
    "${config}"
fi
step "Generating the registration"
./heirloom -g -c "${config}" -r "${DEMO}/registration.yaml"

# Stop a heirloom left from an earlier run first, and restart Synapse only if its config changed:
# Synapse may drop to-device messages it tries to push while the appservice is down or restarting
# (element-hq/synapse#14710), so the two are never restarted around each other needlessly.
if [[ -f "${DEMO}/heirloom.pid" ]] && kill -0 "$(cat "${DEMO}/heirloom.pid")" 2>/dev/null; then
  step "Stopping the heirloom from an earlier run"
  kill "$(cat "${DEMO}/heirloom.pid")"
  while kill -0 "$(cat "${DEMO}/heirloom.pid")" 2>/dev/null; do sleep 0.1; done
fi
step "Starting Synapse (pinned, in ${STATE}/venv) with heirloom registered"
export SYNAPSE_PORT="${PORT_HS}" SYNAPSE_REGISTRATION="${DEMO}/registration.yaml" SYNAPSE_SHARED_SECRET="${SECRET}"
if scripts/synapse.sh start 2>&1 | tee /dev/stderr | grep -q "run '.*restart'"; then
  scripts/synapse.sh restart
fi

step "Starting heirloom"
nohup ./heirloom -c "${config}" >"${DEMO}/heirloom.log" 2>&1 &
echo $! >"${DEMO}/heirloom.pid"
api_secret="$(sed -n 's/^ *shared_secret: *//p' "${config}")"
for _ in $(seq 1 100); do
  if curl -fsS -H "Authorization: Bearer ${api_secret}" "http://127.0.0.1:${PORT_AS}/_heirloom/v1/status" >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$(cat "${DEMO}/heirloom.pid")" 2>/dev/null; then
    echo "heirloom exited; its log:"; tail -20 "${DEMO}/heirloom.log"; exit 1
  fi
  sleep 0.2
done

step "History sharing, both directions"
node interop/demo.mjs --homeserver "http://127.0.0.1:${PORT_HS}" --shared-secret "${SECRET}" \
  --heirloom "http://127.0.0.1:${PORT_AS}" --api-secret "${api_secret}"

echo
echo "Demo finished in $(( $(date +%s) - start )) s. Synapse: http://127.0.0.1:${PORT_HS}, heirloom: http://127.0.0.1:${PORT_AS}"
echo "Logs: ${DEMO}/heirloom.log, $(scripts/synapse.sh status >/dev/null 2>&1 && echo "${STATE}/synapse/homeserver.log"). Stop both with: make stop"
