#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Unmodified stunnel4 with handles in its PSKsecrets files: a stunnel client and server
# with a plain TCP backend behind the server, 64 KiB of random data each way, TLS 1.3 and
# TLS 1.2 (PSK-AES128-GCM-SHA256); handle against raw key in both directions and handles on
# both sides (the daemon log must show derivations for each handle-side stunnel process,
# with the op names of the version); `p11psk migrate --stunnel` on one side of a working
# raw-key pair; and a handle whose key the peer does not have, which passes no data.
# stunnel creates its SSL_CTX with the property query "provider!=fips": the derivations in
# the daemon log prove the provider is chosen all the same.
. "$(dirname "$0")/lib.sh"
command -v stunnel4 >/dev/null || die "stunnel4 not installed"
# In the sanitizer build LD_PRELOAD carries the ASan runtime for uninstrumented programs
# that load the provider. Here only stunnel4 does: give it only to stunnel4, not to the
# hundreds of small commands below (each start costs ASan's setup; p11pskd and p11psk are
# linked with it).
STUNNEL_PRELOAD=${LD_PRELOAD:-}
unset LD_PRELOAD
setup_token
start_daemon

SIZE=65536
D=$T/stunnel
mkdir "$D" "$D/backend"

# --- backend: for each connection, reads SIZE bytes (or up to EOF), saves them as
# backend/up.N, then sends the current $D/down.bin and closes. Every connection is bounded.
BPORT=$(free_port)
perl -MIO::Socket::INET -e '
    my ($port, $size, $dir, $down) = @ARGV;
    $SIG{PIPE} = "IGNORE";
    my $l = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $port,
                                  Listen => 16, ReuseAddr => 1) or die "listen: $!\n";
    my $n = 0;
    while (1) {
        my $c = $l->accept or next;
        $n++;
        eval {
            local $SIG{ALRM} = sub { die "timeout\n" };
            alarm 20;
            my $buf = "";
            while (length($buf) < $size) {
                my $r = sysread($c, $buf, $size - length($buf), length($buf));
                last unless $r;
            }
            open(my $f, ">", "$dir/tmp.$n") or die "$dir/tmp.$n: $!\n";
            binmode $f; print $f $buf; close $f;
            rename("$dir/tmp.$n", "$dir/up.$n") or die "rename: $!\n";
            open(my $d, "<", $down) or die "$down: $!\n";
            binmode $d; local $/; my $data = <$d>; close $d;
            my $off = 0;
            while ($off < length $data) {
                my $w = syswrite($c, $data, length($data) - $off, $off);
                die "write: $!\n" unless defined $w;
                $off += $w;
            }
            alarm 0;
        };
        print STDERR "backend connection $n: $@" if $@;
        close $c;
    }' "$BPORT" "$SIZE" "$D/backend" "$D/down.bin" >"$D/backend.log" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
wait_port "$BPORT" "$BACKEND_PID" || die "backend did not listen: $(cat "$D/backend.log")"

# psk_file NAME IDENT KEY: a PSKsecrets file, mode 0600 (stunnel warns otherwise).
psk_file() {
    printf '%s:%s\n' "$2" "$3" >"$D/$1.psk"
    chmod 0600 "$D/$1.psk"
    echo "$D/$1.psk"
}

# stunnel_conf NAME server|client tls12|tls13 ACCEPT_PORT CONNECT_PORT PSKFILE [IDENT]
stunnel_conf() {
    local name=$1 role=$2 ver=$3 acc=$4 con=$5 file=$6 ident=${7:-}
    {
        printf 'foreground = yes\npid =\nsyslog = no\ndebug = 7\n\n[%s]\n' "$name"
        printf 'accept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\n' "$acc" "$con"
        printf 'PSKsecrets = %s\n' "$file"
        [ "$role" = client ] && printf 'client = yes\nPSKidentity = %s\n' "$ident"
        case $ver in
        tls12) printf 'sslVersion = TLSv1.2\nciphers = PSK-AES128-GCM-SHA256\n' ;;
        tls13) printf 'sslVersion = TLSv1.3\nciphersuites = TLS_AES_128_GCM_SHA256\n' ;;
        esac
    } >"$D/$name.conf"
}

