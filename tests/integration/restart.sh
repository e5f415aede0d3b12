#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# p11pskd restarts under a running application: handshakes during the outage wait for it
# (connect is retried within the timeout) or fail with a clean "unreachable"/"connection lost"
# error, every handshake after p11pskd is back works
# (the provider reconnects by itself), and a pool whose every idle connection went stale in
# a restart is reused without a single failure (the stale connections are reopened).
. "$(dirname "$0")/lib.sh"
setup_token
start_daemon

raw=$(rand_hex_importable 32)
import_aes rkey "$raw"
h=$(handle_of rkey)
clean='service unreachable|service connection lost'

# restart_case NAME hsloop-args...: restarts p11pskd while hsloop runs, in the middle.
restart_case() {
    local name=$1 t_stop t_up
    shift
    hsloop_bg "$T/openssl.cnf" "$T/hs.out" -v --client-psk "$h" --server-psk "$raw" \
        --threads 2 --count 250 --interval-ms 10 "$@"
    # Restart early enough that plenty of handshakes run after it, even when start-up is slow.
    for _ in $(seq 100); do
        [ "$(grep -c '^hs ' "$T/hs.out" 2>/dev/null || true)" -ge 130 ] && break
        sleep 0.05
    done
    t_stop=$(now_ms)
    stop_daemon
    sleep 0.5
    start_daemon
    t_up=$(now_ms)
    wait "$HS_PID" || true
    hsloop_collect "$T/hs.out"
    read -r b bb d dok dclean dbad a ba < <(hs_window "$T/hs.out" "$t_stop" "$t_up" "$clean")
    log "  $name: handshakes=$HS_TOTAL failed=$HS_FAILED; before the restart $b ($bb failed)," \
        "during the $((t_up - t_stop)) ms outage $d ($dok ok, $dclean failed cleanly," \
        "$dbad otherwise), after $a ($ba failed)"
    if [ "${HS_TOTAL:-0}" -lt 300 ]; then
        fail "$name: only ${HS_TOTAL:-0} handshakes: $(tail -n 3 "$T/hs.out.err")"
    elif [ "$bb" -ne 0 ] || [ "$ba" -ne 0 ] || [ "$dbad" -ne 0 ]; then
        fail "$name: $bb failed before, $ba after the restart, $dbad during it with another error"
    elif [ "$a" -lt 50 ] || [ "$d" -eq 0 ]; then
        fail "$name: the restart was not in the middle ($a handshakes after it, $d during it)"
    else
        # The client retries connect() within its timeout: most handshakes of the outage wait.
        pass "$name: $a handshakes after the restart all ok; during the outage $dok waited and succeeded, $dclean failed cleanly"
    fi
}

restart_case "tls13 restart" --tls13
restart_case "tls12 restart" --tls12 --cipher PSK-AES128-GCM-SHA256

# All idle connections stale: 8 threads handshake (up to 8 connections pooled), p11pskd
# restarts while they sleep, then they take stale connections for their next handshake.
# No failure allowed.
stale_case() {
    local name=$1 t_stop t_up first second stale
    shift
    # P11PSK_DEBUG: the provider says on stderr when it finds a pooled connection stale.
    P11PSK_DEBUG=1 hsloop_bg "$T/openssl.cnf" "$T/hs.out" -v --client-psk "$h" \
        --server-psk "$raw" --threads 8 --count 2 --interval-ms 4000 "$@"
    for _ in $(seq 100); do
        [ "$(grep -c '^hs ' "$T/hs.out" 2>/dev/null || true)" -ge 8 ] && break
        sleep 0.05
    done
    t_stop=$(now_ms)
    stop_daemon
    start_daemon
    t_up=$(now_ms)
    wait "$HS_PID" || true
    hsloop_collect "$T/hs.out"
    first=$(grep -c '^hs .* n=0 .* ok$' "$T/hs.out" || true)
    second=$(grep -c '^hs .* n=1 .* ok$' "$T/hs.out" || true)
    stale=$(grep -c 'pooled connection to .* was stale' "$T/hs.out.err" || true)
    read -r b bb d dok dclean dbad a ba < <(hs_window "$T/hs.out" "$t_stop" "$t_up" "$clean")
    log "  $name: handshakes=$HS_TOTAL failed=$HS_FAILED; $first ok before the restart" \
        "($((t_up - t_stop)) ms), $second ok after it; $stale stale pooled connections reopened"
    if [ "$d" -ne 0 ]; then
        fail "$name: the restart took too long ($((t_up - t_stop)) ms): $d handshakes overlapped it"
    elif [ "${HS_TOTAL:-0}" -ne 16 ] || [ "${HS_FAILED:-1}" -ne 0 ] || [ "$second" -ne 8 ]; then
        fail "$name: $(grep -m1 'fail:' "$T/hs.out") $(tail -n 2 "$T/hs.out.err")"
    elif [ "$stale" -lt 1 ]; then
        fail "$name: the provider reported no stale pooled connection"
    else
        pass "$name: $stale stale pooled connections reopened transparently, 8/8 ok"
    fi
}

stale_case "tls13 every pooled connection stale" --tls13
stale_case "tls12 every pooled connection stale" --tls12
finish
