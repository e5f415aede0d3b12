#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Unmodified mosquitto 2.0 (broker, mosquitto_pub, mosquitto_sub) with PSK handles: the
# broker's psk_file and the clients' --psk hold handles, raw keys or a mix; a message
# published must reach a subscriber. TLS 1.3 and TLS 1.2 (forced through openssl.cnf
# MaxProtocol; the daemon's op names prove the version), p11psk migrate on a live
# broker's psk_file, and wrong raw keys that must get nothing through.
. "$(dirname "$0")/lib.sh"
setup_token
start_daemon

# TLS 1.2-only variants of both OpenSSL configs: system_default MaxProtocol = TLSv1.2.
{
    sed 's/^\[openssl_init\]$/&\nssl_conf = ssl_sect/' "$T/openssl.cnf"
    printf '\n[ssl_sect]\nsystem_default = sys_sect\n\n[sys_sect]\nMaxProtocol = TLSv1.2\n'
} >"$T/openssl12.cnf"
printf 'openssl_conf = openssl_init\n\n[openssl_init]\nssl_conf = ssl_sect\n\n[ssl_sect]\nsystem_default = sys_sect\n\n[sys_sect]\nMaxProtocol = TLSv1.2\n' \
    >"$T/plain12.cnf"
grep -q '^ssl_conf = ssl_sect$' "$T/openssl12.cnf" || die "could not add ssl_conf to openssl12.cnf"

# cnf KIND VER: the OPENSSL_CONF for a peer with a handle or a raw key, TLS 1.3 or 1.2.
cnf() {
    case $1$2 in
    handle13) echo "$T/openssl.cnf" ;;
    raw13) echo "$T/plain.cnf" ;;
    handle12) echo "$T/openssl12.cnf" ;;
    raw12) echo "$T/plain12.cnf" ;;
    *) die "cnf $*" ;;
    esac
}

# Two identities: one added with the CLI, one imported with softhsm2-util.
raw1=$(rand_hex_importable 32)
h1=$(add_hex sensor1 "$raw1")
raw2=$(rand_hex_importable 32)
import_aes sensor2 "$raw2"
h2=$(handle_of sensor2)
if [ "${#h1}" != 96 ] || [ "${#h2}" != 96 ]; then die "bad handles '$h1' '$h2'"; fi

# key KIND N: sensorN's key as a peer of that kind holds it.
key() { if [ "$1" = handle ]; then eval echo "\$h$2"; else eval echo "\$raw$2"; fi; }

# psk_file KIND FILE: a mosquitto psk_file with both identities.
psk_file() {
    printf '# p11psk test broker\nsensor1:%s\nsensor2:%s\n' "$(key "$1" 1)" "$(key "$1" 2)" >"$2"
    chmod 0600 "$2"
}