# start_stunnel NAME KIND: runs $D/NAME.conf with the OPENSSL_CONF of KIND (handle|raw),
# waits for its accept port ($2 of the conf), sets STUNNEL_PID.
start_stunnel() {
    local name=$1 kind=$2 port
    port=$(sed -n 's/^accept = 127\.0\.0\.1://p' "$D/$name.conf")
    LD_PRELOAD=$STUNNEL_PRELOAD OPENSSL_CONF=$(ossl_conf "$kind") \
        stunnel4 "$D/$name.conf" >>"$D/$name.log" 2>&1 &
    STUNNEL_PID=$!
    PIDS+=("$STUNNEL_PID")
    wait_port "$port" "$STUNNEL_PID" ||
        die "stunnel $name did not listen: $(tail -n 5 "$D/$name.log")"
}

# two_ports: sets sport and cport (the caller's locals) to two different free ports.
two_ports() {
    sport=$(free_port)
    cport=$(free_port)
    while [ "$cport" = "$sport" ]; do cport=$(free_port); done
}

# new_logs NAME...: empties the stunnel logs for a new case (kept in all-stunnel.log).
new_logs() {
    local n
    for n in "$@"; do
        [ -f "$D/$n.log" ] && cat "$D/$n.log" >>"$D/all-stunnel.log"
        : >"$D/$n.log"
    done
}

stop_pid() {
    kill "$1" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# transfer PORT: fresh random data each way through the tunnel whose client accepts on
# PORT. Succeeds if the backend received exactly $D/up.bin and the client got back exactly
# $D/down.bin; else sets REASON.
transfer() {
    local port=$1 ups
    openssl rand -out "$D/up.bin" "$SIZE"
    openssl rand -out "$D/down.bin" "$SIZE"
    rm -f "$D/backend/"* "$D/down.got"
    # shellcheck disable=SC2016 # Perl code: its variables are Perl's
    timeout 20 perl -MIO::Socket::INET -e '
        my ($port, $up, $out, $size) = @ARGV;
        $SIG{PIPE} = "IGNORE";
        my $c = IO::Socket::INET->new(PeerAddr => "127.0.0.1", PeerPort => $port)
            or die "connect: $!\n";
        open(my $f, "<", $up) or die "$up: $!\n";
        binmode $f; local $/; my $data = <$f>; close $f;
        my $off = 0;
        while ($off < length $data) {
            my $w = syswrite($c, $data, length($data) - $off, $off);
            last unless defined $w;
            $off += $w;
        }
        my $buf = "";
        while (length($buf) < $size) {
            my $r = sysread($c, $buf, $size - length($buf), length($buf));
            last unless $r;
        }
        open(my $o, ">", $out) or die "$out: $!\n";
        binmode $o; print $o $buf; close $o;' "$port" "$D/up.bin" "$D/down.got" "$SIZE" \
        >"$D/client.err" 2>&1 || true
    ups=$(find "$D/backend" -mindepth 1 -maxdepth 1 -name 'up.*' | grep -c . || true)
    if [ "$ups" != 1 ]; then
        REASON="backend saw $ups complete connections; $(tr '\n' ' ' <"$D/client.err")"
        return 1
    fi
    if ! cmp -s "$D/up.bin" "$D/backend/"up.*; then
        REASON="client->backend data differs ($(wc -c <"$D/backend/"up.*) bytes arrived)"
        return 1
    fi
    if ! cmp -s "$D/down.bin" "$D/down.got"; then
        REASON="backend->client data differs ($(wc -c <"$D/down.got" 2>/dev/null || echo 0) bytes came back)"
        return 1
    fi
    REASON=
}

# derivs PID VERSION_RE: successful derivations p11pskd logged for process PID whose op
# matches VERSION_RE.
derivs() {
    grep -c -E "pid=$1 .* op=($2) .*result=ok" "$T/p11pskd.log" || true
}
TLS13_OPS='tls13-early|tls13-expand|tls13-extract'
TLS12_OPS='tls12-prf'
ALL_OPS="$TLS13_OPS|$TLS12_OPS"

# check_derivs NAME VER PID...: each PID (a handle-side stunnel) had derivations served,
# all of them with the op names of VER.
check_derivs() {
    local name=$1 ver=$2 want other p n m msg=
    shift 2
    if [ "$ver" = tls13 ]; then
        want=$TLS13_OPS other=$TLS12_OPS
    else
        want=$TLS12_OPS other=$TLS13_OPS
    fi
    for p in "$@"; do
        n=$(derivs "$p" "$want")
        m=$(grep -c -E "pid=$p .* op=($other) " "$T/p11pskd.log" || true)
        if [ "$n" -lt 1 ] || [ "$m" -ne 0 ]; then
            fail "$name: stunnel pid $p: $n $ver derivations, $m of the other version"
            return
        fi
        msg="$msg${msg:+; }pid $p: $n $(grep -E "pid=$p .* op=($want) .*result=ok" "$T/p11pskd.log" |
            sed 's/.* op=\([^ ]*\) .*/\1/' | sort -u | paste -s -d,)"
    done
    pass "$name: p11pskd served $ver derivations to the handle side(s) ($msg)"
}

