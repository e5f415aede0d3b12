#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
# Clients survive connection churn: with p11pskd behind a listener whose backlog is full
# (backlog 1, each accept delayed), concurrent CLI calls retry connect() and all succeed
# within their timeout; a provider whose socket appears only after it started connecting
# (p11pskd restarting) waits for it; a socket that never appears fails after the timeout with
# a message naming the socket, the errno and the timeout setting.
. "$(dirname "$0")/lib.sh"
setup_token
start_daemon
raw=$(rand_hex_importable 32)
import_aes rtkey "$raw"
h=$(handle_of rtkey)

# --- A full backlog: p11psk-slowrelay accepts one connection every 60 ms, backlog 1.
FRONT=$T/front.sock
"$BIN/p11psk-slowrelay" "$FRONT" "$T/p11psk.sock" 1 60 60 >"$T/relay.out" 2>&1 &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
for _ in $(seq 100); do [ -S "$FRONT" ] && break; sleep 0.05; done
[ -S "$FRONT" ] || die "relay did not start: $(cat "$T/relay.out")"

# The congestion is real: a plain non-blocking connect() (no retry) gets EAGAIN once the
# backlog holds two connections.
probe=$(python3 - "$FRONT" <<'EOP'
import errno, socket, sys
socks, res = [], "no EAGAIN in 6 connects"
for _ in range(6):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(sys.argv[1])
    except OSError as e:
        res = errno.errorcode.get(e.errno, str(e.errno))
        s.close()
        break
    socks.append(s)
print(res)
for s in socks:
    s.close()
EOP
)
[ "$probe" = EAGAIN ] && pass "the relay's backlog fills up: a plain connect gets EAGAIN" ||
    fail "backlog probe: $probe"

# Six concurrent `p11psk status` (one connection each, default 2000 ms timeout): about 0.5 s of
# accepts, so most of them find the backlog full at first.
cpids=()
start=$(now_ms)
for i in 1 2 3 4 5 6; do
    timeout 30 "$BIN/p11psk" status --socket "$FRONT" >"$T/st$i.out" 2>"$T/st$i.err" &
    cpids+=("$!")
    PIDS+=("$!")
done
ok=0
for i in 1 2 3 4 5 6; do
    if wait "${cpids[$((i - 1))]}" && grep -q "^p11pskd .* at $FRONT, up" "$T/st$i.out"; then
        ok=$((ok + 1))
    else
        log "  status $i: $(cat "$T/st$i.err")"
    fi
done
took=$(($(now_ms) - start))
[ "$ok" = 6 ] && pass "6 concurrent status calls through a full backlog all succeeded ($took ms)" ||
    fail "$ok of 6 status calls through a full backlog succeeded ($took ms)"
kill "$RELAY_PID" 2>/dev/null || true

# --- A socket that appears while the provider is connecting (p11pskd restarting).
# The socket appears 3 s after the peers start, long after s_server's first derivation began
# connecting: the handshake must succeed, and must have waited for it.
LATE=$T/late.sock
set_provider_param p11psk-timeout-ms 8000
sed -i "s|^p11psk-socket = .*|p11psk-socket = $LATE|" "$T/openssl.cnf"
(sleep 3 && exec "$BIN/p11psk-slowrelay" "$LATE" "$T/p11psk.sock" 16 0 60) >"$T/late.out" 2>&1 &
PIDS+=("$!")
start=$(now_ms)
if run_pair handle "$h" raw "$raw" -tls1_3; then
    took=$(($(now_ms) - start))
    [ "$took" -ge 2500 ] && pass "provider waited ${took} ms for a socket that appeared 3 s later" ||
        fail "handshake done in ${took} ms: it did not wait for the late socket"
else
    fail "provider did not wait for a late socket: $REASON"
fi

# --- A socket that never appears: the error after the timeout names the socket, the errno,
# how long it kept trying and the timeout setting.
sed -i "s|^p11psk-timeout-ms = .*|p11psk-timeout-ms = 400|" "$T/openssl.cnf"
sed -i "s|^p11psk-socket = .*|p11psk-socket = $T/none.sock|" "$T/openssl.cnf"
expect_fail "provider, missing socket" \
    "service unreachable:.*:at $T/none.sock: No such file or directory (still failing after [0-9]* ms) (p11psk-timeout-ms = 400)" \
    handle "$h" raw "$raw" -tls1_3
waited=$(sed -n 's/.*none.sock: No such file or directory (still failing after \([0-9]*\) ms).*/\1/p' "$T/server.out" | head -n 1)
[ "${waited:-0}" -ge 400 ] && pass "provider kept trying for its whole timeout ($waited ms >= 400)" ||
    fail "provider gave up after '${waited}' ms, before its 400 ms timeout"

rc=0
start=$(now_ms)
"$BIN/p11psk" status --socket "$T/none.sock" >"$T/out" 2>"$T/err" || rc=$?
took=$(($(now_ms) - start))
if [ "$rc" != 0 ] && grep -q "unreachable at $T/none.sock: No such file or directory (still failing after [0-9]* ms)" "$T/err" &&
    [ "$took" -ge 2000 ]; then
    pass "p11psk status, missing socket: failed after $took ms: $(cut -c 1-110 "$T/err")"
else
    fail "p11psk status, missing socket: rc $rc after $took ms: $(cat "$T/err")"
fi

finish
