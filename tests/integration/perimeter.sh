#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
# p11pskd's perimeter (issue 13):
#  * where it binds: a socket directory owned by another user, a symlink on the path, a
#    group-writable or sticky world-writable socket directory are refused with the directory
#    and the fix; once fixed, p11pskd starts;
#  * unsafe files: a PIN file others may read (0644) or a group other than ours may read, a
#    config file others may write (0666) or another user owns: refused at start with exit
#    status 78 and the fix, and refused on reload (the running configuration stays);
#  * the audit line: a key label with a newline and one with " result=ok" give exactly one
#    line per request with the label escaped; `p11psk add` refuses control characters.
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || skip "needs root to create a throwaway user and chown files to it"
U=p11psk-t$$-p
G=p11psk-t$$-g
cleanup_users() {
    userdel "$U" 2>/dev/null || true
    groupdel "$G" 2>/dev/null || true
}
ON_EXIT+=(cleanup_users)
groupadd "$G"
useradd -M -N -g "$G" -s /usr/sbin/nologin "$U"
uid_u=$(id -u "$U")

setup_token
raw=$(rand_hex 32)
add_hex plain "$raw" >/dev/null # for the allow rule of the denial check

# try_start CONF: runs p11pskd in the foreground with CONF; if it serves (its socket is
# there and it logged "serving with") within 10 s it is stopped and START_RC is "up", else
# START_RC is its exit status. Output in $T/try.out. (The socket appears before the token is
# open: stopping it then would kill it in the middle of opening the token.)
try_start() {
    local conf=$1 sock pid
    sock=$(sed -n 's/^socket = //p' "$conf")
    "$BIN/p11pskd" --config "$conf" --foreground >"$T/try.out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    START_RC=
    for _ in $(seq 200); do
        if [ -S "$sock" ] && grep -q 'serving with' "$T/try.out"; then
            kill "$pid"
            wait "$pid" 2>/dev/null || true
            START_RC=up
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    START_RC=0
    wait "$pid" || START_RC=$?
    [ -n "$START_RC" ] || START_RC=timeout
}

# conf_with SOCKET: a copy of the test config with another socket path; prints its name.
conf_with() {
    local c=$T/sock-$RANDOM.conf
    sed "s|^socket = .*|socket = $1|" "$T/p11pskd.conf" >"$c"
    echo "$c"
}

# refused NAME PATTERN [STATUS]: the last try_start failed (with STATUS if given) and said
# PATTERN (a fixed string).
refused() {
    local name=$1 pat=$2 want=${3:-}
    if [ "$START_RC" = up ]; then
        fail "$name: p11pskd started"
    elif [ -n "$want" ] && [ "$START_RC" != "$want" ]; then
        fail "$name: exit status $START_RC, not $want: $(tail -n 2 "$T/try.out" | tr '\n' ' ')"
    elif grep -q -F -- "$pat" "$T/try.out"; then
        pass "$name: refused ($(grep -m1 -F -- "$pat" "$T/try.out" | sed 's/.*p11pskd[^:]*: //'))"
    else
        fail "$name: message lacks '$pat': $(tail -n 2 "$T/try.out" | tr '\n' ' ')"
    fi
}

started() {
    if [ "$START_RC" = up ]; then pass "$1"; else fail "$1: $START_RC: $(tail -n 2 "$T/try.out" | tr '\n' ' ')"; fi
}

# --- 1. Where it binds ---
mkdir "$T/other"
chown "$U" "$T/other"
c=$(conf_with "$T/other/p.sock")
try_start "$c"
refused "socket directory owned by another user" \
    "socket directory $T/other is owned by uid $uid_u (must be root or p11pskd's user, uid 0) — remove it or chown it" 1
[ ! -e "$T/other/p.sock" ] && pass "nothing was bound in it" || fail "a socket was bound in $T/other"
chown root "$T/other"
try_start "$c"
started "starts once the directory is chowned to root"

# A directory another user owns higher up the path (not only the socket's own).
mkdir -p "$T/up/sub"
chown "$U" "$T/up"
c=$(conf_with "$T/up/sub/p.sock")
try_start "$c"
refused "a directory owned by another user above the socket's" \
    "socket directory $T/up is owned by uid $uid_u" 1

mkdir "$T/real"
ln -s "$T/real" "$T/link"
c=$(conf_with "$T/link/p.sock")
try_start "$c"
refused "symlinked socket directory" \
    "$T/link is a symbolic link; p11pskd follows none on the socket's path" 1
[ ! -e "$T/real/p.sock" ] && pass "nothing was bound through the link" ||
    fail "a socket was bound through the link"