# tunnel_case NAME VER SKIND SKEY CKIND CKEY: a fresh stunnel server (key SKEY, run as
# SKIND) and client (CKEY, CKIND); data must pass both ways; for each handle side the
# daemon must have served derivations of the version VER.
tunnel_case() {
    local name=$1 ver=$2 skind=$3 skey=$4 ckind=$5 ckey=$6 sport cport spid cpid hp=()
    two_ports
    stunnel_conf srv "server" "$ver" "$sport" "$BPORT" "$(psk_file srv "$IDENT" "$skey")"
    stunnel_conf cli client "$ver" "$cport" "$sport" "$(psk_file cli "$IDENT" "$ckey")" "$IDENT"
    new_logs srv cli
    start_stunnel srv "$skind"
    spid=$STUNNEL_PID
    start_stunnel cli "$ckind"
    cpid=$STUNNEL_PID
    if transfer "$cport"; then
        pass "$name: $SIZE bytes intact each way"
    else
        fail "$name: $REASON; server: $(grep -i -m3 'error\|fail' "$D/srv.log" | tr '\n' ' ')" \
            "client: $(grep -i -m3 'error\|fail' "$D/cli.log" | tr '\n' ' ')"
    fi
    [ "$skind" = handle ] && hp+=("$spid")
    [ "$ckind" = handle ] && hp+=("$cpid")
    check_derivs "$name" "$ver" "${hp[@]}"
    # The raw side never loaded the provider, so it never asked the daemon.
    for p in "$spid" "$cpid"; do
        if [[ " ${hp[*]} " != *" $p "* ]] && grep -q "pid=$p " "$T/p11pskd.log"; then
            fail "$name: raw-key stunnel pid $p talked to p11pskd"
        fi
    done
    stop_pid "$cpid"
    stop_pid "$spid"
}

IDENT=tunnel
raw=$(rand_hex_importable 32)
import_aes "$IDENT" "$raw"
h=$(handle_of "$IDENT")
[ "${#h}" = 96 ] || die "handle of $IDENT is not 96 hex digits: $h"

for ver in tls13 tls12; do
    tunnel_case "$ver: client handle, server raw" "$ver" raw "$raw" handle "$h"
    tunnel_case "$ver: server handle, client raw" "$ver" handle "$h" raw "$raw"
    tunnel_case "$ver: handles on both sides" "$ver" handle "$h" handle "$h"
done

