#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The proof: an application on a handle never holds the PSK. A live TLS peer on a handle is
# dumped with gcore in the middle of a session, and the dump is searched for the raw PSK,
# the TLS 1.3 early secret ES = HKDF-Extract(0, PSK) and Derive-Secret(ES, "derived", ""),
# all computed here from the raw key. Server and client roles, TLS 1.3 and TLS 1.2 (where
# only the PSK is checked: the master secret is per session). The control dumps the
# raw-key peer of the same session the same way and must find the PSK.
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
. "$(dirname "$0")/lib.sh"
command -v gcore >/dev/null || die "gcore (package gdb) is missing"
case ${LD_PRELOAD:-} in
*asan*) skip "ASan shadow memory makes core dumps of the peers impractical" ;;
esac
setup_token
start_daemon

raw=$(rand_hex_importable 32)
import_aes mem "$raw"
h=$(handle_of mem)

# hkdf MODE KEYHEX SALTHEX|INFOHEX: one HKDF step with SHA-256, hex out.
zeros=$(printf '0%.0s' $(seq 64))
es=$(openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt mode:EXTRACT_ONLY \
    -kdfopt hexkey:"$raw" -kdfopt hexsalt:"$zeros" HKDF | tr -d ':\n' | tr 'A-F' 'a-f')
# HkdfLabel: u16 length 32, "tls13 derived" (13 bytes), the SHA-256 of "".
info=0020$(printf '%02x' 13)$(printf 'tls13 derived' | od -An -tx1 | tr -d ' \n')20$(printf '' | sha256sum | cut -d' ' -f1)
derived=$(openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt mode:EXPAND_ONLY \
    -kdfopt hexkey:"$es" -kdfopt hexinfo:"$info" HKDF | tr -d ':\n' | tr 'A-F' 'a-f')
