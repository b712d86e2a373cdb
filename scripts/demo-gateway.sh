#!/usr/bin/env bash
# make demo-gateway: heirloom in front of an unmodified bridge. Brings up a local Synapse, a private
# ngircd (IRC server) and heirloom in gateway mode (SQLite) in front of heisenbridge, then tells the
# story with Element-grade clients (matrix-js-sdk + Rust crypto) and a plain IRC client: an IRC line
# reaches an encrypted room from a ghost signed by its owner, the user's encrypted reply reaches IRC,
# and an invited user reads the channel's history. Synapse, ngircd and heirloom keep running
# afterwards (heisenbridge stops with the story); `make stop` stops them.
#
# The two changes a bridge admin makes are the ones this script makes: Synapse loads the
# registration heirloom generates from heisenbridge's own, and heisenbridge's homeserver URL is
# heirloom.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
STATE="${HEIRLOOM_STATE:-${ROOT}/.state}"
DEMO="${STATE}/demo-gateway"
PORT_HS="${SYNAPSE_PORT:-8008}"
PORT_AS="${HEIRLOOM_GATEWAY_PORT:-29341}"
PORT_HB="${HEISENBRIDGE_PORT:-29342}"
PORT_IRC="${NGIRCD_PORT:-16667}"
SECRET="${SYNAPSE_SHARED_SECRET:-heirloom-dev-registration-secret}"
mkdir -p "${DEMO}"
start=$(date +%s)

# shellcheck source=scripts/demo-lib.sh
source scripts/demo-lib.sh

heisenbridge="$(scripts/heisenbridge.sh bin)"
ngircd="$(scripts/ngircd.sh bin)"

# 1. The bridge as it comes: heisenbridge writes its own registration.
hb_registration="${DEMO}/heisenbridge.yaml"
if [[ ! -f "${hb_registration}" ]]; then
  step "Generating heisenbridge's own registration (${hb_registration})"
  "${heisenbridge}" -c "${hb_registration}" --generate -l 127.0.0.1 -p "${PORT_HB}" >/dev/null
  chmod 600 "${hb_registration}"
fi

# 2. heirloom's config: the example, with a gateway section naming heisenbridge's registration.
config="${DEMO}/config.yaml"
write_config "${config}" "${PORT_AS}" "${DEMO}/heirloom.db" \
  -e "s#id: heirloom\$#id: heirloom-gateway#" \
  -e "s#bot_username: heirloombot#bot_username: heirloomgw#" \
  -e "s#puppet_prefix: heirloom_#puppet_prefix: heirloomgw_#" \
  -e "s#registration: \"\"#registration: ${hb_registration}#" \
  -e "s#encrypt_new_rooms: false#encrypt_new_rooms: true#"
grep -q "registration: ${hb_registration}" "${config}" || { echo "the example config has no gateway.registration to fill in"; exit 1; }
step "Generating the registration Synapse loads (the bridge's namespaces, heirloom's URL and tokens)"
./heirloom -g -c "${config}" -r "${DEMO}/registration.yaml"

stop_pid "${DEMO}/heirloom.pid"
step "Starting Synapse (pinned, in ${STATE}/venv) with heirloom's gateway registration"
start_synapse "${DEMO}/registration.yaml" "${SECRET}" "${PORT_HS}"

step "Starting ngircd on 127.0.0.1:${PORT_IRC} (its own config; not the system service)"
stop_pid "${DEMO}/ngircd.pid"
cat >"${DEMO}/ngircd.conf" <<EOF
[Global]
	Name = irc.heirloom.demo
	Info = heirloom demo IRC server
	AdminInfo1 = heirloom demo
	AdminInfo2 = 127.0.0.1
	AdminEMail = nobody@irc.heirloom.demo
	Listen = 127.0.0.1
	Ports = ${PORT_IRC}
	MotdPhrase = heirloom demo IRC server
[Limits]
	MaxNickLength = 30
	MaxPenaltyTime = 0
[Options]
	DNS = no
	Ident = no
	PAM = no
EOF
nohup "${ngircd}" --nodaemon --config "${DEMO}/ngircd.conf" >"${DEMO}/ngircd.log" 2>&1 &
echo $! >"${DEMO}/ngircd.pid"

step "Starting heirloom in gateway mode on 127.0.0.1:${PORT_AS}"
start_heirloom "${config}" "${DEMO}/heirloom.log" "${DEMO}/heirloom.pid" "${PORT_AS}" >/dev/null

step "heisenbridge behind heirloom: an IRC channel in an encrypted room"
node interop/demo-gateway.mjs --homeserver "http://127.0.0.1:${PORT_HS}" --shared-secret "${SECRET}" \
  --gateway "http://127.0.0.1:${PORT_AS}" --heisenbridge "${heisenbridge}" --heisenbridge-port "${PORT_HB}" --registration "${hb_registration}" \
  --irc "127.0.0.1:${PORT_IRC}" --log "${DEMO}/heisenbridge.log"

echo
echo "Demo finished in $(( $(date +%s) - start )) s. Synapse: http://127.0.0.1:${PORT_HS}, heirloom (gateway): http://127.0.0.1:${PORT_AS}, IRC: 127.0.0.1:${PORT_IRC}"
echo "Logs: ${DEMO}/heirloom.log, ${DEMO}/heisenbridge.log, ${DEMO}/ngircd.log. Stop them with: make stop"
