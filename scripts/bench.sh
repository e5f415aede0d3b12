#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs p11psk-bench with a real p11pskd (log-level warn, so the audit log is not what is
# measured) on a SoftHSM2 token, and prints its tables under a header saying where and when
# they were measured (date, kernel, CPUs, CPU model, OpenSSL).
#   ./scripts/bench.sh                          everything, defaults (7 rounds x 2 s per mode)
#   ./scripts/bench.sh results.txt              the same, also written to results.txt
#   ./scripts/bench.sh out.txt handshakes       a first argument not starting with '-' and not
#                                               a part name is the output file; the rest goes
#                                               to p11psk-bench (see its --help)
# Environment:
#   P11PSK_BENCH_ROUNDS=7        interleaved rounds per handshake mode (>= 7 to decide on)
#   P11PSK_BENCH_SECONDS=2       handshake seconds per mode per round; also per service row
#   P11PSK_BENCH_SCALE_KEYS=10000  key counts of the scaling part, e.g. 1000,10000
#   P11PSK_BENCH_MAKE_KEYS=1     create those keys if the token lacks them (about 10 s per
#                                1,000 on SoftHSM2, once); without it such rows are skipped,
#                                so that a default run stays within about 5 minutes
#   P11PSK_BENCH_TOKEN_DIR       where the token lives between runs, so the keys are made
#                                only once (default: bench-token in the build dir; test keys
#                                only, delete it to start afresh)
#   P11PSK_BENCH_CONF            extra p11pskd.conf lines, e.g. "busy-poll-us = 300"
# Builds into build/ first (with the benchmark) if needed.
set -euo pipefail
P11PSK_ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=deps.sh
. "$P11PSK_ROOT/scripts/deps.sh"

OUT=
if [ $# -gt 0 ] && [[ $1 != -* ]] && [[ ! $1 =~ ^(handshakes|service|scaling)$ ]]; then
    OUT=$1
    shift
    : >"$OUT" # fail now, not after minutes of measuring
fi

p11psk_install_deps
B=${P11PSK_BUILD:-$P11PSK_ROOT/build}
CC=${CC:-gcc} p11psk_build "$B" -DP11PSK_TESTS=ON >/dev/null

TOKENS=${P11PSK_BENCH_TOKEN_DIR:-$B/bench-token}
T=$(mktemp -d /tmp/p11psk-bench.XXXXXX)
DPID=
# shellcheck disable=SC2317 # cleanup runs from the EXIT trap
cleanup() {
    if [ -n "$DPID" ]; then
        kill "$DPID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$DPID" 2>/dev/null || true
    fi
    rm -rf "$T"
}
trap cleanup EXIT
mkdir -p "$TOKENS"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$TOKENS" \
    >"$T/softhsm2.conf"
export SOFTHSM2_CONF=$T/softhsm2.conf
if ! softhsm2-util --show-slots 2>/dev/null | grep -q 'Label: *p11psk-bench *$'; then
    softhsm2-util --init-token --free --label p11psk-bench --so-pin 87654321 --pin 1234 >/dev/null
fi
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

cpu=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1)
{
    echo "# p11psk-bench $(date -u '+%F %T UTC'), kernel $(uname -r), $(nproc) CPUs, ${cpu:-CPU model unknown}"
    echo "# $(openssl version), p11psk $(git -C "$P11PSK_ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    echo
} | tee ${OUT:+"$OUT"}
make_keys=()
[ "${P11PSK_BENCH_MAKE_KEYS:-0}" = 1 ] && make_keys=(--make-keys)
set +e
OPENSSL_CONF=$T/openssl.cnf "$B/bin/p11psk-bench" --config "$T/p11pskd.conf" \
    --rounds "${P11PSK_BENCH_ROUNDS:-7}" --seconds "${P11PSK_BENCH_SECONDS:-2}" \
    --scale-keys "${P11PSK_BENCH_SCALE_KEYS:-10000}" \
    "${make_keys[@]}" "$@" | tee ${OUT:+-a "$OUT"}
rc=${PIPESTATUS[0]}
set -e
[ -z "$OUT" ] || echo "written to $OUT" >&2
if [ "$rc" -ne 0 ] && [ -s "$T/p11pskd.log" ]; then
    echo "--- p11pskd log (last 20 lines)" >&2
    tail -n 20 "$T/p11pskd.log" >&2
fi
exit "$rc"