[[ ${#es} = 64 && ${#derived} = 64 ]] || die "could not compute ES/derived"
"$BIN/p11psk-mksess" TLS_AES_128_GCM_SHA256 "$raw" "$T/raw.pem"
"$BIN/p11psk-mksess" TLS_AES_128_GCM_SHA256 "$h" "$T/handle.pem"

# search CORE NEEDLE...: prints "found" or "absent" per needle. A needle is HEX, searched
# for as bytes, or a:TEXT, searched for as text in any case (a key in hex on a command line).
search() {
    perl -e 'local $/; open(my $f, "<:raw", shift) or die; my $d = <$f>; my $l = lc $d;
             print join(" ", map { /^a:(.*)/ ? (index($l, lc $1) >= 0 ? "found" : "absent")
                                             : (index($d, pack("H*", $_)) >= 0 ? "found" : "absent") } @ARGV), "\n"' "$@"
}

# session ROLE VERSION: runs a handshake with the handle on ROLE (server|client) and the
# raw key on the other side, keeps the session open, and dumps both peers into
# $T/core.handle and $T/core.raw.
session() {
    local role=$1 ver=$2 port spid cpid sconf cconf skey ckey
    port=$(free_port)
    # For TLS 1.3 the raw peer loads its key from a session file, so it holds the PSK as
    # bytes for its whole life: the control then shows that bytes are found.
    # (s_server matches a -psk_session peer only with a session file of its own.)
    local rawopt=(-psk "$raw") hopt=(-psk "$h") co=(-cipher PSK-AES128-GCM-SHA256)
    [ "$ver" = -tls1_3 ] && co=(-ciphersuites TLS_AES_128_GCM_SHA256)
    [ "$ver" = -tls1_3 ] && rawopt=(-psk_session "$T/raw.pem") hopt=(-psk_session "$T/handle.pem")
    if [ "$role" = server ]; then
        sconf=$T/openssl.cnf skey=("${hopt[@]}") cconf=$T/plain.cnf ckey=("${rawopt[@]}")
    else
        sconf=$T/plain.cnf skey=("${rawopt[@]}") cconf=$T/openssl.cnf ckey=("${hopt[@]}")
    fi
    rm -f "$T"/core.* "$T/cin"
    mkfifo "$T/cin"
    OPENSSL_CONF=$sconf timeout 60 openssl s_server -accept "127.0.0.1:$port" -nocert "${skey[@]}" \
        -rev -naccept 1 "$ver" "${co[@]}" >"$T/server.out" 2>&1 &
    spid=$!
    PIDS+=("$spid")
    wait_port "$port" "$spid" || { fail "$role $ver: s_server did not listen"; return 1; }
    OPENSSL_CONF=$cconf timeout 60 openssl s_client -connect "127.0.0.1:$port" "${ckey[@]}" \
        -quiet "$ver" "${co[@]}" <"$T/cin" >"$T/client.out" 2>"$T/client.err" &
    cpid=$!
    PIDS+=("$cpid")
    exec 3>"$T/cin"
    printf 'memory-probe\n' >&3
    for _ in $(seq 100); do
        grep -q eborp-yromem "$T/client.out" 2>/dev/null && break
        sleep 0.1
    done
    if ! grep -q eborp-yromem "$T/client.out"; then
        exec 3>&-
        fail "$role $ver: no session: $(tail -n 2 "$T/client.err")"
        return 1
    fi
    # Both peers are mid-session: keys derived, connection open.
    # The openssl processes are the children of their `timeout` wrappers.
    local sop cop hp rp
    sop=$(pgrep -P "$spid" -x openssl) && cop=$(pgrep -P "$cpid" -x openssl) ||
        { fail "$role $ver: openssl peers not found"; exec 3>&-; return 1; }
    hp=$sop rp=$cop
    [ "$role" = client ] && hp=$cop rp=$sop
    timeout 60 gcore -o "$T/core.h" "$hp" >/dev/null 2>&1 && mv "$T/core.h.$hp" "$T/core.handle"
    timeout 60 gcore -o "$T/core.r" "$rp" >/dev/null 2>&1 && mv "$T/core.r.$rp" "$T/core.raw"
    exec 3>&-
    kill "$cpid" "$spid" 2>/dev/null || true
    wait "$cpid" "$spid" 2>/dev/null || true
    [[ -s $T/core.handle && -s $T/core.raw ]] || { fail "$role $ver: gcore failed"; return 1; }
}

for role in server client; do
    for ver in -tls1_3 -tls1_2; do
        session "$role" "$ver" || continue
        size=$(($(stat -c %s "$T/core.handle") / 1024))
        if [ "$ver" = -tls1_3 ]; then
            r=$(search "$T/core.handle" "$raw" "a:$raw" "$es" "$derived")
            [ "$r" = "absent absent absent absent" ] &&
                pass "TLS 1.3 $role on a handle: PSK, early secret and derived secret absent from its ${size} KiB dump" ||
                fail "TLS 1.3 $role on a handle: PSK/ES/derived: $r"
        else
            r=$(search "$T/core.handle" "$raw" "a:$raw")
            [ "$r" = "absent absent" ] && pass "TLS 1.2 $role on a handle: PSK absent from its ${size} KiB dump" ||
                fail "TLS 1.2 $role on a handle: PSK $r"
        fi
        # Control: the raw-key peer of the same session, same procedure. TLS 1.3: the PSK and
        # the early secret as bytes; TLS 1.2 (key given in hex on its command line): the PSK.
        if [ "$ver" = -tls1_3 ]; then
            r=$(search "$T/core.raw" "$raw" "$es")
            [ "$r" = "found found" ] && pass "control: the raw-key $([ "$role" = server ] && echo client || echo server)'s dump holds the PSK and the early secret" ||
                fail "control: raw-key peer's dump, PSK/ES as bytes: $r"
        else
            r=$(search "$T/core.raw" "a:$raw")
            [ "$r" = found ] && pass "control: the raw-key peer's dump holds the PSK (TLS 1.2)" ||
                fail "control: raw-key peer's dump, PSK: $r"
        fi
        # And the handle side does hold its handle: the dump is of the right process.
        [ "$(search "$T/core.handle" "a:$h" "$h")" != "absent absent" ] ||
            fail "$role $ver: handle not in its dump"
    done
done
finish
