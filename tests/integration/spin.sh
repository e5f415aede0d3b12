#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
# Polling for p11pskd's answer instead of sleeping (p11psk-spin-us, P11PSK_SPIN_US): the
# handshakes stay correct with polling off, at its default and at its limit; the setting is
# validated and reported; and polling is bounded: a process waiting for a stopped p11pskd
# spends about p11psk-spin-us of CPU on a request, not the whole timeout.
. "$(dirname "$0")/lib.sh"
setup_token
start_daemon

raw=$(rand_hex 32)
h=$(add_hex spin "$raw" 2>"$T/add.err") || die "add: $(cat "$T/add.err")"
cp "$T/openssl.cnf" "$T/openssl.cnf.keep"

# --- Correct keys whatever the polling: TLS 1.3 with the handle on the client, TLS 1.2 on
# the server (hsloop checks data both ways through every connection).
for v in 0 200 10000; do
    cp "$T/openssl.cnf.keep" "$T/openssl.cnf"
    set_provider_param p11psk-spin-us "$v"
    hsloop "$T/openssl.cnf" "$T/hs.out" --tls13 --count 20 --client-psk "$h" --server-psk "$raw"
    ok13=$HS_OK
    hsloop "$T/openssl.cnf" "$T/hs.out" --tls12 --count 20 --client-psk "$raw" --server-psk "$h"
    [ "$ok13" -eq 20 ] && [ "$HS_OK" -eq 20 ] &&
        pass "p11psk-spin-us = $v: 20/20 TLS 1.3 and 20/20 TLS 1.2 handshakes with a raw peer" ||
        fail "p11psk-spin-us = $v: $ok13 and $HS_OK of 20 ok: $(tail -n 2 "$T/hs.out.err")"
done

# --- The environment overrides openssl.cnf, and the debug log says what is in force.
P11PSK_SPIN_US=0 P11PSK_DEBUG=1 hsloop "$T/openssl.cnf" "$T/hs.out" --tls13 --count 1 \
    --client-psk "$h" --server-psk "$raw"
grep -q 'spin up to 0 us' "$T/hs.out.err" && [ "$HS_OK" -eq 1 ] &&
    pass "P11PSK_SPIN_US=0 overrides p11psk-spin-us = 10000 (debug log: spin up to 0 us)" ||
    fail "P11PSK_SPIN_US: $(grep -m1 'loaded' "$T/hs.out.err")"

# --- Invalid values fail handle operations and name the setting and the range.
for bad in soon -1 10001; do
    cp "$T/openssl.cnf.keep" "$T/openssl.cnf"
    set_provider_param p11psk-spin-us "$bad"
    hsloop "$T/openssl.cnf" "$T/hs.out" -v --tls13 --count 1 --client-psk "$h" --server-psk "$raw"
    grep -q "p11psk-spin-us \"$bad\": expected microseconds in 0..10000" "$T/hs.out" &&
        pass "p11psk-spin-us = $bad: handle operations fail naming the setting and its range" ||
        fail "p11psk-spin-us = $bad: $(grep -m1 'fail' "$T/hs.out")"
done

# --- Bounded: with p11pskd stopped, a request waits p11psk-timeout-ms (1 s) but polls at
# most p11psk-spin-us (10 ms) of it; the rest is asleep. cpu_ms covers the whole process
# (start-up, provider loading, one handshake), so the bound is generous, yet well below
# the 1,000 ms that polling through the timeout would cost.
cp "$T/openssl.cnf.keep" "$T/openssl.cnf"
set_provider_param p11psk-spin-us 10000
set_provider_param p11psk-timeout-ms 1000
kill -STOP "$DAEMON_PID"
ON_EXIT+=("kill -CONT $DAEMON_PID 2>/dev/null")
# shellcheck disable=SC2016 # perl code
OPENSSL_CONF=$T/openssl.cnf perl -e 'system(@ARGV); my (undef, undef, $cu, $cs) = times;
    printf STDERR "%d\n", ($cu + $cs) * 1000' -- timeout 60 "$HSLOOP" -v --tls13 --count 1 \
    --client-psk "$h" --server-psk "$raw" >"$T/stopped.out" 2>"$T/stopped.cpu"
cpu_ms=$(tail -n 1 "$T/stopped.cpu")
kill -CONT "$DAEMON_PID"
log "  stopped p11pskd: $cpu_ms ms of CPU; $(grep -m1 'fail' "$T/stopped.out")"
if ! grep -q 'service timed out' "$T/stopped.out"; then
    fail "stopped p11pskd: the handshake did not time out: $(tail -n 1 "$T/stopped.out")"
elif [ "${cpu_ms:-1000}" -ge 600 ]; then
    fail "stopped p11pskd: $cpu_ms ms of CPU during a 1,000 ms wait: polling is not bounded"
else
    pass "stopped p11pskd: timed out after 1 s using $cpu_ms ms of CPU (polling bounded)"
fi
finish
