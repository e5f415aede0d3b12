#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Remote token (issue 7): `p11-kit server` exports the SoftHSM2 token from a separate process
# on a unix socket; p11pskd loads only p11-kit-client.so and reaches the token through that
# socket, configured with `p11-kit-server-address = unix:path=...` and, separately, with
# P11_KIT_SERVER_ADDRESS in its environment. Keys are provisioned through the remote module
# (`p11psk add`) and directly into the token (softhsm2-util); TLS 1.3 and TLS 1.2 handshakes
# through p11pskd succeed against a raw-key peer in both directions.
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
. "$(dirname "$0")/lib.sh"
setup_token
p11kit_setup

# restart_daemon: a fresh log and socket, so that start_daemon waits for the new daemon.
restart_daemon() {
    stop_daemon
    : >"$T/p11pskd.log"
    rm -f "$T/p11psk.sock"
    start_daemon
}

# logged PATTERN: whether p11pskd's log has a line matching PATTERN, waiting up to 5 s.
logged() {
    for _ in $(seq 100); do
        grep -q -- "$1" "$T/p11pskd.log" && return 0
        sleep 0.05
    done
    return 1
}

# shellcheck disable=SC2119 # start_p11kit's argument is optional (default: SoftHSM2)
start_p11kit
if [ "$P11KIT_ADDR" = "unix:path=$P11KIT_SOCK" ]; then
    pass "p11-kit server prints P11_KIT_SERVER_ADDRESS=$P11KIT_ADDR"
else
    fail "p11-kit server printed address '$P11KIT_ADDR', expected unix:path=$P11KIT_SOCK"
fi
remote_conf "$P11KIT_ADDR"

# Provisioning through the remote module (the CLI reads the same config) and directly into
# the token on the server side.
raw_add=$(rand_hex 32)
h_add=$(add_hex added "$raw_add") || die "p11psk add through p11-kit-client failed"
[ "${#h_add}" -eq 96 ] && pass "p11psk add through p11-kit-client.so prints a handle" ||
    fail "p11psk add through p11-kit-client.so printed '$h_add'"
raw_imp=$(rand_hex_importable 32)
import_aes imported "$raw_imp"
h_imp=$(handle_of imported)
"$BIN/p11psk" --config "$T/p11pskd.conf" list >"$T/list.out" 2>&1 || true
if grep -q '^added ' "$T/list.out" && grep -q '^imported ' "$T/list.out"; then
    pass "p11psk list through the remote module shows the key added by p11psk and the one imported by softhsm2-util"
else
    fail "p11psk list through the remote module: $(tr '\n' ' ' <"$T/list.out")"
fi

start_daemon
mapfile -t -O "${#PIDS[@]}" PIDS < <(remote_children)
if logged "serving module $CLIENT_MODULE, token '$TOKEN_LABEL'"; then
    pass "p11pskd's startup log says it serves $CLIENT_MODULE"
else
    fail "p11pskd startup log lacks the p11-kit-client module: $(head -n 3 "$T/p11pskd.log" | tr '\n' ' ')"
fi
# The token really is in the other process: p11pskd has not mapped SoftHSM2, and the server
# runs a p11-kit-remote child for p11pskd's connection.
if grep -q libsofthsm2 "/proc/$DAEMON_PID/maps"; then
    fail "p11pskd has libsofthsm2 mapped: the token is not remote"
elif [ -z "$(remote_children)" ]; then
    fail "p11-kit server has no p11-kit-remote child serving p11pskd"
else
    pass "p11pskd does not map libsofthsm2; p11-kit server serves it from child pid $(remote_children | head -n 1)"
fi

for k in add imp; do
    raw=raw_$k
    h=h_$k
    o13=(-tls1_3 -ciphersuites TLS_AES_128_GCM_SHA256)
    o12=(-tls1_2 -cipher PSK-AES128-GCM-SHA256)
    expect_ok "remote tls13 $k: client handle, server raw" raw "${!raw}" handle "${!h}" "${o13[@]}"
    expect_ok "remote tls13 $k: server handle, client raw" handle "${!h}" raw "${!raw}" "${o13[@]}"
    expect_ok "remote tls12 $k: client handle, server raw" raw "${!raw}" handle "${!h}" "${o12[@]}"
    expect_ok "remote tls12 $k: server handle, client raw" handle "${!h}" raw "${!raw}" "${o12[@]}"
