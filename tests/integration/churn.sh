#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
# Connection churn (issue 13): a local user with no allow rule runs 8 connect-and-hang-up
# loops while good clients work. Accepting a connection must cost little (buffers from a
# pool locked at start, no readlink), the backlog is SOMAXCONN, and the churning uid is held
# to accept-rate-per-uid. The good clients, at the same time:
#  * p11psk-hsloop: in-process TLS 1.3 handshakes on a handle (the provider's connections);
#  * p11psk-badclient good: a request every 20 ms, each on a new connection;
# each must see >= 99 % success. The figures are printed.
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || skip "needs root to run the churn as a throwaway user"
U=p11psk-t$$-c
cleanup_users() { userdel "$U" 2>/dev/null || true; }
ON_EXIT+=(cleanup_users)
useradd -M -U -s /usr/sbin/nologin "$U"
BAD=$BIN/p11psk-badclient
LOOPS=8
SECS=10

setup_token
raw=$(rand_hex 32)
h=$(add_hex good "$raw")
allow_rule "socket-mode = 0666" # the churning user must reach the socket
start_daemon
SOCK=$T/p11psk.sock

# ratio OK TOTAL: "OK/TOTAL (P %)" and status 0 if P >= 99.
ratio() {
    awk -v o="$1" -v t="$2" 'BEGIN { p = t > 0 ? 100 * o / t : 0; printf "%d/%d (%.2f %%)\n", o, t, p; exit !(t > 0 && p >= 99) }'
}

churn_pids=()
c0=$(date +%s)
for i in $(seq "$LOOPS"); do
    setpriv --reuid="$U" --regid="$(id -g "$U")" --clear-groups \
        "$BAD" "$SOCK" churn 150 >"$T/churn$i.out" 2>&1 &
    churn_pids+=($!)
    PIDS+=($!)
done
sleep 1
t0=$(date +%s.%N)
hsloop_bg "$T/openssl.cnf" "$T/hs.out" --tls13 --client-psk "$h" --server-psk "$raw" \
    --count 1000 --interval-ms 10 -v
"$BAD" "$SOCK" good "$SECS" 2000 "$h" >"$T/good.out" 2>"$T/good.err" || true
HS_RC=0
wait "$HS_PID" || HS_RC=$?
hsloop_collect "$T/hs.out"
log "handshake loop exit status $HS_RC"
dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
for p in "${churn_pids[@]}"; do kill -USR1 "$p" 2>/dev/null || true; done
for p in "${churn_pids[@]}"; do wait "$p" 2>/dev/null || true; done
churn_s=$(($(date +%s) - c0))

connected=0
cfailed=0
for i in $(seq "$LOOPS"); do
    c=$(sed -n 's/^churn: connected=\([0-9]*\) .*/\1/p' "$T/churn$i.out")
    f=$(sed -n 's/^churn: .* failed=\([0-9]*\) .*/\1/p' "$T/churn$i.out")
    connected=$((connected + ${c:-0}))
    cfailed=$((cfailed + ${f:-0}))
done
refused_lines=$(grep -c 'connection refused' "$T/p11pskd.log" || true)
rate_lines=$(grep -c 'accept-rate-per-uid' "$T/p11pskd.log" || true)
log "  churn: $LOOPS loops as uid $(id -u "$U") for $churn_s s: $connected connects, $cfailed failed"
log "  p11pskd: $refused_lines 'connection refused' lines ($rate_lines naming accept-rate-per-uid)"

if r=$(ratio "$HS_OK" "$HS_TOTAL"); then
    pass "hsloop handshakes during the churn: $r in $dt s ($HS_RATE/s)"
else
    fail "hsloop handshakes during the churn: $r; first errors: $(grep -m3 'fail' "$T/hs.out" | tr '\n' ' ')"
fi
g_total=$(sed -n 's/^good: requests=\([0-9]*\) .*/\1/p' "$T/good.out")
g_ok=$(sed -n 's/^good: .* ok=\([0-9]*\) .*/\1/p' "$T/good.out")
if r=$(ratio "${g_ok:-0}" "${g_total:-0}"); then
    pass "new-connection requests during the churn: $r ($(cat "$T/good.out"))"
else
    fail "new-connection requests during the churn: $r ($(cat "$T/good.out")); $(head -n 3 "$T/good.err" | tr '\n' ' ')"
fi
[ "$connected" -gt 0 ] && pass "the churn ran ($connected connects)" || fail "the churn did not connect at all"
[ "$rate_lines" -ge 1 ] && pass "the churning uid was held to accept-rate-per-uid" ||
    fail "no accept-rate-per-uid refusal logged"
# Rate-limited: at most about one refusal line per second.
[ "$refused_lines" -le $((churn_s + 3)) ] && pass "refusal lines rate-limited ($refused_lines)" ||
    fail "$refused_lines refusal lines"
kill -0 "$DAEMON_PID" 2>/dev/null && pass "p11pskd still running" || fail "p11pskd died"
finish
