#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# p11pskd under signals and systemd: SIGHUP reloads the ACL without dropping connections
# and refuses a bad file; SIGTERM answers requests that have arrived, then exits 0;
# socket activation (systemd-socket-activate) serves on the passed socket.
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
. "$(dirname "$0")/lib.sh"
setup_token
start_daemon
raw=$(rand_hex_importable 32)
import_aes sig "$raw"
h=$(handle_of sig)

# pinger SOCKET CTLDIR: one connection; sends a PING whenever CTLDIR/go-N appears (N = 1,
# 2, ...), writes the answer's status byte to CTLDIR/ans-N ("eof" if the daemon closed).
cat >"$T/pinger.pl" <<'EOP'
use strict; use IO::Socket::UNIX; use Time::HiRes qw(sleep);
my ($path, $dir) = @ARGV;
my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $path) or die "connect: $!";
for my $n (1 .. 9) {
    my $t = 0;
    until (-e "$dir/go-$n") { sleep 0.05; exit 0 if ++$t > 600; }
    print $s pack("H*", "000000020101");
    my ($hdr, $body) = ("", "");
    my $r = read($s, $hdr, 4);
    my $ans = "eof";
    if ($r == 4) { read($s, $body, unpack("N", $hdr)); $ans = unpack("C", substr($body, 1, 1)); }
    open(my $f, ">", "$dir/ans-$n.tmp"); print $f "$ans\n"; close $f;
    rename("$dir/ans-$n.tmp", "$dir/ans-$n");
}
EOP
ask() { # ask N: asks the pinger for request N, prints the answer (0 = ok)
    touch "$T/ctl/go-$1"
    for _ in $(seq 100); do [ -e "$T/ctl/ans-$1" ] && break; sleep 0.05; done
    cat "$T/ctl/ans-$1" 2>/dev/null || echo none
}
mkdir "$T/ctl"
perl "$T/pinger.pl" "$T/p11psk.sock" "$T/ctl" &
PIDS+=($!)
[ "$(ask 1)" = 0 ] && pass "persistent connection: first ping answered" || fail "first ping"

# --- SIGHUP: a new ACL applies to the next handshake; the old connection stays.
expect_ok "before reload: allowed" raw "$raw" handle "$h" -tls1_3
sed -i 's/^allow \* uid=0$/allow other-* uid=0/' "$T/p11pskd.conf"
kill -HUP "$DAEMON_PID"
for _ in $(seq 50); do grep -q 'reloaded .*p11pskd.conf' "$T/p11pskd.log" && break; sleep 0.1; done
grep -q 'reloaded .*p11pskd.conf: 1 allow rules' "$T/p11pskd.log" && pass "SIGHUP: reloaded and logged" ||
    fail "no reload line"
expect_fail "after reload: the new ACL denies" "access denied" raw "$raw" handle "$h" -tls1_3
[ "$(ask 2)" = 0 ] && pass "persistent connection survived the reload" || fail "connection dropped by reload"

# --- SIGHUP with a broken file: refused, the running configuration stays.
sed -i 's/^allow other-\* uid=0$/allow * uid=0/' "$T/p11pskd.conf"
kill -HUP "$DAEMON_PID"
for _ in $(seq 50); do [ "$(grep -c 'reloaded' "$T/p11pskd.log")" -ge 2 ] && break; sleep 0.1; done
expect_ok "reload back: allowed again" raw "$raw" handle "$h" -tls1_3
printf 'allow-psk-ke = perhaps\n' >>"$T/p11pskd.conf"
kill -HUP "$DAEMON_PID"
for _ in $(seq 50); do grep -q 'reload refused' "$T/p11pskd.log" && break; sleep 0.1; done
line=$(wc -l <"$T/p11pskd.conf")
grep -q "reload refused, keeping the running configuration: .*p11pskd.conf:$line: allow-psk-ke" \
    "$T/p11pskd.log" && pass "bad file on SIGHUP refused, naming the line" || fail "no refusal line"
kill -0 "$DAEMON_PID" && expect_ok "after a refused reload: still serving the old ACL" raw "$raw" \
    handle "$h" -tls1_3
sed -i '$d' "$T/p11pskd.conf"

# --- SIGTERM: a request that has fully arrived is answered before the exit.
kill -STOP "$DAEMON_PID"
touch "$T/ctl/go-3" # the ping waits in the socket buffer
sleep 0.3
kill -TERM "$DAEMON_PID"
kill -CONT "$DAEMON_PID"
for _ in $(seq 100); do [ -e "$T/ctl/ans-3" ] && break; sleep 0.05; done
[ "$(cat "$T/ctl/ans-3" 2>/dev/null)" = 0 ] && pass "SIGTERM: the request in flight was answered" ||
    fail "SIGTERM: in-flight request got $(cat "$T/ctl/ans-3" 2>/dev/null || echo nothing)"
if wait "$DAEMON_PID"; then pass "SIGTERM: exit status 0"; else fail "SIGTERM: exit status $?"; fi
DAEMON_PID=
[ ! -e "$T/p11psk.sock" ] && pass "socket file removed" || fail "socket file left behind"

# --- socket activation: systemd-socket-activate binds, p11pskd serves fd 3.
if command -v systemd-socket-activate >/dev/null; then
    # It starts p11pskd at the first connection, with only the environment passed by -E.
    ASAN_OPTIONS=${P11PSK_OWN_ASAN_OPTIONS:-${ASAN_OPTIONS:-}} systemd-socket-activate \
        -E SOFTHSM2_CONF -E ASAN_OPTIONS -E LD_PRELOAD -l "$T/p11psk.sock" "$BIN/p11pskd" --config "$T/p11pskd.conf" --foreground \
        >>"$T/p11pskd.log" 2>&1 &
    apid=$!
    PIDS+=("$apid")
    for _ in $(seq 50); do [ -S "$T/p11psk.sock" ] && break; sleep 0.1; done
    expect_ok "socket activation: handshake through the passed socket" raw "$raw" handle "$h" -tls1_3
    grep -q "socket $T/p11psk.sock (from systemd)" "$T/p11pskd.log" &&
        pass "socket activation: p11pskd used the passed socket" || fail "no 'from systemd' line"
    kill "$apid"
    wait "$apid" 2>/dev/null && pass "activated p11pskd exited cleanly" || fail "activated exit $?"
    [ -S "$T/p11psk.sock" ] && pass "activated socket file left to systemd" ||
        fail "p11pskd removed systemd's socket file"
else
    fail "systemd-socket-activate (package systemd) is missing"
fi
finish