done
expect_ok_both "remote tls13: handles on both sides" handle "$h_add" handle "$h_add" -tls1_3
# A key added while p11pskd runs is usable at once through the remote module.
raw_late=$(rand_hex 48)
h_late=$(add_hex late "$raw_late")
expect_ok "remote tls13: key added while p11pskd runs" raw "$raw_late" handle "$h_late" -tls1_3
if grep -E 'op=tls1(3-early|2-prf) key=(added|imported|late) result=ok step=token' \
    "$T/p11pskd.log" >/dev/null; then
    pass "p11pskd logged derivations done in the remote token (step=token)"
else
    fail "no step=token derivation in p11pskd's log"
fi
stop_daemon

# The environment form: no p11-kit-server-address line, P11_KIT_SERVER_ADDRESS set for
# p11pskd (as a unit's Environment= would).
remote_conf
export P11_KIT_SERVER_ADDRESS=$P11KIT_ADDR
restart_daemon
mapfile -t -O "${#PIDS[@]}" PIDS < <(remote_children)
if logged "serving module $CLIENT_MODULE, token '$TOKEN_LABEL'"; then
    pass "env form: p11pskd serves $CLIENT_MODULE with P11_KIT_SERVER_ADDRESS from its environment"
else
    fail "env form: startup log: $(head -n 3 "$T/p11pskd.log" | tr '\n' ' ')"
fi
expect_ok "env form tls13: client handle, server raw" raw "$raw_add" handle "$h_add" -tls1_3
expect_ok "env form tls12: server handle, client raw" handle "$h_imp" raw "$raw_imp" \
    -tls1_2 -cipher PSK-AES128-GCM-SHA256
stop_daemon

# The config key wins over a stale environment (p11pskd sets the variable before loading
# the module).
export P11_KIT_SERVER_ADDRESS=unix:path=$T/nonexistent.sock
remote_conf "$P11KIT_ADDR"
restart_daemon
mapfile -t -O "${#PIDS[@]}" PIDS < <(remote_children)
expect_ok "config key overrides a wrong P11_KIT_SERVER_ADDRESS" raw "$raw_add" handle "$h_add" -tls1_3
stop_daemon

# Through a stream relay, as an `ssh -L LOCAL_SOCKET:REMOTE_SOCKET` tunnel would carry it:
# socat stands in for ssh (no sshd here). The protocol needs nothing but the byte stream.
if command -v socat >/dev/null; then
    socat "UNIX-LISTEN:$T/fwd.sock,fork,mode=0600" "UNIX-CONNECT:$P11KIT_SOCK" 2>"$T/socat.err" &
    SOCAT_PID=$!
    PIDS+=("$SOCAT_PID")
    for _ in $(seq 100); do [ -S "$T/fwd.sock" ] && break; sleep 0.05; done
    unset P11_KIT_SERVER_ADDRESS
    remote_conf "unix:path=$T/fwd.sock"
    restart_daemon
    mapfile -t -O "${#PIDS[@]}" PIDS < <(remote_children)
    expect_ok "through a forwarded socket (socat relay): tls13" raw "$raw_imp" handle "$h_imp" -tls1_3
    expect_ok "through a forwarded socket (socat relay): tls12" handle "$h_add" raw "$raw_add" \
        -tls1_2 -cipher PSK-AES128-GCM-SHA256
    stop_daemon
else
    log "note: socat not installed; forwarded-socket case not run"
fi

# Neither: p11-kit-client finds no server, shows no token, and p11pskd refuses to start
# with a message naming the module (it does not hang).
remote_conf
unset P11_KIT_SERVER_ADDRESS
rc=0
XDG_RUNTIME_DIR=$T/no-runtime-dir timeout 20 "$BIN/p11pskd" --config "$T/p11pskd.conf" \
    --foreground >"$T/noaddr.log" 2>&1 || rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && grep -q "$CLIENT_MODULE" "$T/noaddr.log"; then
    pass "no server address: p11pskd exits $rc naming the module: $(grep -m1 -o 'error: .*' "$T/noaddr.log" | cut -c1-90)"
else
    fail "no server address: exit $rc, log: $(tr '\n' ' ' <"$T/noaddr.log")"
fi
finish