c=$(conf_with "$T/real/p.sock")
try_start "$c"
started "starts with the real path"

mkdir "$T/gw"
chmod 0775 "$T/gw"
c=$(conf_with "$T/gw/p.sock")
try_start "$c"
refused "group-writable socket directory" "socket directory $T/gw has mode 0775" 1
chmod 0755 "$T/gw"
try_start "$c"
started "starts once the directory is chmod go-w"

# /tmp is sticky and world-writable: fine above (our $T is in it), not as the socket's own.
c=$(conf_with "/tmp/p11psk-t$$.sock")
try_start "$c"
refused "sticky world-writable /tmp as the socket's directory" "socket directory /tmp has mode 1777" 1
rm -f "/tmp/p11psk-t$$.sock"

# Missing directories are created (0750), without following anything.
c=$(conf_with "$T/new/deeper/p.sock")
try_start "$c"
started "creates missing socket directories"
mode=$(stat -c %a "$T/new/deeper")
[ "$mode" = 750 ] && pass "created directory has mode 0750" || fail "created directory has mode $mode"

# --- 2. Unsafe files, at start ---
chmod 0644 "$T/pin"
try_start "$T/p11pskd.conf"
refused "world-readable PIN file (0644), exit status 78" \
    "PIN file $T/pin has mode 0644 and owner uid 0 gid 0: every user may read or change it; fix it with \`chmod 0640 $T/pin; chown root:root $T/pin\`" 78
chmod 0640 "$T/pin"
chgrp "$G" "$T/pin"
try_start "$T/p11pskd.conf"
refused "PIN file readable by another group" "a group other than p11pskd's may read it" 78
chgrp root "$T/pin"
chmod 0660 "$T/pin"
try_start "$T/p11pskd.conf"
refused "group-writable PIN file" "its group may change it" 78
chmod 0600 "$T/pin"

chmod 0666 "$T/p11pskd.conf"
try_start "$T/p11pskd.conf"
refused "world-writable config (0666), exit status 78" \
    "config file $T/p11pskd.conf has mode 0666 and owner uid 0 gid 0: others than its owner may change it; fix it with \`chmod 0640 $T/p11pskd.conf; chown root:root $T/p11pskd.conf\`" 78
chmod 0644 "$T/p11pskd.conf"
chown "$U" "$T/p11pskd.conf"
try_start "$T/p11pskd.conf"
refused "config owned by another user" "it must be owned by root or p11pskd's user" 78
chown root "$T/p11pskd.conf"
try_start "$T/p11pskd.conf"
started "starts with a 0600 PIN file and a 0644 root-owned config"

# The daemonizing parent reports the same status.
chmod 0644 "$T/pin"
rc=0
"$BIN/p11pskd" --config "$T/p11pskd.conf" >"$T/bg.out" 2>&1 || rc=$?
[ "$rc" = 78 ] && pass "without --foreground too: exit status 78" ||
    fail "without --foreground: exit status $rc: $(cat "$T/bg.out")"
chmod 0600 "$T/pin"

# --- 3. Unsafe files, on reload: refused, the running configuration stays ---
start_daemon
# The socket appears before the token is open; SIGHUP is handled once the workers run.
for _ in $(seq 100); do grep -q 'serving with' "$T/p11pskd.log" && break; sleep 0.05; done
before=$(wc -l <"$T/p11pskd.log")
chmod 0666 "$T/p11pskd.conf"
kill -HUP "$DAEMON_PID"
for _ in $(seq 50); do
    tail -n +"$((before + 1))" "$T/p11pskd.log" | grep -q 'reload refused' && break
    sleep 0.1
done
if tail -n +"$((before + 1))" "$T/p11pskd.log" | grep -q "reload refused, keeping the running configuration: config file $T/p11pskd.conf has mode 0666"; then
    pass "reload with a 0666 config refused"
else
    fail "reload with a 0666 config not refused: $(tail -n 3 "$T/p11pskd.log" | tr '\n' ' ')"
fi
chmod 0644 "$T/p11pskd.conf"
kill -0 "$DAEMON_PID" && pass "p11pskd still serving after the refused reload" || fail "p11pskd died"

# --- 4. The audit line ---
# `p11psk add` refuses control characters, with the reason.
printf '%s\n' "$raw" >"$T/k.hex"
if "$BIN/p11psk" add "$(printf 'bad\nlabel')" --hex-file "$T/k.hex" >"$T/add.out" 2>&1; then
    fail "p11psk add accepted an identity with a newline"
elif grep -q -F "identity contains a control character (0x0a); labels end up in logs and config files" "$T/add.out"; then
    pass "p11psk add refuses a newline: $(cat "$T/add.out")"
