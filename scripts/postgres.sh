#!/usr/bin/env bash
# A private PostgreSQL cluster on 127.0.0.1 for heirloom's PostgreSQL tests, from Debian's packages.
#
# Usage: scripts/postgres.sh start|stop|url
#   start   install postgresql if missing, create the cluster once, start it, create the test
#           database, and print "export HEIRLOOM_TEST_POSTGRES=<url>" for eval
#   stop    stop the cluster
#   url     print the connection URL
#
# Environment: HEIRLOOM_PG_DIR (default /tmp/heirloom-postgres), HEIRLOOM_PG_PORT (default 55432).
set -euo pipefail

PG_DIR="${HEIRLOOM_PG_DIR:-/tmp/heirloom-postgres}"
PG_PORT="${HEIRLOOM_PG_PORT:-55432}"
URL="postgres://heirloom@127.0.0.1:${PG_PORT}/heirloom_test?sslmode=disable"

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
  if ! as_postgres "${bin}/pg_ctl" -D "${PG_DIR}" status >/dev/null 2>&1; then
    as_postgres "${bin}/pg_ctl" -D "${PG_DIR}" -l "${PG_DIR}/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p ${PG_PORT} -k ${PG_DIR} -c fsync=off" start >/dev/null
  fi
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
  url) printf '%s\n' "${URL}" ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
