#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# One process, many threads, all handshaking through the provider at once (in-process
# client and server over BIO pairs): no failure, no mixed-up answers (each handshake checks
# data both ways), and p11pskd really served the derivations.
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
. "$(dirname "$0")/lib.sh"
setup_token
start_daemon

raw=$(rand_hex_importable 32)
import_aes tkey "$raw"
h=$(handle_of tkey)

# thread_case NAME MIN_DERIVATIONS_PER_HANDSHAKE hsloop-args...
thread_case() {
    local name=$1 per=$2 before after
    shift 2
    before=$(daemon_requests)
    hsloop "$T/openssl.cnf" "$T/hs.out" "$@"
    sleep 0.2 # the daemon logs a request as it answers it
    after=$(daemon_requests)
    log "  $name: handshakes=$HS_TOTAL ok=$HS_OK failed=$HS_FAILED rate=${HS_RATE}/s" \
        "derivations=$((after - before))"
    if [ "$HS_RC" -ne 0 ] || [ "$HS_FAILED" -ne 0 ] || [ "$HS_OK" -eq 0 ]; then
        fail "$name: exit $HS_RC, $HS_FAILED failed: $(grep -m1 'fail:' "$T/hs.out"; tail -n 2 "$T/hs.out.err")"
    elif [ "$((after - before))" -lt "$((HS_OK * per))" ]; then
        fail "$name: only $((after - before)) derivations in p11pskd for $HS_OK handshakes"
    else
        pass "$name: $HS_OK/$HS_TOTAL ok, ${HS_RATE} handshakes/s"
    fi
}

# Each TLS 1.3 handshake side on a handle asks p11pskd for the handshake secret (the binder
# key comes from the provider's cache after the first); TLS 1.2 for the master secret.
thread_case "tls13 8x250, client handle" 1 --tls13 --threads 8 --count 250 \
    --client-psk "$h" --server-psk "$raw"
thread_case "tls13 8x250, server handle" 1 --tls13 --threads 8 --count 250 \
    --client-psk "$raw" --server-psk "$h"
thread_case "tls12 8x250, client handle" 1 --tls12 --threads 8 --count 250 \
    --client-psk "$h" --server-psk "$raw"
thread_case "tls12 8x250, server handle" 1 --tls12 --threads 8 --count 250 \
    --client-psk "$raw" --server-psk "$h"
thread_case "tls13 8x50, handles on both sides" 2 --tls13 --threads 8 --count 50 \
    --client-psk "$h" --server-psk "$h"
thread_case "tls12 8x50, handles on both sides" 2 --tls12 --threads 8 --count 50 \
    --client-psk "$h" --server-psk "$h"
thread_case "tls13 8x250, raw on both sides (reference)" 0 --tls13 --threads 8 --count 250 \
    --client-psk "$raw" --server-psk "$raw"

# Controls: the key check in each handshake does catch a mismatch, and without the provider
# a handle is just a wrong raw key.
hsloop "$T/openssl.cnf" "$T/hs.out" --threads 2 --count 5 --client-psk "$h" \
    --server-psk "$(rand_hex 32)"
[ "$HS_FAILED" -eq 10 ] && [ "$HS_RC" -eq 1 ] &&
    pass "control: a different raw key on the server fails all 10" ||
    fail "control: different keys gave $HS_OK ok, $HS_FAILED failed"
hsloop "$T/plain.cnf" "$T/hs.out" --count 2 --client-psk "$h" --server-psk "$raw"
[ "$HS_FAILED" -eq 2 ] && pass "control: without the provider the handle fails" ||
    fail "control: without the provider $HS_OK of 2 handshakes succeeded"
finish
