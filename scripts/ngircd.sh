#!/usr/bin/env bash
# ngircd, the IRC server the heisenbridge tests talk to, from Debian's packages.
#
# Usage: scripts/ngircd.sh COMMAND
#   install    apt-get install ngircd if it is missing (quick when installed); make sure the
#              system service the package ships is stopped and does not start at boot
#   bin        install if needed, then print the path of the ngircd binary
#   version    print the installed version (e.g. "26.1")
#
# The tests never use the system service: each run starts its own ngircd in the foreground
# (ngircd -n -f FILE) with its own configuration file, on 127.0.0.1 and a free port.
set -euo pipefail

readonly NGIRCD_BIN="/usr/sbin/ngircd"

log() { printf 'ngircd.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,/^set -euo pipefail$/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

installed() { [[ -x "${NGIRCD_BIN}" ]]; }

# quiet_system_service: stop the ngircd that the package's maintainer scripts may have started
# (on 6667, with /etc/ngircd/ngircd.conf) and keep it from starting at boot. The tests' own
# instances would not clash with it (their ports are free ones), but a stray IRC server on the
# machine is nobody's business.
quiet_system_service() {
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now ngircd.service >/dev/null 2>&1 || true
    return 0
  fi
  if [[ -x /etc/init.d/ngircd ]]; then
    /etc/init.d/ngircd stop >/dev/null 2>&1 || true
    if command -v update-rc.d >/dev/null 2>&1; then
      update-rc.d ngircd disable >/dev/null 2>&1 || true
    fi
  fi
}

do_install() {
  installed && return 0
  [[ "$(id -u)" == 0 ]] || die "ngircd is not installed and this is not root (as root: apt-get install ngircd)"
  command -v apt-get >/dev/null 2>&1 || die "ngircd is not installed and there is no apt-get"
  log "installing ngircd from Debian's packages"
  local out
  out="$( { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends ngircd; } 2>&1 )" \
    || { printf '%s\n' "${out}" >&2; die "apt-get install ngircd failed"; }
  installed || die "apt-get installed ngircd but ${NGIRCD_BIN} is missing"
  quiet_system_service
  log "installed ngircd $(do_version)"
}

do_version() {
  # The first line of --version reads "ngIRCd 26.1-IDENT+IPv6+...".
  "${NGIRCD_BIN}" --version 2>/dev/null | sed -n '1s/^ngircd \([0-9][0-9.]*\).*/\1/Ip'
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  [[ $# -eq 0 ]] || die "${cmd} takes no arguments"
  case "${cmd}" in
    install) do_install ;;
    bin) do_install; printf '%s\n' "${NGIRCD_BIN}" ;;
    version) installed || die "ngircd is not installed: run '$0 install'"; do_version ;;
    -h|--help|help) usage ;;
    "") usage >&2; exit 2 ;;
    *) log "unknown command '${cmd}'"; usage >&2; exit 2 ;;
  esac
}

main "$@"