# --- negative: the handle side's key is not the one the peer has: no data passes, and the
# handle side did ask p11pskd (the failure is the key mismatch, not a missing provider).
neg_case() {
    local name=$1 ver=$2 skind=$3 skey=$4 ckind=$5 ckey=$6 sport cport spid cpid hpid
    two_ports
    stunnel_conf srv "server" "$ver" "$sport" "$BPORT" "$(psk_file srv "$IDENT" "$skey")"
    stunnel_conf cli client "$ver" "$cport" "$sport" "$(psk_file cli "$IDENT" "$ckey")" "$IDENT"
    new_logs srv cli
    start_stunnel srv "$skind"
    spid=$STUNNEL_PID
    start_stunnel cli "$ckind"
    cpid=$STUNNEL_PID
    [ "$skind" = handle ] && hpid=$spid || hpid=$cpid
    if transfer "$cport"; then
        fail "$name: data passed with mismatched keys"
    elif [ -s "$D/down.got" ] || compgen -G "$D/backend/*" >/dev/null; then
        fail "$name: some data passed: $REASON"
    elif ! grep -q -i 'SSL_accept\|SSL_connect\|alert\|decrypt' "$D/srv.log" "$D/cli.log"; then
        fail "$name: no data, but no TLS error logged by stunnel"
    elif [ "$(derivs "$hpid" "$ALL_OPS")" -lt 1 ]; then
        fail "$name: handle side (pid $hpid) never got a derivation from p11pskd"
    else
        pass "$name: no data passed ($(grep -h -i -m1 'SSL_accept\|SSL_connect' "$D/srv.log" \
            "$D/cli.log" | head -n 1 | sed 's/^.*: //'))"
    fi
    stop_pid "$cpid"
    stop_pid "$spid"
}
other=$(rand_hex 32)
for ver in tls13 tls12; do
    neg_case "$ver negative: client handle, server has another raw key" "$ver" \
        raw "$other" handle "$h"
    neg_case "$ver negative: server handle, client has another raw key" "$ver" \
        handle "$h" raw "$other"
done

# --- migration with a real app: a raw-key pair works; `p11psk migrate --stunnel` on ONE
# side's file, restart that side with the provider; it still works against the other side,
# which keeps its raw file.
migrate_case() {
    local side=$1 ver=$2 id key sport cport spid cpid mfile hid
    id=mig-$side-$ver
    key=$(rand_hex 32)
    two_ports
    stunnel_conf msrv "server" "$ver" "$sport" "$BPORT" "$(psk_file msrv "$id" "$key")"
    stunnel_conf mcli client "$ver" "$cport" "$sport" "$(psk_file mcli "$id" "$key")" "$id"
    new_logs msrv mcli
    start_stunnel msrv raw
    spid=$STUNNEL_PID
    start_stunnel mcli raw
    cpid=$STUNNEL_PID
    if transfer "$cport"; then
        pass "$ver migrate $side: raw-key pair works before"
    else
        fail "$ver migrate $side: raw-key pair: $REASON"
    fi
    [ "$side" = server ] && mfile=$D/msrv.psk || mfile=$D/mcli.psk
    if "$BIN/p11psk" migrate --stunnel "$mfile" >"$D/migrate.out" 2>&1; then
        pass "$ver migrate $side: $(tail -n 1 "$D/migrate.out")"
    else
        fail "$ver migrate $side: $(cat "$D/migrate.out")"
    fi
    hid=$(handle_of "$id")
    if grep -q -i -F -- "$key" "$mfile"; then
        fail "$ver migrate $side: the raw key is still in $mfile"
    elif [ "$(cat "$mfile")" = "$id:$hid" ]; then
        pass "$ver migrate $side: file holds the handle, not the raw key"
    else
        fail "$ver migrate $side: file is '$(cat "$mfile")', want '$id:$hid'"
    fi
    if [ "$side" = server ]; then
        stop_pid "$spid"
        start_stunnel msrv handle
        spid=$STUNNEL_PID
    else
        stop_pid "$cpid"
        start_stunnel mcli handle
        cpid=$STUNNEL_PID
    fi
    if transfer "$cport"; then
        pass "$ver migrate $side: migrated $side against raw peer, $SIZE bytes intact each way"
    else
        fail "$ver migrate $side: after migration: $REASON; $(grep -h -i -m3 'error\|fail' \
            "$D/msrv.log" "$D/mcli.log" | tr '\n' ' ')"
    fi
    if [ "$side" = server ]; then
        check_derivs "$ver migrate $side" "$ver" "$spid"
    else
        check_derivs "$ver migrate $side" "$ver" "$cpid"
    fi
    stop_pid "$cpid"
    stop_pid "$spid"
}
for ver in tls13 tls12; do
    migrate_case client "$ver"
    migrate_case server "$ver"
done

grep -q 'backend connection' "$D/backend.log" && log "backend: $(cat "$D/backend.log")"
new_logs srv cli msrv mcli
if grep -q -E 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$D/all-stunnel.log"; then
    fail "sanitizer report in a stunnel log: $(grep -m1 -E 'Sanitizer|runtime error' "$D/all-stunnel.log")"
fi
finish
