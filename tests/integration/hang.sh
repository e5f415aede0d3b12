#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A hung p11pskd (SIGSTOP): a handshake fails within p11psk-timeout-ms plus a small margin,
# with an error that names the timeout and the socket; after SIGCONT everything works
# again, also inside a process that kept running across the stop (its timed-out
# connections are dropped, so p11pskd's late answers are never taken for new ones).
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
. "$(dirname "$0")/lib.sh"
setup_token
set_provider_param p11psk-timeout-ms 1000
start_daemon

raw=$(rand_hex_importable 32)
import_aes hkey "$raw"
h=$(handle_of hkey)
TMO=1000
MARGIN=300 # in-process: a handshake's own time beyond the timeout
WALL=4000  # a whole process: start-up and provider loading (slow under the sanitizers)
pattern="service timed out.*after $TMO ms at $T/p11psk.sock"

# oneshot_timeout NAME hsloop-args...: one handshake against the stopped daemon.
oneshot_timeout() {
    local name=$1 t0 wall dur err
    shift
    t0=$(now_ms)
    hsloop "$T/openssl.cnf" "$T/one.out" -v --count 1 --client-psk "$h" --server-psk "$raw" "$@"
    wall=$(($(now_ms) - t0))
    dur=$(sed -n 's/^hs .* dur_ms=\([0-9]*\) .*/\1/p' "$T/one.out")
    err=$(sed -n 's/^hs .* fail: //p' "$T/one.out")
    log "  $name: ${dur:-?} ms in the handshake, $wall ms for the process: ${err:-no error}"
    if [ "$HS_FAILED" -ne 1 ]; then
        fail "$name: the handshake did not fail ($(tail -n 1 "$T/one.out"))"
    elif ! grep -qE "$pattern" <<<"$err"; then
        fail "$name: error does not name the timeout and socket: $err"
    elif [ "${dur:-0}" -lt "$((TMO - 50))" ] || [ "$dur" -gt "$((TMO + MARGIN))" ] ||
        [ "$wall" -gt "$((TMO + WALL))" ]; then
        fail "$name: took $dur ms ($wall ms for the process), expected $TMO ms plus a little"
    else
        pass "$name: failed after $dur ms naming the timeout"
    fi
}

# A long-running process across the stop: 2 threads, a handshake every 20 ms each.
hsloop_bg "$T/openssl.cnf" "$T/long.out" -v --threads 2 --count 150 --interval-ms 20 \
    --client-psk "$h" --server-psk "$raw"
lpid=$HS_PID
sleep 0.7

t_stop=$(now_ms)
kill -STOP "$DAEMON_PID"
ON_EXIT+=("kill -CONT $DAEMON_PID 2>/dev/null")
oneshot_timeout "tls13 stopped p11pskd, client handle" --tls13
oneshot_timeout "tls12 stopped p11pskd, server handle" --tls12 --client-psk "$raw" \
    --server-psk "$h"
# An unmodified application: openssl s_client with the handle gives up after the timeout.
expect_fail "s_client with a stopped p11pskd" "service timed out" raw "$raw" handle "$h" -tls1_3
kill -CONT "$DAEMON_PID"
t_cont=$(now_ms)
log "  p11pskd stopped for $((t_cont - t_stop)) ms"

hsloop "$T/openssl.cnf" "$T/one.out" --count 5 --client-psk "$h" --server-psk "$raw"
[ "$HS_OK" -eq 5 ] && pass "after SIGCONT: a new process handshakes (5/5)" ||
    fail "after SIGCONT: $HS_OK of 5 ok: $(tail -n 2 "$T/one.out.err")"
expect_ok "after SIGCONT: s_client with the handle" raw "$raw" handle "$h" -tls1_3

wait "$lpid" || true
hsloop_collect "$T/long.out"
# A handshake that started before SIGCONT may still time out; later ones must all work.
read -r b bb d dok dclean dbad a ba < <(hs_window "$T/long.out" "$t_stop" "$t_cont" \
    "service timed out.*after $TMO ms")
log "  long-running process: handshakes=${HS_TOTAL:-?} failed=${HS_FAILED:-?}; before the stop $b" \
    "($bb failed), during it $d ($dok ok, $dclean timed out, $dbad otherwise), after $a ($ba failed)"
if [ "${HS_TOTAL:-0}" -ne 300 ]; then
    fail "long-running process: ${HS_TOTAL:-no} summary: $(tail -n 3 "$T/long.out.err")"
elif [ "$bb" -ne 0 ] || [ "$ba" -ne 0 ] || [ "$dbad" -ne 0 ]; then
    fail "long-running process: $bb failed before the stop, $ba after SIGCONT, $dbad otherwise"
elif [ "$a" -lt 50 ] || [ "$dclean" -eq 0 ]; then
    fail "long-running process: the stop was not in the middle ($dclean timed out, $a after)"
else
    pass "long-running process: $dclean handshakes timed out while stopped, all $a after SIGCONT ok"
fi
finish