BROKER_PID=
BROKER_PORT=
BROKER_LOG=
NBROKER=0
# start_broker OPENSSL_CONF PSK_FILE [extra mosquitto.conf lines...]
start_broker() {
    local ossl=$1 file=$2 conf
    shift 2
    NBROKER=$((NBROKER + 1))
    BROKER_PORT=$(free_port)
    BROKER_LOG=$T/broker$NBROKER.log
    conf=$T/mosquitto$NBROKER.conf
    # user root: as root mosquitto would otherwise drop to user mosquitto, which the
    # daemon's ACL (allow * uid=0) refuses, and which could not read the 0600 psk_file.
    cat >"$conf" <<EOC
listener $BROKER_PORT 127.0.0.1
psk_hint p11psk-hint
psk_file $file
allow_anonymous true
use_identity_as_username true
persistence false
log_dest stderr
log_type all
user root
EOC
    if [ $# -gt 0 ]; then printf '%s\n' "$@" >>"$conf"; fi
    OPENSSL_CONF=$ossl mosquitto -c "$conf" >"$BROKER_LOG" 2>&1 &
    BROKER_PID=$!
    PIDS+=("$BROKER_PID")
    wait_port "$BROKER_PORT" "$BROKER_PID" ||
        die "mosquitto did not listen: $(tail -n 5 "$BROKER_LOG" | tr '\n' ' ')"
}

stop_broker() {
    [ -n "$BROKER_PID" ] || return 0
    kill "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=
}

# sub_start OSSL ID KEY TOPIC WAIT [extra...]: mosquitto_sub for one message (giving up
# after WAIT s), in the background, output in $T/sub.out; sets SUB_PID.
sub_start() {
    local ossl=$1 id=$2 k=$3 topic=$4 w=$5
    shift 5
    : >"$T/sub.out"
    OPENSSL_CONF=$ossl timeout $((w + 5)) mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" \
        -t "$topic" -C 1 -W "$w" --psk "$k" --psk-identity "$id" "$@" \
        >"$T/sub.out" 2>"$T/sub.err" &
    SUB_PID=$!
    PIDS+=("$SUB_PID")
}

# wait_subscribed TOPIC: until the broker has logged the subscription (bounded: 10 s).
wait_subscribed() {
    local line
    line=$(printf '\t%s (QoS' "$1")
    for _ in $(seq 100); do
        grep -q -F -- "$line" "$BROKER_LOG" && return 0
        kill -0 "$SUB_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# pub OSSL ID KEY TOPIC MSG [extra...]
pub() {
    local ossl=$1 id=$2 k=$3 topic=$4 msg=$5
    shift 5
    OPENSSL_CONF=$ossl timeout 15 mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT" -t "$topic" \
        -m "$msg" -q 1 --psk "$k" --psk-identity "$id" "$@" 2>"$T/pub.err"
}

# sub_finish: waits for the subscriber (bounded by its -W and timeout); SUB_OUT is what
# it printed.
sub_finish() {
    local rc=0
    wait "$SUB_PID" || rc=$?
    SUB_OUT=$(cat "$T/sub.out")
    return $rc
}

# roundtrip SUB_KIND PUB_KIND VER [extra client options...]: sensor1 subscribes, sensor2
# publishes a random message, which must arrive unchanged. Sets REASON on failure.
roundtrip() {
    local sk=$1 pk=$2 ver=$3 topic msg
    shift 3
    topic=p11psk/$(rand_hex 4)
    msg=msg-$(rand_hex 8)
    sub_start "$(cnf "$sk" "$ver")" sensor1 "$(key "$sk" 1)" "$topic" 10 "$@"
    if ! wait_subscribed "$topic"; then
        kill "$SUB_PID" 2>/dev/null || true
        wait "$SUB_PID" 2>/dev/null || true
        REASON="subscriber never subscribed: $(tr '\n' ' ' <"$T/sub.err")"
        return 1
    fi
    if ! pub "$(cnf "$pk" "$ver")" sensor2 "$(key "$pk" 2)" "$topic" "$msg" "$@"; then
        kill "$SUB_PID" 2>/dev/null || true
        wait "$SUB_PID" 2>/dev/null || true
        REASON="mosquitto_pub failed: $(tr '\n' ' ' <"$T/pub.err")"
        return 1
    fi
    if ! sub_finish; then
        REASON="mosquitto_sub failed: $(tr '\n' ' ' <"$T/sub.err")"
        return 1
    fi
    [ "$SUB_OUT" = "$msg" ] && return 0
    REASON="subscriber got '$SUB_OUT', not '$msg'"
    return 1
}

# log_from N: the daemon log from line N on; log_lines: the next line's number.
log_from() { tail -n "+$1" "$T/p11pskd.log"; }
log_lines() { echo $(($(wc -l <"$T/p11pskd.log") + 1)); }
OPS13='op=tls13-(early|expand|extract) '
OPS12='op=tls12-prf '

# check_ops NAME FROM VER BROKER_KIND CLIENT_KIND: the broker's and the clients'
# derivations since log line FROM went through p11pskd exactly when they hold handles,
# all of the version asked for and none of the other one.
check_ops() {
    local name=$1 from=$2 ver=$3 bk=$4 ck=$5 want b c bad cp
    if [ "$ver" = 13 ]; then want=$OPS13; else want=$OPS12; fi
    # (pipefail: a grep that selects nothing fails the pipeline; its count is still 0)
    b=$(log_from "$from" | grep -E "pid=$BROKER_PID " | grep -c -E "$want") || true
    c=$(log_from "$from" | grep -v -E "pid=$BROKER_PID " | grep -c -E "$want") || true
    # (gen-page: the provider's one request for p11pskd's key generation page)
    bad=$(log_from "$from" | grep -E ' op=' | grep -v ' op=gen-page ' | grep -c -v -E "$want.*result=ok") || true
    cp=$(log_from "$from" | grep -v -E "pid=$BROKER_PID " | grep -E "$want" |
        grep -o 'pid=[0-9]*' | sort -u | wc -l) || true
    if [ "$bad" -ne 0 ]; then
        fail "$name: $bad unexpected daemon lines: $(log_from "$from" | grep -E ' op=' | grep -v ' op=gen-page ' | grep -E -v "$want.*result=ok" | head -n 2)"
    elif [ "$bk" = handle ] && [ "$b" -lt 2 ]; then
        fail "$name: broker made only $b TLS1.$((ver - 10)) derivations in p11pskd"
    elif [ "$bk" = raw ] && [ "$b" -ne 0 ]; then
        fail "$name: broker with raw keys made $b derivations in p11pskd"
    elif [ "$ck" = handle ] && [ "$cp" -lt 2 ]; then
        fail "$name: derivations from only $cp client processes in p11pskd"
    elif [ "$ck" = raw ] && [ "$c" -ne 0 ]; then
        fail "$name: raw-key clients made $c derivations in p11pskd"
    else
        pass "$name: p11pskd served broker $b, clients $c TLS1.$((ver - 10)) derivations ($cp client processes)"
    fi
}

# scenario VER BROKER_KIND CLIENT_KIND [broker conf line] [-- client options]
scenario() {
    local ver=$1 bk=$2 ck=$3 from name
    shift 3
    local bconf=() copts=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do bconf+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    copts=("$@")
    name="TLS1.$((ver - 10)) broker $bk, clients $ck${bconf:+ (${bconf[*]})}"
    psk_file "$bk" "$T/psk-$NBROKER.txt"
    start_broker "$(cnf "$bk" "$ver")" "$T/psk-$NBROKER.txt" "${bconf[@]}"
    from=$(log_lines)
    if roundtrip "$ck" "$ck" "$ver" "${copts[@]}"; then
        pass "$name: message received"
        check_ops "$name" "$from" "$ver" "$bk" "$ck"
    else
        fail "$name: $REASON"
    fi
    stop_broker
}

# --- 1. handles and raw keys on either side, TLS 1.3 and TLS 1.2
for ver in 13 12; do
    scenario "$ver" handle raw
    scenario "$ver" raw handle
    scenario "$ver" handle handle
done
# TLS 1.2 with the suite named on both sides (plain PSK and ECDHE-PSK).
for suite in PSK-AES128-GCM-SHA256 ECDHE-PSK-AES128-CBC-SHA256; do
    scenario 12 handle handle "ciphers $suite" -- --ciphers "$suite"
    scenario 12 handle raw "ciphers $suite" -- --ciphers "$suite"
done

# The suite options take effect: a broker on PSK-AES128-GCM-SHA256 only refuses a client
# that offers only ECDHE-PSK-AES128-CBC-SHA256.
psk_file handle "$T/psk-suite.txt"
start_broker "$T/openssl12.cnf" "$T/psk-suite.txt" "ciphers PSK-AES128-GCM-SHA256"
if pub "$T/plain12.cnf" sensor2 "$raw2" p11psk/suite "m" --ciphers ECDHE-PSK-AES128-CBC-SHA256; then
    fail "TLS1.2 suite mismatch: mosquitto_pub succeeded"
else
    pass "TLS1.2 suite mismatch refused: $(head -n 1 "$T/pub.err")"
fi
stop_broker

# --- 2. wrong raw keys against a broker holding handles get nothing through
psk_file handle "$T/psk-neg.txt"
start_broker "$T/openssl.cnf" "$T/psk-neg.txt"
wrong=$(rand_hex 32)
topic=p11psk/$(rand_hex 4)
msg=retained-$(rand_hex 8)
if pub "$T/plain.cnf" sensor2 "$raw2" "$topic" "$msg" -r; then
    # The message is retained: any subscriber that gets through receives it at once.
    sub_start "$T/plain.cnf" sensor1 "$wrong" "$topic" 3
    if sub_finish; then
        fail "wrong-key subscriber: exited 0 with '$SUB_OUT'"
    elif [ -n "$SUB_OUT" ]; then
        fail "wrong-key subscriber received '$SUB_OUT'"
    else
        pass "wrong-key subscriber got no message: $(head -n 1 "$T/sub.err")"
    fi
    sub_start "$T/plain.cnf" sensor1 "$raw1" "$topic" 5
    if sub_finish && [ "$SUB_OUT" = "$msg" ]; then
        pass "right-key subscriber got the retained message"
    else
        fail "right-key subscriber: got '$SUB_OUT': $(tr '\n' ' ' <"$T/sub.err")"
    fi
else
    fail "retained publish: $(tr '\n' ' ' <"$T/pub.err")"
fi
# A wrong-key publisher: refused, and the subscriber's first message is the next right one.
topic=p11psk/$(rand_hex 4)
msg=right-$(rand_hex 8)
sub_start "$T/plain.cnf" sensor1 "$raw1" "$topic" 10
if wait_subscribed "$topic"; then
    if pub "$T/plain.cnf" sensor2 "$wrong" "$topic" "wrong-$(rand_hex 8)"; then
        fail "wrong-key publisher: mosquitto_pub exited 0"
    else
        pass "wrong-key publisher refused: $(head -n 1 "$T/pub.err")"
    fi
    pub "$T/plain.cnf" sensor2 "$raw2" "$topic" "$msg" || true
    if sub_finish && [ "$SUB_OUT" = "$msg" ]; then
        pass "subscriber's only message is the right-key publisher's"
    else
        fail "after wrong-key publisher: subscriber got '$SUB_OUT'"
    fi
else
    fail "subscriber never subscribed: $(tr '\n' ' ' <"$T/sub.err")"
fi
stop_broker

# --- 3. p11psk migrate on a working broker's psk_file
mraw1=$(rand_hex 32)
mraw2=$(rand_hex 32)
mkdir "$T/etc"
MQ=$T/etc/psk_file
printf '# sensors\nmig1:%s\nmig2:%s\n' "$mraw1" "$mraw2" >"$MQ"
chmod 0600 "$MQ"
# mroundtrip OSSL: mig1 subscribes, mig2 publishes, both with their raw keys.
mroundtrip() {
    local topic msg
    topic=p11psk/$(rand_hex 4)
    msg=mig-$(rand_hex 8)
    sub_start "$1" mig1 "$mraw1" "$topic" 10
    wait_subscribed "$topic" || { REASON="not subscribed: $(cat "$T/sub.err")"; return 1; }
    pub "$1" mig2 "$mraw2" "$topic" "$msg" || { REASON="pub: $(cat "$T/pub.err")"; return 1; }
    sub_finish || { REASON="sub: $(cat "$T/sub.err")"; return 1; }
    [ "$SUB_OUT" = "$msg" ] || { REASON="got '$SUB_OUT'"; return 1; }
}
start_broker "$T/plain.cnf" "$MQ"
if mroundtrip "$T/plain.cnf"; then pass "before migrate: raw-key broker and clients"; else
    fail "before migrate: $REASON"; fi
stop_broker
if "$BIN/p11psk" migrate --mosquitto "$MQ" >"$T/mig.out" 2>&1; then
    pass "p11psk migrate --mosquitto: $(tail -n 1 "$T/mig.out")"
else
    fail "p11psk migrate --mosquitto: $(cat "$T/mig.out")"
fi
if grep -q -i -F -e "$mraw1" -e "$mraw2" "$MQ"; then
    fail "migrated psk_file still holds a raw key"
elif grep -q -x "mig1:$(handle_of mig1)" "$MQ" && grep -q -x "mig2:$(handle_of mig2)" "$MQ"; then
    pass "migrated psk_file holds the handles and no raw key"
else
    fail "migrated psk_file: $(cat "$MQ")"
fi
for ver in 13 12; do
    start_broker "$(cnf handle "$ver")" "$MQ"
    from=$(log_lines)
    if [ "$ver" = 13 ]; then o=$T/plain.cnf; else o=$T/plain12.cnf; fi
    if mroundtrip "$o"; then
        pass "after migrate, TLS1.$((ver - 10)): broker on handles, clients keep their raw keys"
        check_ops "after migrate TLS1.$((ver - 10))" "$from" "$ver" handle raw
    else
        fail "after migrate TLS1.$((ver - 10)): $REASON"
    fi
    stop_broker
done
finish
