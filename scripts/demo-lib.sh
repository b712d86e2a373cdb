# Shared by scripts/demo.sh and scripts/demo-gateway.sh (sourced, not run).

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# stop_pid PIDFILE: stops the process a demo left running, and waits until it is gone.
stop_pid() {
  if [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; then
    kill "$(cat "$1")"
    while kill -0 "$(cat "$1")" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$1"
}

# start_synapse REGISTRATION SECRET PORT: starts the pinned Synapse with the registration (and the
# other demo's, if it was generated: both demos can run side by side), and restarts it only if its
# config changed: Synapse may drop to-device messages it tries to push while an appservice is down
# or restarting (element-hq/synapse#14710), so the two are never restarted around each other
# needlessly.
start_synapse() {
  local registrations="" reg
  # Always in this order, so that Synapse's config does not change with the demo that starts it.
  for reg in "${STATE}/demo/registration.yaml" "${STATE}/demo-gateway/registration.yaml"; do
    if [[ "${reg}" == "$1" || -f "${reg}" ]]; then
      registrations="${registrations:+${registrations}:}${reg}"
    fi
  done
  export SYNAPSE_PORT="$3" SYNAPSE_REGISTRATION="${registrations}" SYNAPSE_SHARED_SECRET="$2"
  local out
  out="$(scripts/synapse.sh start 2>&1)"
  printf '%s\n' "${out}"
  if grep -q "run '.*restart'" <<<"${out}"; then
    scripts/synapse.sh restart
  fi
}

# start_heirloom CONFIG LOG PIDFILE PORT: starts heirloom in the background and waits until its
# API answers; prints the API's shared secret. Exits with heirloom's log if it stops instead.
start_heirloom() {
  local config="$1" log="$2" pidfile="$3" port="$4" secret
  nohup ./heirloom -c "${config}" >"${log}" 2>&1 &
  echo $! >"${pidfile}"
  secret="$(sed -n 's/^ *shared_secret: *//p' "${config}")"
  for _ in $(seq 1 100); do
    if curl -fsS -H "Authorization: Bearer ${secret}" "http://127.0.0.1:${port}/_heirloom/v1/status" >/dev/null 2>&1; then
      printf '%s\n' "${secret}"
      return 0
    fi
    if ! kill -0 "$(cat "${pidfile}")" 2>/dev/null; then
      echo "heirloom exited; its log:" >&2; tail -20 "${log}" >&2; exit 1
    fi
    sleep 0.2
  done
  echo "heirloom did not answer within 20 s; its log: ${log}" >&2
  exit 1
}

# write_config CONFIG PORT_AS DB [SED_ARGS...]: heirloom's commented example config, pointed at the
# local Synapse (PORT_HS), listening on PORT_AS, with its SQLite database at DB; SED_ARGS change
# more. Kept if it exists (its generated secrets with it).
write_config() {
  local config="$1" port_as="$2" db="$3"
  shift 3
  [[ -f "${config}" ]] && return 0
  step "Writing ${config}"
  ./heirloom -e -c "${config}" >/dev/null
  sed -i \
    -e "s#address: https://matrix.example.com#address: http://127.0.0.1:${PORT_HS}#" \
    -e "s#domain: example.com#domain: localhost#" \
    -e "s#address: http://localhost:29340#address: http://127.0.0.1:${port_as}#" \
    -e "s#port: 29340#port: ${port_as}#" \
    -e "s#uri: file:heirloom.db#uri: file:${db}#" \
    "$@" "${config}"
}
