#!/usr/bin/env bash
# Local Synapse homeserver for heirloom's development and tests (loopback only, SQLite).
#
# Usage: scripts/synapse.sh COMMAND [ARGS]
#   install                    create the virtualenv and install the pinned Synapse (quick when done)
#   start                      install if needed, write the config, start Synapse in the background,
#                              wait for GET /health; "already running" is a success
#   stop                       SIGTERM, SIGKILL after 20 s, remove the pid file; fine if not running
#   restart                    stop, then start (to apply a changed config or registration)
#   status                     print "running ..." (exit 0) or "not running" (exit 1)
#   register USER PASSWORD [--admin]
#                              register a local user with the shared-secret admin API and print
#                              Synapse's JSON answer (user_id, access_token, device_id, home_server)
#   url                        print the base URL: http://127.0.0.1:$SYNAPSE_PORT (no trailing slash)
#   logs [N]                   print the last N (default 100) lines of the homeserver log
#   reset                      stop, then delete the data directory (keys, database, media)
#
# Environment:
#   HEIRLOOM_STATE           state directory                            (default: <repo>/.state)
#   SYNAPSE_PORT             client listener port, bound to 127.0.0.1   (default: 8008)
#   SYNAPSE_DATA             data directory                             (default: $HEIRLOOM_STATE/synapse)
#   SYNAPSE_REGISTRATION     appservice registration file(s) to load:   (optional)
#                            one path, or several separated by ':'
#   SYNAPSE_SHARED_SECRET    registration_shared_secret                 (default: a fixed dev value)
#   SYNAPSE_MAX_UPLOAD       max_upload_size                            (default: 100M)
#   SYNAPSE_START_TIMEOUT    seconds to wait for /health                (default: 120)
#   SYNAPSE_PYTHON           interpreter that creates the venv          (default: python3)
#   SYNAPSE_WHEELHOUSE       local wheel cache for the pinned set       (default: ~/.cache/heirloom/...)
#
# The virtualenv is $HEIRLOOM_STATE/venv. Besides pip's own cache (left on), the downloaded wheels
# are kept in a per-machine wheelhouse so that a fresh clone installs without the network.
set -euo pipefail

readonly SYNAPSE_VERSION="1.163.2"
readonly SYNAPSE_SPEC="matrix-synapse==${SYNAPSE_VERSION}"

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "${SCRIPT_DIR}/.." && pwd -P)"

# abspath PATH: absolute, normalised PATH (relative to the caller's cwd); need not exist.
abspath() { realpath -m -- "$1"; }

STATE_DIR="$(abspath "${HEIRLOOM_STATE:-${REPO_ROOT}/.state}")"
VENV="${STATE_DIR}/venv"
VENV_PY="${VENV}/bin/python"
STAMP="${VENV}/.heirloom-synapse-stamp"

PORT="${SYNAPSE_PORT:-8008}"
DATA="$(abspath "${SYNAPSE_DATA:-${STATE_DIR}/synapse}")"
SHARED_SECRET="${SYNAPSE_SHARED_SECRET:-heirloom-dev-registration-secret}"
MAX_UPLOAD="${SYNAPSE_MAX_UPLOAD:-100M}"
START_TIMEOUT="${SYNAPSE_START_TIMEOUT:-120}"
PYTHON="${SYNAPSE_PYTHON:-python3}"
REGISTRATIONS=()
if [[ -n "${SYNAPSE_REGISTRATION:-}" ]]; then
  IFS=':' read -r -a _regs <<<"${SYNAPSE_REGISTRATION}"
  for _reg in "${_regs[@]}"; do
    if [[ -n "${_reg}" ]]; then REGISTRATIONS+=("$(abspath "${_reg}")"); fi
  done
  unset _regs _reg
fi

