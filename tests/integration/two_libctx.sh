#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
# One process, two OSSL_LIB_CTXs whose openssl.cnf name different p11psk-sockets, two
# p11pskd on two tokens: each context's handshakes on its own handle work (data round trip),
# each daemon's audit log shows only its own context's key, and context 1 given context 2's
# handle fails (its daemon does not hold that key) instead of reaching the other daemon.
. "$(dirname "$0")/lib.sh"
setup_token
start_daemon
raw1=$(rand_hex_importable 32)
import_aes ctx1key "$raw1"
h1=$(handle_of ctx1key)

# The second token and daemon, in $T/d2 (stopped by PID on exit like the first).
D2=$T/d2
mkdir -p "$D2/tokens"
cat >"$D2/softhsm2.conf" <<EOC
directories.tokendir = $D2/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOC
sed "s|^socket = .*|socket = $D2/p11psk.sock|" "$T/p11pskd.conf" >"$D2/p11pskd.conf"
sed "s|^p11psk-socket = .*|p11psk-socket = $D2/p11psk.sock|" "$T/openssl.cnf" >"$T/openssl2.cnf"
raw2=$(rand_hex_importable 32)
(
    export SOFTHSM2_CONF=$D2/softhsm2.conf
    softhsm2-util --init-token --free --label "$TOKEN_LABEL" --so-pin 87654321 \
        --pin "$USER_PIN" >/dev/null
    import_aes ctx2key "$raw2"
)
h2=$(SOFTHSM2_CONF=$D2/softhsm2.conf "$BIN/p11psk" --config "$D2/p11pskd.conf" handle ctx2key)
[ "$h1" != "$h2" ] || die "the two keys got the same handle"
SOFTHSM2_CONF=$D2/softhsm2.conf ASAN_OPTIONS=${P11PSK_OWN_ASAN_OPTIONS:-${ASAN_OPTIONS:-}} \
    "$BIN/p11pskd" --config "$D2/p11pskd.conf" --foreground >>"$D2/p11pskd.log" 2>&1 &
D2_PID=$!
PIDS+=("$D2_PID")
for _ in $(seq 100); do
    [ -S "$D2/p11psk.sock" ] && break
    kill -0 "$D2_PID" 2>/dev/null || die "second p11pskd exited: $(tail -n 5 "$D2/p11pskd.log")"
    sleep 0.05
done
[ -S "$D2/p11psk.sock" ] || die "second p11pskd socket did not appear within 5 s"

# The default context loads nothing: only the two contexts twoctx makes have the provider.
rc=0
OPENSSL_CONF=$T/plain.cnf ASAN_OPTIONS=${P11PSK_OWN_ASAN_OPTIONS:-${ASAN_OPTIONS:-}} \
    timeout 120 "$BIN/p11psk-twoctx" "$T/openssl.cnf" "$h1" "$raw1" "$T/openssl2.cnf" "$h2" \
    "$raw2" 3 >"$T/twoctx.out" 2>"$T/twoctx.err" || rc=$?
log "$(cat "$T/twoctx.out" "$T/twoctx.err")"
for i in 1 2; do
    n=$(grep -c "^ctx$i round [0-9]* ok$" "$T/twoctx.out" || true)
    [ "$n" = 3 ] && pass "context $i: 3 TLS 1.3 handshakes on its handle, data both ways" ||
        fail "context $i: $n of 3 handshakes ok: $(grep "^ctx$i round [0-9]* failed" "$T/twoctx.out" | head -n 1)"
done
grep -q "^cross failed: .*bad handle: not issued for this token" "$T/twoctx.out" &&
    pass "context 1 with context 2's handle: bad handle at its own daemon (another token's)" ||
    fail "crossed handle: $(grep '^cross' "$T/twoctx.out")"
[ "$rc" = 0 ] && pass "p11psk-twoctx exit status 0" || fail "p11psk-twoctx exit status $rc"

# Each daemon served its own context's key, and never the other's.
ops='op=tls13-(early|extract|expand)'
k1_d1=$(grep -c -E "$ops key=ctx1key result=ok" "$T/p11pskd.log" || true)
k2_d2=$(grep -c -E "$ops key=ctx2key result=ok" "$D2/p11pskd.log" || true)
k2_d1=$(grep -c "key=ctx2key" "$T/p11pskd.log" || true)
k1_d2=$(grep -c "key=ctx1key" "$D2/p11pskd.log" || true)
[ "$k1_d1" -gt 0 ] && [ "$k2_d1" = 0 ] &&
    pass "daemon 1 served ctx1key $k1_d1 times and never ctx2key" ||
    fail "daemon 1 log: ctx1key ok $k1_d1 times, ctx2key $k2_d1 times"
[ "$k2_d2" -gt 0 ] && [ "$k1_d2" = 0 ] &&
    pass "daemon 2 served ctx2key $k2_d2 times and never ctx1key" ||
    fail "daemon 2 log: ctx2key ok $k2_d2 times, ctx1key $k1_d2 times"
# The crossed request reached daemon 1 (whose handle key did not make it), and no request at
# all reached daemon 2 from it: daemon 2 logged exactly the successful ones.
grep -q -E "$ops .*result=bad-handle" "$T/p11pskd.log" &&
    pass "daemon 1 logged the crossed request as a bad handle" ||
    fail "daemon 1 log has no bad-handle request: $(grep -E "$ops" "$T/p11pskd.log" | tail -n 2)"
d2_all=$(grep -c -E "$ops" "$D2/p11pskd.log" || true)
[ "$d2_all" = "$k2_d2" ] && pass "daemon 2 logged no request but its context's ($d2_all)" ||
    fail "daemon 2 logged $d2_all requests, $k2_d2 of them ok for ctx2key"

kill "$D2_PID" 2>/dev/null || true
wait "$D2_PID" 2>/dev/null && pass "second p11pskd exited cleanly" ||
    fail "second p11pskd exit status $? on SIGTERM"
finish
