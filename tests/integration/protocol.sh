#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The wire protocol against the real p11pskd: malformed frames get an error response and
# the connection is closed; the daemon keeps serving everyone else.
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
. "$(dirname "$0")/lib.sh"
setup_token
start_daemon
PROBE=$BIN/p11psk-wireprobe
SOCK=$T/p11psk.sock
PING=000000020101

# probe_case NAME EXPECTED-OUTPUT HEX...: the probe's output (one line per frame sent, then
# open/eof) must equal EXPECTED-OUTPUT, with the MSG text cut off.
probe_case() {
    local name=$1 want=$2 got
    shift 2
    got=$(timeout 20 "$PROBE" "$SOCK" "$@" | sed 's/ msg=.*//' | paste -sd' ')
    if [ "$got" = "$want" ]; then pass "$name: $got"; else fail "$name: got '$got', want '$want'"; fi
}

probe_case "ping twice on one connection" "status=ok status=ok open" $PING $PING
probe_case "unknown protocol version" "status=bad request eof" 000000020701
probe_case "unknown op" "status=bad request eof" 000000020177
probe_case "oversized frame header" "status=bad request eof" 7fffffff01
probe_case "frame shorter than a body" "status=bad request eof" 0000000101
probe_case "field runs past the frame" "status=bad request eof" 00000006011001002001
probe_case "unknown tag" "status=bad request eof" 0000000601017f000100
probe_case "duplicate tag" "status=bad request eof" \
    0000000a0110010001010100010200
probe_case "early request without a handle" "status=bad request eof" 00000006011001000102
probe_case "bad request after a good one" "status=ok status=bad request eof" $PING 000000020901

# A client that sends half a header and hangs up, and one that sends a header and no body:
# neither may stall the daemon for others.
timeout 5 "$PROBE" "$SOCK" 0000 >/dev/null &
PIDS+=($!)
timeout 5 "$PROBE" "$SOCK" 00000010 >/dev/null &
PIDS+=($!)
sleep 0.3
probe_case "served while others hold partial frames" "status=ok open" $PING

# The error text must say what was wrong, for the operator.
msg=$(timeout 20 "$PROBE" "$SOCK" 000000020701 | head -n 1)
case $msg in
*version*) pass "bad version is named: $msg" ;;
*) fail "bad version not named: $msg" ;;
esac
kill -0 "$DAEMON_PID" 2>/dev/null && pass "p11pskd still running" || fail "p11pskd died"
n=$(grep -c 'result=bad-request' "$T/p11pskd.log" || true)
[ "$n" -ge 9 ] && pass "p11pskd logged $n bad requests" || fail "p11pskd logged $n bad requests"
finish
