#!/usr/bin/env bash
# haproxy, the load balancer in front of two heirloom processes (one active, one standby), from
# Debian's packages.
#
# Usage: scripts/haproxy.sh COMMAND
#   install                      apt-get install haproxy if it is missing (quick when installed);
#                                make sure the system service the package ships is stopped and does
#                                not start at boot
#   bin                          install if needed, then print the path of the haproxy binary
#   version                      print the installed version (e.g. "2.6.12")
#   config LISTEN BACKEND...     print a configuration: a frontend on 127.0.0.1:LISTEN and one server
#                                per BACKEND (host:port), each checked with GET /_heirloom/v1/ready,
#                                so that only the active heirloom process gets requests
#   start DIR LISTEN BACKEND...  write DIR/haproxy.cfg (as config), start haproxy in the background
#                                (pid in DIR/haproxy.pid, log in DIR/haproxy.log) and wait until it
#                                accepts connections on LISTEN
#   stop DIR                     stop the haproxy started in DIR
#
# The tests never use the system service: each run starts its own haproxy with its own
# configuration, on 127.0.0.1 and a free port.
set -euo pipefail

readonly HAPROXY_BIN="/usr/sbin/haproxy"

log() { printf 'haproxy.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,/^set -euo pipefail$/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

installed() { [[ -x "${HAPROXY_BIN}" ]]; }

# quiet_system_service: stop the haproxy the package's maintainer scripts may have started (with
# /etc/haproxy/haproxy.cfg) and keep it from starting at boot.
quiet_system_service() {
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now haproxy.service >/dev/null 2>&1 || true
    return 0
  fi
  if [[ -x /etc/init.d/haproxy ]]; then
    /etc/init.d/haproxy stop >/dev/null 2>&1 || true
    if command -v update-rc.d >/dev/null 2>&1; then
      update-rc.d haproxy disable >/dev/null 2>&1 || true
    fi
  fi
}

do_install() {
  installed && return 0
  [[ "$(id -u)" == 0 ]] || die "haproxy is not installed and this is not root (as root: apt-get install haproxy)"
  command -v apt-get >/dev/null 2>&1 || die "haproxy is not installed and there is no apt-get"
  log "installing haproxy from Debian's packages"
  local out
  out="$( { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends haproxy; } 2>&1 )" \
    || { printf '%s\n' "${out}" >&2; die "apt-get install haproxy failed"; }
  installed || die "apt-get installed haproxy but ${HAPROXY_BIN} is missing"
  quiet_system_service
  log "installed haproxy $(do_version)"
}

do_version() {
  # The first line of -v reads "HAProxy version 2.6.12-1+deb12u1 2023/12/16 - https://...".
  "${HAPROXY_BIN}" -v 2>/dev/null | sed -n '1s/^HAProxy version \([0-9][0-9.]*\).*/\1/p'
}

# do_config LISTEN BACKEND...: the configuration of a balancer in front of heirloom processes.
# A standby answers GET /_heirloom/v1/ready with 503, so only the active process is "up"; a
# check every 500 ms, down after one failed check and up after one passed, follows a takeover
# at once. Timeouts are long: a transaction or an API call that imports a large key bundle may
# take a while.
do_config() {
  local listen="$1"; shift
  [[ $# -gt 0 ]] || die "config needs LISTEN and at least one BACKEND"
  cat <<CFG
global
    maxconn 4096

defaults
    mode http
    option http-server-close
    # A connection refused (the process just died) is tried again on another server.
    option redispatch
    retries 3
    timeout connect 2s
    timeout client 5m
    timeout server 5m
    timeout http-request 30s
    timeout queue 10s

frontend heirloom
    bind 127.0.0.1:${listen}
    default_backend heirloom

backend heirloom
    option httpchk GET /_heirloom/v1/ready
    http-check expect status 200
    default-server inter 500ms fall 1 rise 1
CFG
  local i=0 backend
  for backend in "$@"; do
    i=$((i + 1))
    printf '    server heirloom%d %s check\n' "${i}" "${backend}"
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

do_start() {
  local dir="$1" listen="$2"; shift 2
  do_install
  mkdir -p "${dir}"
  do_config "${listen}" "$@" >"${dir}/haproxy.cfg"
  "${HAPROXY_BIN}" -c -q -f "${dir}/haproxy.cfg" || die "haproxy rejects ${dir}/haproxy.cfg"
  "${HAPROXY_BIN}" -D -f "${dir}/haproxy.cfg" -p "${dir}/haproxy.pid" >>"${dir}/haproxy.log" 2>&1 \
    || die "haproxy did not start; see ${dir}/haproxy.log"
  local _
  for _ in $(seq 100); do
    port_open "${listen}" && return 0
    sleep 0.1
  done
  die "haproxy does not accept connections on 127.0.0.1:${listen}; see ${dir}/haproxy.log"
}

do_stop() {
  local dir="$1" pid
  [[ -s "${dir}/haproxy.pid" ]] || return 0
  pid="$(cat "${dir}/haproxy.pid")"
  kill "${pid}" 2>/dev/null || true
  rm -f "${dir}/haproxy.pid"
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "${cmd}" in
    install) [[ $# -eq 0 ]] || die "install takes no arguments"; do_install ;;
    bin) do_install; printf '%s\n' "${HAPROXY_BIN}" ;;
    version) installed || die "haproxy is not installed: run '$0 install'"; do_version ;;
    config) [[ $# -ge 2 ]] || die "usage: $0 config LISTEN BACKEND..."; do_config "$@" ;;
    start) [[ $# -ge 3 ]] || die "usage: $0 start DIR LISTEN BACKEND..."; do_start "$@" ;;
    stop) [[ $# -eq 1 ]] || die "usage: $0 stop DIR"; do_stop "$1" ;;
    -h|--help|help) usage ;;
    "") usage >&2; exit 2 ;;
    *) log "unknown command '${cmd}'"; usage >&2; exit 2 ;;
  esac
}

main "$@"
