#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
# --version of both programs, p11pskd --check-config (every problem as FILE:LINE, without
# touching the token or the socket), the journald log format (JOURNAL_STREAM) and the
# sd_notify messages (STATUS=, RELOADING=1/READY=1 around a SIGHUP, a refused reload).
. "$(dirname "$0")/lib.sh"

v=$("$BIN/p11pskd" --version)
[[ $v =~ ^p11pskd\ [0-9]+\.[0-9]+\.[0-9]+$ ]] && pass "p11pskd --version: $v" ||
    fail "p11pskd --version printed '$v'"
v=$("$BIN/p11psk" --version)
[[ $v =~ ^p11psk\ [0-9]+\.[0-9]+\.[0-9]+$ ]] && pass "p11psk --version: $v" ||
    fail "p11psk --version printed '$v'"

setup_token

# A good file: ok, exit 0, and neither the socket nor a token session appears.
if out=$("$BIN/p11pskd" --check-config --config "$T/p11pskd.conf" 2>&1) &&
    [ "$out" = "$T/p11pskd.conf: ok" ] && [ ! -e "$T/p11psk.sock" ]; then
    pass "--check-config accepts the test config without creating the socket"
else
    fail "--check-config on a good file: rc/output '$out'"
fi

# A bad file: every problem reported with its line, exit 1.
cat >"$T/bad.conf" <<EOC
module = $SOFTHSM_MODULE
pin-source = file:$T/no-such-pin
bogus-key = 1
log-level = loud
allow web-* uid=p11psk-no-such-user
socket-group = p11psk-no-such-group
EOC
rc=0
"$BIN/p11pskd" --check-config --config "$T/bad.conf" >"$T/check.out" 2>&1 || rc=$?
[ "$rc" -eq 1 ] && pass "--check-config exits 1 on a bad file" ||
    fail "--check-config exit status $rc on a bad file"
for want in "bad.conf:2: cannot read PIN file $T/no-such-pin" \
    "bad.conf:3: unknown key 'bogus-key'" "bad.conf:4: log-level must be" \
    "bad.conf:5: unknown user 'p11psk-no-such-user'" \
    "bad.conf:6: unknown group 'p11psk-no-such-group'"; do
    grep -q -F -- "$want" "$T/check.out" && pass "--check-config reports '$want'" ||
        fail "--check-config lacks '$want': $(cat "$T/check.out")"
done
grep -q '/proc/self/fd' "$T/check.out" && fail "--check-config leaks its private copy's name" ||
    pass "--check-config names the real file only"
rc=0
"$BIN/p11pskd" --check-config --config "$T/missing.conf" >"$T/check.out" 2>&1 || rc=$?
[ "$rc" -eq 1 ] && grep -q "missing.conf: No such file" "$T/check.out" &&
    pass "--check-config on a missing file: $(cat "$T/check.out")" ||
    fail "--check-config on a missing file: rc $rc, $(cat "$T/check.out")"

# journald: stderr matching JOURNAL_STREAM gets "<N>" priorities and no timestamp.
: >"$T/journal.log"
js=$(stat -c '%d:%i' "$T/journal.log")
sed -e 's/^log-level = .*/log-level = info/' "$T/p11pskd.conf" >"$T/journal.conf"
printf 'socket = %s/journal.sock\n' "$T" >>"$T/journal.conf"

# A stand-in for systemd's notify socket, read by a bounded python loop.
cat >"$T/notify.py" <<'EOP'
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(20)
with open(sys.argv[2], "a") as out:
    for _ in range(50):
        try:
            msg = s.recv(4096).decode()
        except socket.timeout:
            break
        out.write(msg.replace("\n", "|") + "\n")
        out.flush()
        if "STOPPING=1" in msg:
            break
EOP
: >"$T/notify.log"
env -u LD_PRELOAD python3 "$T/notify.py" "$T/notify.sock" "$T/notify.log" &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$T/notify.sock" ] && break; sleep 0.05; done
ASAN_OPTIONS=${P11PSK_OWN_ASAN_OPTIONS:-${ASAN_OPTIONS:-}} JOURNAL_STREAM=$js \
    NOTIFY_SOCKET=$T/notify.sock "$BIN/p11pskd" --config "$T/journal.conf" --foreground 2>>"$T/journal.log" &
JPID=$!
PIDS+=("$JPID")
for _ in $(seq 100); do grep -q READY=1 "$T/notify.log" && break; sleep 0.05; done
grep -q "^READY=1|STATUS=serving token '$TOKEN_LABEL' (0 keys) on $T/journal.sock$" \
    "$T/notify.log" && pass "READY=1 with STATUS=: $(head -n1 "$T/notify.log")" ||
    fail "no READY=1/STATUS= line: $(cat "$T/notify.log")"

kill -HUP "$JPID"
for _ in $(seq 100); do [ "$(grep -c READY=1 "$T/notify.log")" -ge 2 ] && break; sleep 0.05; done
grep -q '^RELOADING=1|MONOTONIC_USEC=[0-9]*|STATUS=reloading$' "$T/notify.log" &&
    [ "$(grep -c READY=1 "$T/notify.log")" -ge 2 ] &&
    pass "SIGHUP: RELOADING=1 with MONOTONIC_USEC=, then READY=1" ||
    fail "SIGHUP notifications: $(cat "$T/notify.log")"

echo "bogus-key = 1" >>"$T/journal.conf"
kill -HUP "$JPID"
for _ in $(seq 100); do grep -q 'reload refused' "$T/notify.log" && break; sleep 0.05; done
grep -q "^READY=1|STATUS=reload refused, running the previous configuration: .*journal.conf:[0-9]*: unknown key 'bogus-key'" \
    "$T/notify.log" && pass "a refused reload is reported in STATUS=" ||
    fail "refused reload not in STATUS=: $(cat "$T/notify.log")"
kill "$JPID"
for _ in $(seq 50); do kill -0 "$JPID" 2>/dev/null || break; sleep 0.1; done
grep -q 'STOPPING=1' "$T/notify.log" && pass "STOPPING=1 on SIGTERM" ||
    fail "no STOPPING=1: $(cat "$T/notify.log")"

grep -q "^<6>info: p11pskd .* serving module" "$T/journal.log" &&
    grep -q "^<3>error: reload refused" "$T/journal.log" &&
    pass "journal stream: <6> for info, <3> for errors" ||
    fail "journal stream lines: $(head -n 5 "$T/journal.log")"
grep -q -E '^[0-9]{4}-[0-9]{2}-[0-9]{2}T' "$T/journal.log" &&
    fail "journal stream lines carry a timestamp" || pass "journal stream lines carry no timestamp"

# Without JOURNAL_STREAM (or with another file's), lines keep their timestamp.
start_daemon
for _ in $(seq 100); do grep -q 'serving module' "$T/p11pskd.log" && break; sleep 0.05; done
grep -q -E '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z p11pskd\[[0-9]+\]: info: ' "$T/p11pskd.log" &&
    pass "plain stderr keeps the timestamped format" ||
    fail "plain stderr format: $(head -n 2 "$T/p11pskd.log")"
finish
