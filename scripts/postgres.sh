#!/usr/bin/env bash
# A private PostgreSQL cluster on 127.0.0.1 for heirloom's PostgreSQL tests, from Debian's packages.
#
# Usage: scripts/postgres.sh start|stop|url
#   start   install postgresql if missing, create the cluster once, start it, create the test
#           database, and print "export HEIRLOOM_TEST_POSTGRES=<url>" for eval
#   stop    stop the cluster
#   url     print the connection URL
#
# Environment:
#   HEIRLOOM_PG_DIR   data directory (default /tmp/heirloom-postgres-<hash of this checkout's path>,
#                     so each checkout has its own cluster)
#   HEIRLOOM_PG_PORT  port on 127.0.0.1 (default: a free one, picked when the cluster is created
#                     and kept in the data directory's heirloom-port file)
set -euo pipefail

REPO_ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
PG_DIR="${HEIRLOOM_PG_DIR:-/tmp/heirloom-postgres-$(printf '%s' "${REPO_ROOT}" | sha256sum | cut -c1-12)}"
PORT_FILE="${PG_DIR}/heirloom-port"

# port_busy PORT: something accepts connections on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pick_port: a port nothing listens on, from a range outside the kernel's ephemeral one.
pick_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 10000))
    port_busy "${p}" || { printf '%s\n' "${p}"; return; }
  done
  log "found no free port"; exit 1
}

# pg_port: HEIRLOOM_PG_PORT, else the cluster's saved port, else empty.
pg_port() {
  if [[ -n "${HEIRLOOM_PG_PORT:-}" ]]; then printf '%s\n' "${HEIRLOOM_PG_PORT}"
  elif [[ -s "${PORT_FILE}" ]]; then cat "${PORT_FILE}"
  fi
}

url() { printf 'postgres://heirloom@127.0.0.1:%s/heirloom_test?sslmode=disable\n' "$1"; }

log() { printf 'postgres.sh: %s\n' "$*" >&2; }

bindir() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [[ -n "$d" ]] || return 1
  printf '%s\n' "$d"
}

as_postgres() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

install_pg() {
  if bindir >/dev/null; then return; fi
  [[ "$(id -u)" == 0 ]] || { log "postgresql is not installed and this is not root"; exit 1; }
  log "installing postgresql from Debian's packages"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

start() {
  install_pg
  local bin; bin="$(bindir)"
  if [[ ! -f "${PG_DIR}/PG_VERSION" ]]; then
    mkdir -p "${PG_DIR}"
    [[ "$(id -u)" == 0 ]] && chown postgres: "${PG_DIR}"
    as_postgres "${bin}/initdb" -D "${PG_DIR}" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  local PG_PORT; PG_PORT="$(pg_port)"
  if ! as_postgres "${bin}/pg_ctl" -D "${PG_DIR}" status >/dev/null 2>&1; then
    local attempt
    for attempt in 1 2 3; do
      if [[ -z "${PG_PORT}" ]] || { [[ -z "${HEIRLOOM_PG_PORT:-}" ]] && port_busy "${PG_PORT}"; }; then
        PG_PORT="$(pick_port)"
      fi
      printf '%s\n' "${PG_PORT}" >"${PORT_FILE}"
      if as_postgres "${bin}/pg_ctl" -D "${PG_DIR}" -l "${PG_DIR}/server.log" -w -t 60 \
          -o "-c listen_addresses=127.0.0.1 -p ${PG_PORT} -k ${PG_DIR} -c fsync=off" start >/dev/null; then
        break
      fi
      # Another process may have taken the port between the check and the bind.
      [[ -z "${HEIRLOOM_PG_PORT:-}" && "${attempt}" -lt 3 ]] || { log "could not start; see ${PG_DIR}/server.log"; exit 1; }
      PG_PORT=""
    done
  fi
  local URL; URL="$(url "${PG_PORT}")"
  local psql=("${bin}/psql" -h 127.0.0.1 -p "${PG_PORT}" -U postgres -q -v ON_ERROR_STOP=1)
  "${psql[@]}" -tc "SELECT 1 FROM pg_roles WHERE rolname='heirloom'" | grep -q 1 \
    || "${psql[@]}" -c "CREATE ROLE heirloom LOGIN SUPERUSER"
  "${psql[@]}" -tc "SELECT 1 FROM pg_database WHERE datname='heirloom_test'" | grep -q 1 \
    || "${psql[@]}" -c "CREATE DATABASE heirloom_test OWNER heirloom"
  # A fresh database for the end-to-end suite's PostgreSQL run.
  "${psql[@]}" -c "DROP DATABASE IF EXISTS heirloom_e2e WITH (FORCE)" >/dev/null
  "${psql[@]}" -c "CREATE DATABASE heirloom_e2e OWNER heirloom" >/dev/null
  log "running on 127.0.0.1:${PG_PORT}"
  printf 'export HEIRLOOM_TEST_POSTGRES=%q\n' "${URL}"
  printf 'export HEIRLOOM_E2E_POSTGRES=%q\n' "${URL/heirloom_test/heirloom_e2e}"
}

stop() {
  local bin
  bin="$(bindir)" || return 0
  [[ -f "${PG_DIR}/PG_VERSION" ]] || return 0
  as_postgres "${bin}/pg_ctl" -D "${PG_DIR}" -m fast stop >/dev/null 2>&1 || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url)
    port="$(pg_port)"
    [[ -n "${port}" ]] || { log "no cluster in ${PG_DIR}: run $0 start"; exit 1; }
    url "${port}" ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
