#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
# The provider and the CLI talk only to a p11pskd run by an allowed user. A fake daemon run by
# a throwaway user, at a socket path in a directory that user controls, is refused before a
# single byte is sent (the handshake fails naming its uid and p11psk-daemon-user); naming the
# user in p11psk-daemon-user (by name or uid) or in P11PSK_DAEMON_USER lets the provider talk
# to it, which shows that the setting is what decides.
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || skip "needs root to create a throwaway user"

U=p11psk-t$$-fk
cleanup_user() { userdel "$U" 2>/dev/null || true; }
cleanup_user # leftover of an interrupted run with the same PID
ON_EXIT+=(cleanup_user)
useradd -M -U -s /usr/sbin/nologin "$U"
UID_U=$(id -u "$U")

setup_token
start_daemon
raw=$(rand_hex_importable 32)
import_aes idkey "$raw"
h=$(handle_of idkey)

expect_ok "real p11pskd (root) allowed by default" handle "$h" raw "$raw" -tls1_3

# The attacker's directory and fake daemon (bounded: it exits by itself after 120 s).
EVIL=$T/evil
mkdir "$EVIL"
chown "$U:" "$EVIL"
setpriv --reuid="$U" --regid="$(id -g "$U")" --init-groups \
    "$BIN/p11psk-sinkd" "$EVIL/p11psk.sock" "$EVIL/count" 120 >"$T/sinkd.out" 2>&1 &
PIDS+=("$!")
for _ in $(seq 100); do [ -S "$EVIL/p11psk.sock" ] && [ -f "$EVIL/count" ] && break; sleep 0.05; done
[ -S "$EVIL/p11psk.sock" ] || die "fake daemon did not start: $(cat "$T/sinkd.out")"
[ "$(stat -c %U "$EVIL/p11psk.sock")" = "$U" ] || die "fake daemon socket not owned by $U"
received() { cat "$EVIL/count"; }

# The provider pointed at the fake daemon; a short timeout as it never answers.
cp "$T/openssl.cnf" "$T/openssl.cnf.real"
sed -i "s|^p11psk-socket = .*|p11psk-socket = $EVIL/p11psk.sock|" "$T/openssl.cnf"
set_provider_param p11psk-timeout-ms 500
cp "$T/openssl.cnf" "$T/openssl.cnf.evil"

expect_fail "fake daemon of uid $UID_U refused" \
    "p11pskd at $EVIL/p11psk.sock is run by uid $UID_U, which is not an allowed daemon user (root" \
    handle "$h" raw "$raw" -tls1_3
grep -q "set p11psk-daemon-user in the provider's openssl.cnf section" "$T/server.out" &&
    pass "the error names p11psk-daemon-user" || fail "no hint at the setting: $(tail -n 3 "$T/server.out")"
[ "$(received)" = 0 ] && pass "fake daemon received 0 bytes" ||
    fail "fake daemon received $(received) bytes from a refused provider"

# The CLI applies the same check.
rc=0
"$BIN/p11psk" status --socket "$EVIL/p11psk.sock" >"$T/out" 2>"$T/err" || rc=$?
if [ "$rc" != 0 ] && grep -q "is run by uid $UID_U, which is not an allowed daemon user" "$T/err"; then
    pass "p11psk status refuses the fake daemon: $(cut -c 1-100 "$T/err")"
else
    fail "p11psk status with a fake daemon: rc $rc $(cat "$T/out" "$T/err")"
fi
[ "$(received)" = 0 ] && pass "fake daemon received 0 bytes from the CLI" ||
    fail "fake daemon received $(received) bytes from the CLI"

# talks_to NAME: the handshake fails (the fake never answers) but only after the provider sent
# its request: the fake daemon's byte count grew.
talks_to() {
    local name=$1 before
    shift
    before=$(received)
    expect_fail "$name: handshake fails (fake daemon never answers)" "service timed out" \
        handle "$h" raw "$raw" -tls1_3
    [ "$(received)" -gt "$before" ] &&
        pass "$name: the provider talked to the fake daemon ($(($(received) - before)) bytes)" ||
        fail "$name: the provider sent nothing to the allowed daemon user"
}

set_provider_param p11psk-daemon-user "root,$U"
talks_to "p11psk-daemon-user = root,$U"

cp "$T/openssl.cnf.evil" "$T/openssl.cnf"
set_provider_param p11psk-daemon-user "$UID_U"
talks_to "p11psk-daemon-user = $UID_U"

cp "$T/openssl.cnf.evil" "$T/openssl.cnf"
P11PSK_DAEMON_USER=$U talks_to "P11PSK_DAEMON_USER=$U"

# The setting replaces the default: root alone no longer covers the fake daemon's user.
set_provider_param p11psk-daemon-user root
before=$(received)
expect_fail "p11psk-daemon-user = root refuses uid $UID_U" "is run by uid $UID_U" \
    handle "$h" raw "$raw" -tls1_3
[ "$(received)" = "$before" ] && pass "nothing sent with p11psk-daemon-user = root" ||
    fail "fake daemon received $(($(received) - before)) bytes with p11psk-daemon-user = root"

# An unknown user is a configuration error that fails every handle operation (deny).
cp "$T/openssl.cnf.evil" "$T/openssl.cnf"
set_provider_param p11psk-daemon-user "root,no-such-user-p11psk"
expect_fail "unknown daemon user refused" 'p11psk-daemon-user: no user "no-such-user-p11psk"' \
    handle "$h" raw "$raw" -tls1_3

# The real daemon again, with the user named explicitly.
cp "$T/openssl.cnf.real" "$T/openssl.cnf"
set_provider_param p11psk-daemon-user root
expect_ok "real p11pskd with p11psk-daemon-user = root" handle "$h" raw "$raw" -tls1_3

finish
