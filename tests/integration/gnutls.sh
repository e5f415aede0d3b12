#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Interop with GnuTLS holding the raw key: gnutls-serv against s_client on a handle, and
# gnutls-cli against s_server on a handle, TLS 1.3 and TLS 1.2 PSK.
# gnutls-serv cannot bind one address, so the whole test runs in a private network
# namespace (loopback only).
if [ -z "${P11PSK_IN_NETNS:-}" ]; then
    exec unshare -n env P11PSK_IN_NETNS=1 bash "$0" "$@"
fi
. "$(dirname "$0")/lib.sh"
ip link set lo up
setup_token
start_daemon

raw=$(rand_hex_importable 32)
import_aes gnutls "$raw"
h=$(handle_of gnutls)
printf 'Client_identity:%s\n' "$raw" >"$T/gnutls.psk"

P13='NORMAL:-VERS-ALL:+VERS-TLS1.3:+PSK:+ECDHE-PSK:+DHE-PSK'
# NORMAL has no SHA-256 MAC; the CBC-SHA256 suites need it added.
P12='NORMAL:-VERS-ALL:+VERS-TLS1.2:-KX-ALL:+PSK:+ECDHE-PSK:+SHA256'

# gnutls-serv (raw, --echo) against s_client on the handle.
gnutls_server_case() {
    local name=$1 prio=$2
    shift 2
    local port spid msg got
    port=$(free_port)
    msg="gnutls-$RANDOM-$RANDOM"
    timeout 30 gnutls-serv --port "$port" --pskpasswd "$T/gnutls.psk" --priority "$prio" \
        --echo >"$T/gserv.out" 2>&1 &
    spid=$!
    PIDS+=("$spid")
    wait_port "$port" "$spid" || { fail "$name: gnutls-serv did not listen"; return; }
    got=$({ printf '%s\n' "$msg"; sleep 1; } | OPENSSL_CONF=$T/openssl.cnf timeout 20 \
        openssl s_client -connect "127.0.0.1:$port" -psk "$h" -quiet -no_ign_eof "$@" 2>"$T/client.err" |
        head -n 1) || true
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    if [ "$got" = "$msg" ]; then
        pass "$name"
    else
        fail "$name: got '$got': $(tail -n 3 "$T/client.err" | tr '\n' ' ')"
    fi
}

# gnutls-cli (raw) against s_server -rev on the handle.
gnutls_client_case() {
    local name=$1 prio=$2
    shift 2
    local port spid msg got
    port=$(free_port)
    msg="gnutls-$RANDOM-$RANDOM"
    OPENSSL_CONF=$T/openssl.cnf timeout 30 openssl s_server -accept "127.0.0.1:$port" -nocert \
        -psk "$h" -rev -naccept 1 "$@" >"$T/server.out" 2>&1 &
    spid=$!
    PIDS+=("$spid")
    wait_port "$port" "$spid" || { fail "$name: s_server did not listen"; return; }
    got=$({ printf '%s\nCLOSE\n' "$msg"; sleep 2; } | timeout 20 gnutls-cli --port "$port" \
        --pskusername Client_identity --pskkey "$raw" --priority "$prio" 127.0.0.1 \
        2>"$T/gcli.err" | grep -F -x "$(reverse "$msg")" | head -n 1) || true
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    if [ "$got" = "$(reverse "$msg")" ]; then
        pass "$name"
    else
        fail "$name: no round trip: $(tail -n 3 "$T/gcli.err" "$T/server.out" | tr '\n' ' ')"
    fi
}

gnutls_server_case "tls13: gnutls-serv raw, s_client handle" "$P13" -tls1_3
gnutls_client_case "tls13: gnutls-cli raw, s_server handle" "$P13" -tls1_3
gnutls_server_case "tls12 PSK: gnutls-serv raw, s_client handle" "$P12" -tls1_2 \
    -cipher PSK-AES128-GCM-SHA256
gnutls_client_case "tls12 PSK: gnutls-cli raw, s_server handle" "$P12" -tls1_2 \
    -cipher PSK-AES128-GCM-SHA256
gnutls_server_case "tls12 ECDHE-PSK: gnutls-serv raw, s_client handle" "$P12" -tls1_2 \
    -cipher ECDHE-PSK-AES128-CBC-SHA256
# No gnutls-cli case for TLS 1.2 ECDHE-PSK: gnutls-cli 3.7.9 segfaults in
# gnutls_psk_server_get_username() while printing session info, even against a
# plain openssl s_server.
finish
