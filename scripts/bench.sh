#!/usr/bin/env bash
# Runs p11psk-bench on a throwaway SoftHSM2 token with a real p11pskd (log-level warn, so
# the audit log is not what is measured). Arguments go to p11psk-bench, e.g.
#   ./scripts/bench.sh                       all parts, tables
#   ./scripts/bench.sh --json service        one part, JSON lines
# P11PSK_BENCH_CONF adds p11pskd.conf lines, e.g. P11PSK_BENCH_CONF="busy-poll-us = 300".
# Builds into build/ first (with the benchmark) if needed.
set -euo pipefail
P11PSK_ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=deps.sh
. "$P11PSK_ROOT/scripts/deps.sh"
p11psk_install_deps
B=${P11PSK_BUILD:-$P11PSK_ROOT/build}
CC=${CC:-gcc} p11psk_build "$B" -DP11PSK_TESTS=ON >/dev/null

T=$(mktemp -d /tmp/p11psk-bench.XXXXXX)
DPID=
cleanup() {
    [ -n "$DPID" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
mkdir "$T/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$T/tokens" \
    >"$T/softhsm2.conf"
export SOFTHSM2_CONF=$T/softhsm2.conf
softhsm2-util --init-token --free --label p11psk-bench --so-pin 87654321 --pin 1234 >/dev/null
printf '1234\n' >"$T/pin"
chmod 0600 "$T/pin"
cat >"$T/p11pskd.conf" <<EOC
module = /usr/lib/softhsm/libsofthsm2.so
token = pkcs11:token=p11psk-bench
pin-source = file:$T/pin
socket = $T/p11psk.sock
log-level = warn
allow * uid=$(id -u)
${P11PSK_BENCH_CONF:-}
EOC
export P11PSK_CONF=$T/p11pskd.conf
cat >"$T/openssl.cnf" <<EOC
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
alg_section = evp_properties
[provider_sect]
default = default_sect
p11psk = p11psk_sect
[default_sect]
activate = 1
[p11psk_sect]
module = $B/lib/p11psk.so
p11psk-socket = $T/p11psk.sock
activate = 1
[evp_properties]
default_properties = ?p11psk.handles=yes
EOC
"$B/bin/p11pskd" --config "$T/p11pskd.conf" --foreground 2>"$T/p11pskd.log" &
DPID=$!
for _ in $(seq 100); do [ -S "$T/p11psk.sock" ] && break; sleep 0.05; done
[ -S "$T/p11psk.sock" ] || { cat "$T/p11pskd.log"; exit 1; }
echo "# $(date -u +%FT%TZ), $(nproc) CPUs, $(openssl version)" >&2
OPENSSL_CONF=$T/openssl.cnf "$B/bin/p11psk-bench" --config "$T/p11pskd.conf" "$@"
