#!/usr/bin/env bash
# heisenbridge (a bouncer-style Matrix <-> IRC appservice) for heirloom's gateway tests.
#
# Usage: scripts/heisenbridge.sh COMMAND
#   install    create the virtualenv and install the pinned heisenbridge (quick when done)
#   bin        install if needed, then print the path of the heisenbridge executable
#   version    print the installed heisenbridge version
#
# Environment:
#   HEIRLOOM_STATE              state directory                          (default: <repo>/.state)
#   HEISENBRIDGE_PYTHON         interpreter that creates the venv        (default: python3)
#   HEISENBRIDGE_WHEELHOUSE     local wheel cache for the pinned set     (default: ~/.cache/heirloom/...)
#
# The virtualenv is $HEIRLOOM_STATE/heisenbridge-venv. As for Synapse (scripts/synapse.sh), the
# downloaded wheels are kept in a per-machine wheelhouse so that a fresh clone installs without
# the network. The tests run the bridge themselves (heisenbridge -c REGISTRATION HOMESERVER_URL).
set -euo pipefail

readonly HEISENBRIDGE_VERSION="1.15.4"
readonly HEISENBRIDGE_SPEC="heisenbridge==${HEISENBRIDGE_VERSION}"
# heisenbridge's own dependencies, pinned to the versions it was tested with here (it only
# bounds them: irc<20.4, mautrix<0.21, ...). Their dependencies float within their bounds.
readonly CONSTRAINTS=(
  "mautrix==0.20.8"
  "irc==20.3.1"
  "aiohttp==3.14.5"
  "ruamel.yaml==0.18.17"
  "python-socks==3.2.1"
)

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "${SCRIPT_DIR}/.." && pwd -P)"

STATE_DIR="$(realpath -m -- "${HEIRLOOM_STATE:-${REPO_ROOT}/.state}")"
VENV="${STATE_DIR}/heisenbridge-venv"
VENV_PY="${VENV}/bin/python"
STAMP="${VENV}/.heirloom-heisenbridge-stamp"
PYTHON="${HEISENBRIDGE_PYTHON:-python3}"

log() { printf 'heisenbridge.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,/^set -euo pipefail$/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

# stamp_text: what the stamp holds once this exact set is installed.
stamp_text() { printf '%s %s\n' "${HEISENBRIDGE_SPEC}" "${CONSTRAINTS[*]}"; }

installed() {
  [[ -x "${VENV_PY}" && -x "${VENV}/bin/heisenbridge" && -f "${STAMP}" \
     && "$(<"${STAMP}")" == "$(stamp_text)" ]]
}

# pip_venv SUBCOMMAND ARGS...: the venv's pip, quiet and non-interactive.
pip_venv() {
  local sub="$1"; shift
  "${VENV_PY}" -m pip "${sub}" --disable-pip-version-check --no-input --progress-bar off -q "$@" </dev/null
}

do_install() {
  installed && return 0
  mkdir -p "${STATE_DIR}"
  # Serialise concurrent installs; fd 8 is closed again before returning.
  exec 8>"${STATE_DIR}/.heisenbridge-install.lock"
  flock 8
  if installed; then exec 8>&-; return 0; fi

  command -v "${PYTHON}" >/dev/null 2>&1 || die "no '${PYTHON}' on PATH (set HEISENBRIDGE_PYTHON)"
  "${PYTHON}" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "heisenbridge ${HEISENBRIDGE_VERSION} needs Python >= 3.10 ('${PYTHON}' is older)"
  if [[ ! -x "${VENV_PY}" ]] || ! "${VENV_PY}" -c 'import sys' >/dev/null 2>&1; then
    log "creating virtualenv ${VENV}"
    rm -rf -- "${VENV}"
    "${PYTHON}" -m venv "${VENV}" </dev/null \
      || die "'${PYTHON} -m venv' failed (on Debian: apt-get install python3-venv)"
  fi
  rm -f -- "${STAMP}"

  local constraints="${VENV}/constraints.txt"
  printf '%s\n' "${CONSTRAINTS[@]}" >"${constraints}"

  local tag wheelhouse
  tag="$("${VENV_PY}" -c 'import sys, sysconfig; print(sys.implementation.cache_tag + "-" + sysconfig.get_platform())')"
  wheelhouse="${HEISENBRIDGE_WHEELHOUSE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/heirloom/wheels-heisenbridge-${HEISENBRIDGE_VERSION}-${tag}}"
  if [[ "$(cat "${wheelhouse}/.complete" 2>/dev/null || true)" != "$(stamp_text)" ]]; then
    log "downloading ${HEISENBRIDGE_SPEC} and its dependencies"
    local tmp="${wheelhouse}.tmp.$$"
    rm -rf -- "${tmp}"
    if mkdir -p "${tmp}" && pip_venv wheel --wheel-dir "${tmp}" -c "${constraints}" "${HEISENBRIDGE_SPEC}"; then
      stamp_text >"${tmp}/.complete"
      rm -rf -- "${wheelhouse}"
      mv -- "${tmp}" "${wheelhouse}" || true
    else
      log "warning: could not fill the wheelhouse ${wheelhouse}; installing from the index"
    fi
    rm -rf -- "${tmp}"
  fi
  log "installing ${HEISENBRIDGE_SPEC} into ${VENV}"
  if ! { [[ -f "${wheelhouse}/.complete" ]] \
         && pip_venv install --no-index --find-links "${wheelhouse}" -c "${constraints}" "${HEISENBRIDGE_SPEC}"; }; then
    [[ -f "${wheelhouse}/.complete" ]] && log "warning: install from the wheelhouse failed; trying the index"
    pip_venv install -c "${constraints}" "${HEISENBRIDGE_SPEC}" || die "pip install ${HEISENBRIDGE_SPEC} failed"
  fi

  local got
  got="$(do_version)" || die "heisenbridge does not run after the install"
  [[ "${got}" == "${HEISENBRIDGE_VERSION}" ]] \
    || die "installed heisenbridge is ${got}, expected ${HEISENBRIDGE_VERSION}"
  stamp_text >"${STAMP}"
  exec 8>&-
  log "installed heisenbridge ${HEISENBRIDGE_VERSION}"
}

do_version() { "${VENV}/bin/heisenbridge" --version </dev/null; }

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  [[ $# -eq 0 ]] || die "${cmd} takes no arguments"
  case "${cmd}" in
    install) do_install ;;
    bin) do_install; printf '%s\n' "${VENV}/bin/heisenbridge" ;;
    version) [[ -x "${VENV}/bin/heisenbridge" ]] || die "heisenbridge is not installed: run '$0 install'"; do_version ;;
    -h|--help|help) usage ;;
    "") usage >&2; exit 2 ;;
    *) log "unknown command '${cmd}'"; usage >&2; exit 2 ;;
  esac
}

main "$@"
