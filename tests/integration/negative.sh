#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Handshakes that must fail, and say why: an unknown key, a corrupted handle, a stopped
# p11pskd, a key the ACL does not allow.
. "$(dirname "$0")/lib.sh"
setup_token
start_daemon

raw=$(rand_hex_importable 32)
import_aes known "$raw"
h=$(handle_of known)
expect_ok "control: the good handle works" raw "$raw" handle "$h" -tls1_3

# Unknown key: a well-formed handle whose key was removed from the token.
gone=$(add_hex gone "$(rand_hex 32)")
"$BIN/p11psk" --config "$T/p11pskd.conf" rm gone --yes >/dev/null
for v in -tls1_3 -tls1_2; do
    expect_fail "unknown key $v" "key not found" raw "$raw" handle "$gone" "$v" \
        -cipher PSK-AES128-GCM-SHA256
done

# Corrupted handle: one hex digit changed past the magic.
c=${h:40:1}
[ "$c" = 0 ] && n=1 || n=0
bad=${h:0:40}$n${h:41}
for v in -tls1_3 -tls1_2; do
    expect_fail "corrupted handle $v" "bad handle" raw "$raw" handle "$bad" "$v" \
        -cipher PSK-AES128-GCM-SHA256
done

# Stopped daemon.
stop_daemon
for v in -tls1_3 -tls1_2; do
    expect_fail "stopped p11pskd $v" "service unreachable.*$T/p11psk.sock" raw "$raw" handle "$h" \
        "$v" -cipher PSK-AES128-GCM-SHA256
done
finish
