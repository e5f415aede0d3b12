#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# One-command demo on a fresh Debian 12: installs what is missing, builds, provisions a
# throwaway SoftHSM2 token, starts p11pskd, and runs an unmodified `openssl s_server` on the
# raw key against `openssl s_client` configured with a p11psk handle.
set -euo pipefail
P11PSK_ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=deps.sh
. "$P11PSK_ROOT/scripts/deps.sh"

p11psk_install_deps
echo "== building"
p11psk_build "$P11PSK_ROOT/build" -DP11PSK_TESTS=OFF >/dev/null
BIN=$P11PSK_ROOT/build/bin

D=$(mktemp -d /tmp/p11psk-demo.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$D"
}
trap cleanup EXIT

echo "== throwaway SoftHSM2 token in $D"
mkdir "$D/tokens"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$D" \
    >"$D/softhsm2.conf"
export SOFTHSM2_CONF=$D/softhsm2.conf
softhsm2-util --init-token --free --label demo --so-pin 87654321 --pin 1234 >/dev/null
(umask 077 && echo 1234 >"$D/pin")

cat >"$D/p11pskd.conf" <<EOC
module = /usr/lib/softhsm/libsofthsm2.so
token = pkcs11:token=demo
pin-source = file:$D/pin
socket = $D/p11psk.sock
allow * uid=$(id -u)
EOC
sed -e "s|^module = .*|module = $P11PSK_ROOT/build/lib/p11psk.so|" \
    -e "s|^p11psk-socket = .*|p11psk-socket = $D/p11psk.sock|" \
    "$P11PSK_ROOT/conf/openssl-p11psk.cnf" >"$D/openssl.cnf"

echo "== the PSK: generated here, imported into the token, then only the handle is used"
# softhsm2-util --import reads the file with fgets(): draw a key with no 00 or 0a byte.
for _ in $(seq 100); do
    RAW=$(openssl rand -hex 32)
    perl -e 'exit(pack("H*", $ARGV[0]) =~ /[\x00\x0a]/ ? 1 : 0)' "$RAW" && break
done
printf '%s' "$RAW" | perl -e 'print pack("H*", <STDIN>)' >"$D/psk.bin"
softhsm2-util --import "$D/psk.bin" --aes --label Client_identity --id 0102 --token demo \
    --pin 1234 >/dev/null
rm -f "$D/psk.bin"
HANDLE=$("$BIN/p11psk" --config "$D/p11pskd.conf" handle Client_identity)
echo "   handle: $HANDLE"

"$BIN/p11pskd" --config "$D/p11pskd.conf" --foreground 2>"$D/p11pskd.log" &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$D/p11psk.sock" ] && break; sleep 0.05; done

PORT=$((20000 + RANDOM % 12000))
echo "== s_server on 127.0.0.1:$PORT holds the raw key (no provider)"
OPENSSL_CONF=/dev/null timeout 30 openssl s_server -accept "127.0.0.1:$PORT" -nocert \
    -psk "$RAW" -rev -naccept 1 >"$D/server.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do ss -Hltn "sport = :$PORT" | grep -q . && break; sleep 0.05; done

echo "== s_client uses only the handle, through p11psk (OPENSSL_CONF=$D/openssl.cnf)"
GOT=$(printf 'hello through p11psk\nCLOSE\n' | OPENSSL_CONF=$D/openssl.cnf timeout 30 \
    openssl s_client -connect "127.0.0.1:$PORT" -psk "$HANDLE" -ign_eof 2>&1) || true
echo "$GOT" | grep -E 'New, TLSv1.3|Cipher is' | head -n 1 | sed 's/^/   /'
if echo "$GOT" | grep -q 'ksp11p hguorht olleh'; then
    echo "   server answered: ksp11p hguorht olleh"
    echo "== p11pskd served:"
    grep -E 'tls13' "$D/p11pskd.log" | sed 's/^/   /'
    echo "OK: TLS 1.3 PSK handshake with the key kept in the token."
else
    echo "FAILED. s_client said:"; echo "$GOT" | tail -n 15
    echo "p11pskd said:"; tail -n 15 "$D/p11pskd.log"
    exit 1
fi
