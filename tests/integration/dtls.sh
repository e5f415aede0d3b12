#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# DTLS 1.2 PSK with unmodified openssl s_server/s_client over UDP: a handle against a
# raw-key peer in both directions and handles on both sides, for plain PSK and ECDHE-PSK;
# a line each way proves both peers hold the same keys. s_server refuses -rev with DTLS,
# so both peers read their stdin from a FIFO that the test writes to.
. "$(dirname "$0")/lib.sh"
setup_token
start_daemon

raw=$(rand_hex_importable 32)
import_aes dtls-imported "$raw"
h=$(handle_of dtls-imported)
raw2=$(rand_hex_importable 32)
h2=$(add_hex dtls-added "$raw2")

wait_udp_port() {
    local port=$1 pid=$2
    for _ in $(seq 100); do
        ss -Hlun "sport = :$port" | grep -q . && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# wait_line FILE TEXT PID: until FILE holds the line TEXT (bounded: $WAIT_TENTHS tenths
# of a second, and no longer than PID lives).
WAIT_TENTHS=100
wait_line() {
    for _ in $(seq "$WAIT_TENTHS"); do
        grep -q -x -F -- "$2" "$1" && return 0
        kill -0 "$3" 2>/dev/null || break
        sleep 0.1
    done
    grep -q -x -F -- "$2" "$1"
}

stop_pid() {
    kill "$1" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# run_dtls SERVER_KIND SERVER_KEY CLIENT_KIND CLIENT_KEY [openssl options for both...]
# s_server -dtls1_2 and s_client -dtls1_2 on 127.0.0.1 UDP, identity p11psk-dtls; a
# random line goes client -> server, then another server -> client. Leaves the server's
# output in $T/server.out and a reason in $REASON.
run_dtls() {
    local skind=$1 skey=$2 ckind=$3 ckey=$4
    shift 4
    local port spid cpid up down rc=1
    port=$(free_port)
    up="up-$(rand_hex 8)"
    down="down-$(rand_hex 8)"
    rm -f "$T/srv.in" "$T/cli.in"
    mkfifo "$T/srv.in" "$T/cli.in"
    # Held open read-write by this shell: neither peer sees EOF on stdin, and opening
    # them does not block.
    exec 3<>"$T/srv.in" 4<>"$T/cli.in"
    : >"$T/server.out"
    : >"$T/client.out"
    : >"$T/client.err"
    OPENSSL_CONF=$(ossl_conf "$skind") timeout 20 openssl s_server -dtls1_2 \
        -accept "127.0.0.1:$port" -nocert -psk "$skey" -psk_identity p11psk-dtls \
        -naccept 1 "$@" <"$T/srv.in" >"$T/server.out" 2>&1 &
    spid=$!
    PIDS+=("$spid")
    if ! wait_udp_port "$port" "$spid"; then
        REASON="s_server did not bind: $(tail -n 3 "$T/server.out" | tr '\n' ' ')"
    else
        OPENSSL_CONF=$(ossl_conf "$ckind") timeout 20 openssl s_client -dtls1_2 \
            -connect "127.0.0.1:$port" -psk "$ckey" -psk_identity p11psk-dtls -quiet "$@" \
            <"$T/cli.in" >"$T/client.out" 2>"$T/client.err" &
        cpid=$!
        PIDS+=("$cpid")
        printf '%s\n' "$up" >&4
        if ! wait_line "$T/server.out" "$up" "$cpid"; then
            REASON="client's line did not reach the server; client: $(grep -v -e '^depth' "$T/client.err" | tail -n 3 | tr '\n' ' ') server: $(tail -n 3 "$T/server.out" | tr '\n' ' ')"
        else
            printf '%s\n' "$down" >&3
            if wait_line "$T/client.out" "$down" "$cpid"; then
                REASON=
                rc=0
            else
                REASON="server's line did not reach the client: $(tail -n 3 "$T/client.err" | tr '\n' ' ')"
            fi
        fi
        stop_pid "$cpid"
    fi
    stop_pid "$spid"
    exec 3>&- 4>&-
    return $rc
}

# check_session NAME SUITE: the session s_server printed is DTLS 1.2 with that suite.
check_session() {
    local proto
    sed -n '/BEGIN SSL SESSION PARAMETERS/,/END SSL SESSION PARAMETERS/p' "$T/server.out" \
        >"$T/session.pem"
    proto=$(openssl sess_id -in "$T/session.pem" -noout -text 2>&1 |
        sed -n 's/^ *Protocol *: *//p') || true
    if [ "$proto" = DTLSv1.2 ] && grep -q -x "CIPHER is $2" "$T/server.out"; then
        return 0
    fi
    fail "$1: s_server's session: protocol '$proto', $(grep '^CIPHER is' "$T/server.out")"
    return 1
}

# ops_since LINE: the derivation requests p11pskd logged from LINE on.
ops_since() { tail -n "+$1" "$T/p11pskd.log" | grep -E ' op=' || true; }
next_line() { echo $(($(wc -l <"$T/p11pskd.log") + 1)); }

# dtls_case NAME PROCS SERVER_KIND SERVER_KEY CLIENT_KIND CLIENT_KEY SUITE: a round trip,
# the session's protocol and suite, and TLS 1.2 PRF requests in p11pskd, all ok, from
# exactly PROCS processes (the peers holding handles).
dtls_case() {
    local name=$1 procs=$2 suite=$7 from ops n bad got
    from=$(next_line)
    if ! run_dtls "$3" "$4" "$5" "$6" -cipher "$suite"; then
        fail "$name: $REASON"
        return
    fi
    check_session "$name" "$suite" || return 0
    ops=$(ops_since "$from")
    n=$(printf '%s\n' "$ops" | grep -c 'op=tls12-prf .*result=ok') || true
    bad=$(printf '%s\n' "$ops" | grep -v -c -e '^$' -e 'op=tls12-prf .*result=ok') || true
    got=$(printf '%s\n' "$ops" | grep -o 'pid=[0-9]*' | sort -u | wc -l) || true
    if [ "$bad" -ne 0 ]; then
        fail "$name: unexpected p11pskd requests: $(printf '%s\n' "$ops" | grep -v 'op=tls12-prf .*result=ok' | head -n 2)"
    elif [ "$got" -ne "$procs" ] || [ "$n" -lt "$procs" ]; then
        fail "$name: round trip, but $n PRF requests from $got processes in p11pskd (want $procs)"
    else
        pass "$name: DTLSv1.2 $suite, line each way ($n tls12-prf requests from $procs processes)"
    fi
}

for suite in PSK-AES128-GCM-SHA256 ECDHE-PSK-AES128-CBC-SHA256; do
    dtls_case "dtls server handle, client raw" 1 handle "$h" raw "$raw" "$suite"
    dtls_case "dtls client handle, server raw" 1 raw "$raw" handle "$h" "$suite"
    dtls_case "dtls handles on both sides" 2 handle "$h" handle "$h" "$suite"
    dtls_case "dtls added key, handles on both sides" 2 handle "$h2" handle "$h2" "$suite"
done
dtls_case "dtls added key, server handle, client raw" 1 handle "$h2" raw "$raw2" PSK-AES128-GCM-SHA256

# Negative: a wrong raw key against a handle gets no line through, either way round.
# DTLS drops records that fail their MAC instead of raising an alert, so a wrong key shows
# as a handshake that never completes (the client keeps retransmitting its Finished): a
# correct pair makes the round trip well under a second, here 4 s pass without one.
wrong=$(rand_hex 32)
WAIT_TENTHS=40
for side in client server; do
    if [ "$side" = client ]; then
        args=(handle "$h" raw "$wrong")
    else
        args=(raw "$wrong" handle "$h")
    fi
    if run_dtls "${args[@]}" -cipher PSK-AES128-GCM-SHA256; then
        fail "dtls wrong $side key: round trip succeeded"
    elif grep -q '^CIPHER is' "$T/server.out"; then
        fail "dtls wrong $side key: s_server completed the handshake"
    elif [ "${REASON#client\'s line did not reach}" = "$REASON" ]; then
        fail "dtls wrong $side key: $REASON"
    else
        pass "dtls wrong raw $side key against a handle: handshake never completes, no data"
    fi
done
WAIT_TENTHS=100
finish