CONFIG="${DATA}/homeserver.yaml"
LOG_CONFIG="${DATA}/log.config"
LOG_FILE="${DATA}/homeserver.log"
CONSOLE_LOG="${DATA}/console.log"
PID_FILE="${DATA}/synapse.pid"
SIGNING_KEY="${DATA}/signing.key"
MARKER="${DATA}/.heirloom-synapse"
BASE_URL="http://127.0.0.1:${PORT}"

log() { printf 'synapse.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,/^set -euo pipefail$/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

# yq VALUE: VALUE as a single-quoted YAML scalar.
yq() { local q="'"; printf "'%s'" "${1//${q}/${q}${q}}"; }

validate_env() {
  if ! [[ "${PORT}" =~ ^[1-9][0-9]{0,4}$ ]] || (( PORT > 65535 )); then
    die "SYNAPSE_PORT must be a port number, got '${PORT}'"
  fi
  [[ "${START_TIMEOUT}" =~ ^[0-9]+$ ]] \
    || die "SYNAPSE_START_TIMEOUT must be a whole number of seconds, got '${START_TIMEOUT}'"
  [[ "${MAX_UPLOAD}" =~ ^[0-9]+[KMGkmg]?$ ]] \
    || die "SYNAPSE_MAX_UPLOAD must look like 100M, got '${MAX_UPLOAD}'"
  [[ -n "${SHARED_SECRET}" ]] || die "SYNAPSE_SHARED_SECRET must not be empty"
  local reg
  for reg in "${REGISTRATIONS[@]}"; do
    [[ -f "${reg}" ]] || die "SYNAPSE_REGISTRATION names a missing file: ${reg}"
  done
}

# ------------------------------------------------------------------------------------ install

installed() {
  [[ -x "${VENV_PY}" && -f "${STAMP}" && "$(<"${STAMP}")" == "${SYNAPSE_SPEC}" ]]
}

# pip_venv SUBCOMMAND ARGS...: the venv's pip, quiet and non-interactive.
pip_venv() {
  local sub="$1"; shift
  "${VENV_PY}" -m pip "${sub}" --disable-pip-version-check --no-input --progress-bar off -q "$@" </dev/null
}

do_install() {
  installed && return 0
  mkdir -p "${STATE_DIR}"
  # Serialise concurrent installs (parallel test processes); fd 8 is closed for children.
  exec 8>"${STATE_DIR}/.install.lock"
  flock 8
  if installed; then exec 8>&-; return 0; fi

  command -v "${PYTHON}" >/dev/null 2>&1 || die "no '${PYTHON}' on PATH (set SYNAPSE_PYTHON)"
  "${PYTHON}" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "Synapse ${SYNAPSE_VERSION} needs Python >= 3.10 ('${PYTHON}' is older; set SYNAPSE_PYTHON)"
  if [[ ! -x "${VENV_PY}" ]] || ! "${VENV_PY}" -c 'import sys' >/dev/null 2>&1; then
    log "creating virtualenv ${VENV}"
    rm -rf -- "${VENV}"
    "${PYTHON}" -m venv "${VENV}" </dev/null \
      || die "'${PYTHON} -m venv' failed (on Debian: apt-get install python3-venv)"
  fi
  rm -f -- "${STAMP}"

  # The registry here sends no HTTP caching headers, so pip's HTTP cache keeps nothing; a
  # wheelhouse per machine (and per interpreter ABI) makes re-installs independent of the network.
  local tag wheelhouse
  tag="$("${VENV_PY}" -c 'import sys, sysconfig; print(sys.implementation.cache_tag + "-" + sysconfig.get_platform())')"
  wheelhouse="${SYNAPSE_WHEELHOUSE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/heirloom/wheels-synapse-${SYNAPSE_VERSION}-${tag}}"
  if [[ "$(cat "${wheelhouse}/.complete" 2>/dev/null || true)" != "${SYNAPSE_SPEC}" ]]; then
    log "downloading ${SYNAPSE_SPEC} and its dependencies"
    local tmp="${wheelhouse}.tmp.$$"
    rm -rf -- "${tmp}"
    if mkdir -p "${tmp}" && pip_venv wheel --wheel-dir "${tmp}" "${SYNAPSE_SPEC}"; then
      printf '%s\n' "${SYNAPSE_SPEC}" >"${tmp}/.complete"
      rm -rf -- "${wheelhouse}"
      mv -- "${tmp}" "${wheelhouse}" || true
    else
      log "warning: could not fill the wheelhouse ${wheelhouse}; installing from the index"
    fi
    rm -rf -- "${tmp}"
  fi
  log "installing ${SYNAPSE_SPEC} into ${VENV}"
  if ! { [[ -f "${wheelhouse}/.complete" ]] \
         && pip_venv install --no-index --find-links "${wheelhouse}" "${SYNAPSE_SPEC}"; }; then
    [[ -f "${wheelhouse}/.complete" ]] && log "warning: install from the wheelhouse failed; trying the index"
    pip_venv install "${SYNAPSE_SPEC}" || die "pip install ${SYNAPSE_SPEC} failed"
  fi

  local got
  got="$("${VENV_PY}" -c 'import importlib.metadata as m; print(m.version("matrix-synapse"))')" \
    || die "synapse does not import after the install"
  [[ "${got}" == "${SYNAPSE_VERSION}" ]] || die "installed synapse is ${got}, expected ${SYNAPSE_VERSION}"
  printf '%s\n' "${SYNAPSE_SPEC}" >"${STAMP}"
  exec 8>&-
  log "installed Synapse ${SYNAPSE_VERSION}"
}

# ------------------------------------------------------------------------------------ process

# pid_is_ours PID: PID is a live Synapse running on this data directory's config.
pid_is_ours() {
  local pid="$1" cmdline
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  cmdline="$( { tr '\0' '\n' <"/proc/${pid}/cmdline"; } 2>/dev/null )" || return 1
  # Exact argv lines: "synapse.app.homeserver" and the config path (a zombie has no cmdline).
  grep -qxF -- "synapse.app.homeserver" <<<"${cmdline}" && grep -qxF -- "${CONFIG}" <<<"${cmdline}"
}

# find_pid: print the PID of the Synapse on this data directory (pid file first, then a scan
# of /proc for this exact config path, in case the pid file was lost); fail if there is none.
find_pid() {
  local pid=""
  if [[ -f "${PID_FILE}" ]]; then
    pid="$(<"${PID_FILE}")" || pid=""
    if pid_is_ours "${pid}"; then printf '%s\n' "${pid}"; return 0; fi
  fi
  local f
  while IFS= read -r f; do
    pid="${f#/proc/}"; pid="${pid%/cmdline}"
    if pid_is_ours "${pid}"; then printf '%s\n' "${pid}"; return 0; fi
  done < <(grep -lsxzF -- "${CONFIG}" /proc/[0-9]*/cmdline 2>/dev/null || true)
  return 1
}

# port_busy: something accepts connections on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/${PORT}") 2>/dev/null; }

healthy() {
  [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "${BASE_URL}/health" 2>/dev/null || true)" == "200" ]]
}

lock_data() {
  mkdir -p "${DATA}"
  exec 9>"${DATA}/.lock"
  flock 9
}

show_log_tail() {
  local f
  for f in "${CONSOLE_LOG}" "${LOG_FILE}"; do
    if [[ -s "${f}" ]]; then
      printf -- '--- last lines of %s ---\n' "${f}" >&2
      tail -n 40 -- "${f}" >&2
    fi
  done
}

# ------------------------------------------------------------------------------------ config

render_log_config() {
  cat <<EOF
# Written by scripts/synapse.sh; rewritten on every start.
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $(yq "${LOG_FILE}")
    encoding: utf8
loggers:
  synapse.storage.SQL:
    level: INFO
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
EOF
}

render_config() {
  local rl='{per_second: 1000000, burst_count: 1000000}'
  cat <<EOF
# Written by scripts/synapse.sh (Synapse ${SYNAPSE_VERSION}); rewritten on every start.
# Loopback-only development homeserver: no federation, SQLite, rate limits off.
server_name: localhost
public_baseurl: $(yq "http://127.0.0.1:${PORT}/")
report_stats: false
signing_key_path: $(yq "${SIGNING_KEY}")
log_config: $(yq "${LOG_CONFIG}")

listeners:
  - port: ${PORT}
    type: http
    tls: false
    x_forwarded: false
    bind_addresses: ['127.0.0.1']
    resources:
      # "client" also serves /_synapse/admin (and /health is always served).
      - names: [client]
        compress: false

database:
  name: sqlite3
  args:
    database: $(yq "${DATA}/homeserver.db")

# No federation at all.
federation_domain_whitelist: []
trusted_key_servers: []
suppress_key_server_warning: true

registration_shared_secret: $(yq "${SHARED_SECRET}")
enable_registration: false

enable_media_repo: true
media_store_path: $(yq "${DATA}/media_store")
max_upload_size: ${MAX_UPLOAD}
url_preview_enabled: false
# media_retention is left unset: media is kept forever.

presence:
  enabled: false

# Rate limits effectively off (every rc_* setting that Synapse ${SYNAPSE_VERSION} reads).
rc_message: ${rl}
rc_registration: ${rl}
rc_registration_token_validity: ${rl}
rc_login:
  address: ${rl}
  account: ${rl}
  failed_attempts: ${rl}
rc_admin_redaction: ${rl}
rc_joins:
  local: ${rl}
  remote: ${rl}
rc_joins_per_room: ${rl}
rc_key_requests: ${rl}
rc_3pid_validation: ${rl}
rc_invites:
  per_room: ${rl}
  per_user: ${rl}
  per_issuer: ${rl}
rc_third_party_invite: ${rl}
rc_media_create: ${rl}
rc_presence:
  per_user: ${rl}
rc_delayed_event_mgmt: ${rl}
rc_room_creation: ${rl}
rc_reports: ${rl}
rc_user_directory: ${rl}
rc_profile: ${rl}

# MSC2409 / MSC4203: to-device messages in appservice transactions;
# MSC3202: one-time-key counts and device lists in transactions.
# MSC4190 (appservice device management) has no homeserver switch in this Synapse: the
# registration opts in with "io.element.msc4190: true".
experimental_features:
  msc2409_to_device_messages_enabled: true
  msc3202_transaction_extensions: true
EOF
  if (( ${#REGISTRATIONS[@]} > 0 )); then
    printf '\n# Appservice registrations (restart after changing one).\napp_service_config_files:\n'
    local reg
    for reg in "${REGISTRATIONS[@]}"; do
      printf '  - %s  # sha256 %s\n' "$(yq "${reg}")" "$(sha256sum <"${reg}" | cut -c1-16)"
    done
  fi
}

# write_file PATH CONTENT: atomically replace PATH (mode 600) with CONTENT.
write_file() {
  local tmp="$1.tmp.$$"
  (umask 077; printf '%s\n' "$2" >"${tmp}")
  mv -f -- "${tmp}" "$1"
}

# ------------------------------------------------------------------------------------ commands

do_start() {
  validate_env
  do_install
  lock_data
  local pid config
  config="$(render_config)"
  if pid="$(find_pid)"; then
    printf '%s\n' "${pid}" >"${PID_FILE}"
    if [[ "$(cat "${CONFIG}" 2>/dev/null || true)" != "${config}" ]]; then
      log "warning: the running Synapse was started with a different config (port, secret or" \
          "registration); run '$0 restart' to apply it"
    fi
    wait_healthy "${pid}"
    log "already running (pid ${pid}) at ${BASE_URL}"
    return 0
  fi
  rm -f -- "${PID_FILE}"
  if port_busy; then
    die "port ${PORT} on 127.0.0.1 is already in use by another process (set SYNAPSE_PORT)"
  fi

  chmod 700 "${DATA}"
  : >"${MARKER}"
  mkdir -p "${DATA}/media_store"
  write_file "${CONFIG}" "${config}"
  write_file "${LOG_CONFIG}" "$(render_log_config)"
  if [[ ! -s "${SIGNING_KEY}" ]]; then
    log "generating the signing key"
    (cd "${DATA}" && "${VENV_PY}" -m synapse.app.homeserver -c "${CONFIG}" --generate-keys \
        </dev/null >>"${CONSOLE_LOG}" 2>&1) \
      || { show_log_tail; die "could not generate the signing key"; }
  fi

  log "starting Synapse ${SYNAPSE_VERSION} on ${BASE_URL} (data ${DATA})"
  printf -- '--- %s start ---\n' "$(date -u +%FT%TZ)" >>"${CONSOLE_LOG}"
  # setsid: its own session, so it outlives the caller's process group and terminal; stop finds
  # it through the pid file (or the exact config path). No fd but 0-2 is inherited (the locks,
  # a caller's pipes), so a caller reading our output sees EOF when this script exits.
  (
    cd "${DATA}"
    for fd in /proc/"${BASHPID}"/fd/*; do
      fd="${fd##*/}"
      if [[ "${fd}" =~ ^[0-9]+$ ]] && (( fd > 2 )); then eval "exec ${fd}>&-"; fi
    done
    exec setsid "${VENV_PY}" -m synapse.app.homeserver -c "${CONFIG}" </dev/null >>"${CONSOLE_LOG}" 2>&1
  ) &
  pid=$!
  printf '%s\n' "${pid}" >"${PID_FILE}"
  wait_healthy "${pid}"
  log "running (pid ${pid}) at ${BASE_URL}"
}

# wait_healthy PID: wait until /health answers 200, or fail (stopping PID) with the log tail.
wait_healthy() {
  local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
  while ! healthy; do
    if ! pid_is_ours "${pid}"; then
      rm -f -- "${PID_FILE}"
      show_log_tail
      die "Synapse (pid ${pid}) exited during startup; see ${LOG_FILE} and ${CONSOLE_LOG}"
    fi
    if (( SECONDS >= deadline )); then
      show_log_tail
      stop_pid "${pid}"
      die "Synapse did not answer 200 on ${BASE_URL}/health within ${START_TIMEOUT} s; stopped it"
    fi
    sleep 0.25
  done
}

# stop_pid PID: SIGTERM, up to 20 s, then SIGKILL; removes the pid file.
stop_pid() {
  local pid="$1" i
  kill -TERM "${pid}" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    pid_is_ours "${pid}" || break
    sleep 0.2
  done
  if pid_is_ours "${pid}"; then
    log "Synapse (pid ${pid}) still running after 20 s; sending SIGKILL"
    kill -KILL "${pid}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      pid_is_ours "${pid}" || break
      sleep 0.1
    done
  fi
  rm -f -- "${PID_FILE}"
  ! pid_is_ours "${pid}" || die "could not stop Synapse (pid ${pid})"
}

do_stop() {
  if [[ ! -d "${DATA}" ]]; then log "not running"; return 0; fi
  lock_data
  local pid
  if pid="$(find_pid)"; then
    log "stopping Synapse (pid ${pid})"
    stop_pid "${pid}"
    log "stopped"
  else
    rm -f -- "${PID_FILE}"
    log "not running"
  fi
}

do_status() {
  local pid
  if [[ -d "${DATA}" ]] && pid="$(find_pid)"; then
    local health="not answering /health"
    healthy && health="healthy"
    printf 'running (pid %s, %s, %s, data %s)\n' "${pid}" "${BASE_URL}" "${health}" "${DATA}"
    return 0
  fi
  printf 'not running (data %s)\n' "${DATA}"
  return 1
}

do_register() {
  local admin=false args=() a
  for a in "$@"; do
    case "${a}" in
      --admin) admin=true ;;
      --no-admin) admin=false ;;
      -*) die "register: unknown option ${a}" ;;
      *) args+=("${a}") ;;
    esac
  done
  [[ ${#args[@]} -eq 2 ]] || die "usage: $0 register USER PASSWORD [--admin]"
  [[ -f "${CONFIG}" ]] || die "no ${CONFIG}: run '$0 start' first"
  installed || die "Synapse is not installed: run '$0 start' first"
  # The secret and URL come from the config the server runs with; nothing secret goes on argv
  # (the password is passed through the environment).
  REG_USER="${args[0]}" REG_PASSWORD="${args[1]}" REG_ADMIN="${admin}" REG_CONFIG="${CONFIG}" \
    "${VENV_PY}" - <<'EOF'
import hashlib, hmac, json, os, sys, urllib.error, urllib.request
import yaml

with open(os.environ["REG_CONFIG"]) as f:
    cfg = yaml.safe_load(f)
base = cfg["public_baseurl"].rstrip("/")
secret = cfg["registration_shared_secret"]
user = os.environ["REG_USER"]
if user.startswith("@"):
    user = user[1:].split(":", 1)[0]
password = os.environ["REG_PASSWORD"]
admin = os.environ["REG_ADMIN"] == "true"
url = base + "/_synapse/admin/v1/register"

def call(req):
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        sys.exit(f"synapse.sh: error: cannot reach {base}: {e}")

status, body = call(urllib.request.Request(url))
if status != 200:
    sys.exit(f"synapse.sh: error: nonce request failed ({status}): {body}")
nonce = json.loads(body)["nonce"]
mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
for part in (nonce, user, password):
    mac.update(part.encode())
    mac.update(b"\x00")
mac.update(b"admin" if admin else b"notadmin")
payload = {"nonce": nonce, "username": user, "password": password,
           "admin": admin, "mac": mac.hexdigest()}
status, body = call(urllib.request.Request(
    url, data=json.dumps(payload).encode(), method="POST",
    headers={"Content-Type": "application/json"}))
if status != 200:
    print(body, file=sys.stderr)
    try:
        code = json.loads(body).get("errcode")
    except ValueError:
        code = None
    # 3: the user exists already (M_USER_IN_USE); 1: any other failure.
    sys.exit(3 if code == "M_USER_IN_USE" else 1)
print(body)
EOF
}

do_reset() {
  if [[ -d "${DATA}" && ! -f "${MARKER}" \
        && -n "$(find "${DATA}" -mindepth 1 -maxdepth 1 ! -name .lock -print -quit)" ]]; then
    die "${DATA} was not created by this script; not touching it"
  fi
  do_stop
  if [[ -d "${DATA}" ]]; then
    rm -rf -- "${DATA}"
    log "deleted ${DATA}"
  fi
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "${cmd}" in
    install) [[ $# -eq 0 ]] || die "install takes no arguments"; do_install ;;
    start)   [[ $# -eq 0 ]] || die "start takes no arguments"; do_start ;;
    stop)    [[ $# -eq 0 ]] || die "stop takes no arguments"; do_stop ;;
    restart) [[ $# -eq 0 ]] || die "restart takes no arguments"; do_stop; do_start ;;
    status)  do_status ;;
    register) do_register "$@" ;;
    url)     printf '%s\n' "${BASE_URL}" ;;
    logs)
      local n="${1:-100}"
      [[ "${n}" =~ ^[0-9]+$ ]] || die "logs: N must be a number"
      [[ -f "${LOG_FILE}" ]] || die "no log yet at ${LOG_FILE}"
      tail -n "${n}" -- "${LOG_FILE}" ;;
    reset)   do_reset ;;
    -h|--help|help) usage ;;
    "") usage >&2; exit 2 ;;
    *) log "unknown command '${cmd}'"; usage >&2; exit 2 ;;
  esac
}

main "$@"