else
    fail "p11psk add: unexpected message: $(cat "$T/add.out")"
fi
# So does migrate, for an identity with a tab.
printf 'tab\there:%s\n' "$raw" >"$T/psk.txt"
if "$BIN/p11psk" migrate --dry-run --stunnel "$T/psk.txt" >"$T/mig.out" 2>&1; then
    fail "p11psk migrate accepted an identity with a tab"
elif grep -q -F "identity contains a control character (0x09)" "$T/mig.out"; then
    pass "p11psk migrate refuses a tab: $(head -n 1 "$T/mig.out")"
else
    fail "p11psk migrate: unexpected message: $(cat "$T/mig.out")"
fi

# Keys with such labels made behind p11psk's back, with softhsm2-util.
fake="x
2026-01-01T00:00:00.000Z p11pskd[1]: info: pid=1 uid=0 gid=0 exe=/usr/bin/openssl op=tls13-early key=victim result=ok latency=1us"
spaced='x result=ok'
import_aes "$fake" "$(rand_hex_importable 32)"
import_aes "$spaced" "$(rand_hex_importable 32)"
h_fake=$(handle_of "$fake")
h_spaced=$(handle_of "$spaced")
before=$(wc -l <"$T/p11pskd.log")
out1=$("$BIN/p11psk-badclient" "$T/p11psk.sock" good 1 2000 "$h_fake" 2>&1) || true
out2=$("$BIN/p11psk-badclient" "$T/p11psk.sock" good 1 2000 "$h_spaced" 2>&1) || true
n1=$(printf '%s' "$out1" | sed -n 's/^good: requests=\([0-9]*\) .*/\1/p')
n2=$(printf '%s' "$out2" | sed -n 's/^good: requests=\([0-9]*\) .*/\1/p')
new=$(tail -n +"$((before + 1))" "$T/p11pskd.log")
lines=$(printf '%s\n' "$new" | grep -c -E ' op=(ping|tls13-early) ' || true)
if [ -n "$n1" ] && [ -n "$n2" ] && [ "$lines" -eq $((n1 + n2)) ]; then
    pass "one audit line per request ($lines lines for $n1 + $n2 requests)"
else
    fail "audit lines: $lines for '$n1' + '$n2' requests: $out1 $out2"
fi
if printf '%s\n' "$new" | grep -q '^2026-01-01T00:00:00.000Z'; then
    fail "a label wrote a line of its own: $(printf '%s\n' "$new" | grep -m1 '^2026-01-01')"
else
    pass "no line starts with the label's fake timestamp"
fi
want_fake='key="x\n2026-01-01T00:00:00.000Z p11pskd[1]: info: pid=1 uid=0 gid=0 exe=/usr/bin/openssl op=tls13-early key=victim result=ok latency=1us" result=ok'
printf '%s\n' "$new" | grep -q -F -- "$want_fake" && pass "newline label escaped and quoted" ||
    fail "no line with $want_fake: $(printf '%s\n' "$new" | grep -m1 'op=tls13-early')"
printf '%s\n' "$new" | grep -q -F -- 'op=tls13-early key="x result=ok" result=ok' &&
    pass "label with ' result=ok' quoted: $(printf '%s\n' "$new" | grep -m1 -o 'key="x result=ok" result=ok')" ||
    fail "no line with key=\"x result=ok\": $(printf '%s\n' "$new" | grep 'op=tls13-early' | tail -n 1)"
# exe= is the peer's binary at the request.
printf '%s\n' "$new" | grep -q -F "exe=$(readlink -f "$BIN/p11psk-badclient") op=tls13-early" &&
    pass "exe= names the peer's binary" || fail "exe= not the badclient: $(printf '%s\n' "$new" | grep -m1 'op=tls13-early')"
# A denied request: reason= is one quoted value.
sed -i 's/^allow \* uid=0$/allow plain uid=0/' "$T/p11pskd.conf"
kill -HUP "$DAEMON_PID"
sleep 0.5
before=$(wc -l <"$T/p11pskd.log")
"$BIN/p11psk-badclient" "$T/p11psk.sock" good 1 2000 "$h_spaced" >/dev/null 2>&1 || true
deny=$(tail -n +"$((before + 1))" "$T/p11pskd.log" | grep -m1 'result=access-denied' || true)
case $deny in
*'key="x result=ok" result=access-denied reason="uid 0 gid 0 may not use '\''x result=ok'\''; add an allow rule to '*) pass "denial: reason quoted" ;;
*) fail "denial line: $deny" ;;
esac
finish
