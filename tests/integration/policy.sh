#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Daemon policy: allow-psk-ke, readable-keys, digests and rate-limit, each shown refusing
# with a reason that names the setting, next to a control that the same handshake works
# when the policy allows it. Bad values are startup errors naming the line.
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
. "$(dirname "$0")/lib.sh"
setup_token
BASE=$(cat "$T/p11pskd.conf")

# with_policy LINES...: restarts p11pskd with the base config plus these lines.
with_policy() {
    stop_daemon
    { printf '%s\n' "$BASE"; printf '%s\n' "$@"; } >"$T/p11pskd.conf"
    start_daemon
}

for bad in "allow-psk-ke = maybe" "readable-keys = 1x" "digests = MD5" "rate-limit = fast"; do
    { printf '%s\n' "$BASE"; printf '%s\n' "$bad"; } >"$T/bad.conf"
    line=$(wc -l <"$T/bad.conf")
    if "$BIN/p11pskd" --config "$T/bad.conf" --foreground >"$T/bad.out" 2>&1; then
        fail "'$bad' accepted"
    elif grep -q "bad.conf:$line: ${bad%% *}" "$T/bad.out"; then
        pass "'$bad' refused: $(head -n 1 "$T/bad.out")"
    else
        fail "'$bad': $(cat "$T/bad.out")"
    fi
done

raw=$(rand_hex_importable 32)
import_aes k32 "$raw"
h=$(handle_of k32)
raw16=$(rand_hex 16)
h16=$(add_hex r16 "$raw16" --readable)

# --- digests
with_policy "digests = SHA256"
expect_ok "digests = SHA256: TLS_AES_128_GCM_SHA256 served" raw "$raw" handle "$h" -tls1_3 \
    -ciphersuites TLS_AES_128_GCM_SHA256
# `-psk` always makes a SHA-256 session; SHA-384 needs session files.
"$BIN/p11psk-mksess" TLS_AES_256_GCM_SHA384 "$raw" "$T/raw384.pem"
"$BIN/p11psk-mksess" TLS_AES_256_GCM_SHA384 "$h" "$T/handle384.pem"
expect_fail "digests = SHA256: TLS_AES_256_GCM_SHA384 refused" "SHA384 is not in .digests = SHA256" \
    raw "session:$T/raw384.pem" handle "session:$T/handle384.pem" -tls1_3 \
    -ciphersuites TLS_AES_256_GCM_SHA384
with_policy "digests = sha256, sha384"
expect_ok "digests = both: TLS_AES_256_GCM_SHA384 served" raw "session:$T/raw384.pem" \
    handle "session:$T/handle384.pem" -tls1_3 -ciphersuites TLS_AES_256_GCM_SHA384

# --- readable-keys: a 16-byte key needs its value for TLS 1.2 plain PSK (ladder step 3)
with_policy "readable-keys = yes"
expect_ok "readable-keys = yes: 16-byte readable key, TLS 1.2" raw "$raw16" handle "$h16" \
    -tls1_2 -cipher PSK-AES128-GCM-SHA256
with_policy "readable-keys = no"
expect_fail "readable-keys = no: value never read" "readable-keys = no" raw "$raw16" handle "$h16" \
    -tls1_2 -cipher PSK-AES128-GCM-SHA256
expect_ok "readable-keys = no: 32-byte key still served in the token" raw "$raw" handle "$h" \
    -tls1_2 -cipher PSK-AES128-GCM-SHA256
if grep 'key=r16 ' "$T/p11pskd.log" | tail -n 1 | grep -q 'result=refused-by-policy'; then
    pass "strict-mode refusal logged as refused-by-policy"
else
    fail "r16 refusal not logged: $(grep 'key=r16 ' "$T/p11pskd.log" | tail -n 1)"
fi

# --- allow-psk-ke: gnutls-cli offers psk_ke only (PSK without (EC)DHE), against s_server
# on the handle; psk_ke makes the handshake secret a PSK-equivalent in the app.
psk_ke_case() {
    local name=$1 want=$2 port spid msg got
    port=$(free_port)
    msg="pskke-$RANDOM"
    OPENSSL_CONF=$T/openssl.cnf timeout 20 openssl s_server -accept "127.0.0.1:$port" -nocert \
        -psk "$h" -psk_identity Client_identity -rev -naccept 1 -tls1_3 -allow_no_dhe_kex \
        >"$T/server.out" 2>&1 &
    spid=$!
    PIDS+=("$spid")
    wait_port "$port" "$spid" || { fail "$name: s_server did not listen"; return; }
    got=$({ printf '%s\n' "$msg"; sleep 1; } | timeout 10 gnutls-cli 127.0.0.1 -p "$port" \
        --pskusername Client_identity --pskkey "$raw" \
        --priority 'NORMAL:-VERS-ALL:+VERS-TLS1.3:-KX-ALL:+PSK' 2>&1 | grep -F -x "$(reverse "$msg")") || true
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    if [ "$want" = ok ]; then
        [ -n "$got" ] && pass "$name" || fail "$name: no round trip: $(tail -n 3 "$T/server.out")"
    elif [ -n "$got" ]; then
        fail "$name: psk_ke handshake succeeded"
    elif grep -q 'psk_ke (PSK without (EC)DHE) is refused by allow-psk-ke = no' "$T/server.out"; then
        pass "$name: refused, and the app's error names allow-psk-ke"
    else
        fail "$name: error lacks the reason: $(tail -n 3 "$T/server.out")"
    fi
}
with_policy # the default
psk_ke_case "allow-psk-ke default (no): psk_ke refused" refused
expect_ok "allow-psk-ke = no: psk_dhe_ke still works" raw "$raw" handle "$h" -tls1_3
with_policy "allow-psk-ke = yes"
psk_ke_case "allow-psk-ke = yes: psk_ke served" ok

# --- rate-limit: per peer uid, one second's worth of burst
with_policy "rate-limit = 10"
PING=000000020101
pings=()
for _ in $(seq 25); do pings+=("$PING"); done
"$BIN/p11psk-wireprobe" "$T/p11psk.sock" "${pings[@]}" >"$T/probe.out" || true
okn=$(grep -c '^status=ok' "$T/probe.out" || true)
refused=$(grep -c '^status=refused by policy msg=rate limit: uid 0 made more than 10 requests per second' "$T/probe.out" || true)
if [ "$okn" -ge 10 ] && [ "$okn" -le 12 ] && [ "$refused" = $((25 - okn)) ]; then
    pass "rate-limit = 10: $okn of 25 back-to-back requests served, $refused refused"
else
    fail "rate-limit: $okn ok, $refused refused: $(sort "$T/probe.out" | uniq -c)"
fi
sleep 1.2
"$BIN/p11psk-wireprobe" "$T/p11psk.sock" $PING $PING $PING >"$T/probe.out" || true
[ "$(grep -c '^status=ok' "$T/probe.out")" = 3 ] && pass "rate-limit: served again after a second" ||
    fail "rate-limit: still refused: $(cat "$T/probe.out")"
finish
