#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A key's life through the CLI against a running p11pskd that is never restarted:
# add, handshakes, `p11psk rotate` (new key material, same handle; the daemon is told to
# drop its cached values), rotation under load, rm's confirmation, list --json, and the
# pkcs11: URIs every command prints.
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
# shellcheck disable=SC2016 # json_get's expressions are Perl: $_ and $j are Perl's
. "$(dirname "$0")/lib.sh"
setup_token
start_daemon
P=("$BIN/p11psk" --config "$T/p11pskd.conf")
DPID=$DAEMON_PID
TLS13=(-tls1_3)
TLS12=(-tls1_2 -cipher PSK-AES128-GCM-SHA256)

# json_get FILE PERL-EXPR: evaluates PERL-EXPR with $j = the decoded JSON of FILE.
json_get() { perl -MJSON::PP -e 'local $/; my $j = decode_json(<STDIN>); print eval($ARGV[0]) // "", "\n"; die $@ if $@' "$2" <"$1"; }

# pairs NAME HANDLE RAW ok|fail: TLS 1.3 and 1.2, the handle on either side, raw key opposite.
pairs() {
    local name=$1 h=$2 raw=$3 want=$4 v opts dir s c
    for v in 3 2; do
        if [ "$v" = 3 ]; then opts=("${TLS13[@]}"); else opts=("${TLS12[@]}"); fi
        for dir in "handle raw" "raw handle"; do
            read -r s c <<<"$dir"
            local sk=$h ck=$raw
            [ "$s" = raw ] && sk=$raw ck=$h
            if run_pair "$s" "$sk" "$c" "$ck" "${opts[@]}"; then
                [ "$want" = ok ] && pass "$name: TLS 1.$v server=$s client=$c" ||
                    fail "$name: TLS 1.$v server=$s client=$c: handshake worked but should fail"
            else
                [ "$want" = fail ] && pass "$name: TLS 1.$v server=$s client=$c fails" ||
                    fail "$name: TLS 1.$v server=$s client=$c: $REASON"
            fi
        done
    done
}

# --- add prints the URI; handshakes with the old key (this also fills p11pskd's caches).
old=$(rand_hex 32)
new=$(rand_hex 32)
h=$(add_hex life "$old" 2>"$T/add.err")
grep -q -E '^created pkcs11:token=p11psk-test;id=(%[0-9A-F]{2}){16};object=life;type=secret-key' \
    "$T/add.err" && pass "add prints the key's URI: $(head -c 80 "$T/add.err")..." ||
    fail "add: no URI: $(cat "$T/add.err")"
pairs "old key" "$h" "$old" ok

# --- rotate --hex-file: same handle, old raw key refused, new one works, no restart.
printf '%s\n' "$new" >"$T/new.hex"
flushes=$(grep -c 'op=flush .*result=ok' "$T/p11pskd.log" || true)
if "${P[@]}" rotate life --hex-file "$T/new.hex" >"$T/out" 2>"$T/err"; then
    pass "rotate --hex-file: $(head -n 1 "$T/out" | cut -c 1-60)..."
else
    fail "rotate --hex-file: $(cat "$T/err")"
fi
rm -f "$T/new.hex"
grep -q '^rotated pkcs11:token=p11psk-test;.*object=life;type=secret-key: new 32-byte key' "$T/out" &&
    pass "rotate prints the URI" || fail "rotate output: $(cat "$T/out")"
grep -q "^p11pskd flushed [0-9]* cached values for 'life'" "$T/out" && pass "rotate: p11pskd flushed" ||
    fail "rotate did not flush: $(cat "$T/out" "$T/err")"
ckaid=$("${P[@]}" list --json >"$T/list.json" && json_get "$T/list.json" \
    'join "", map { $_->{ckaid} } grep { $_->{id} eq "life" } @$j')
for _ in $(seq 20); do
    [ "$(grep -c 'op=flush .*result=ok' "$T/p11pskd.log")" -gt "$flushes" ] && break
    sleep 0.1
done
grep -q "op=flush key=$ckaid result=ok" "$T/p11pskd.log" &&
    pass "p11pskd logged op=flush key=$ckaid result=ok" || fail "no flush line for $ckaid in the log"
[ "$(handle_of life)" = "$h" ] && pass "the handle is unchanged" || fail "handle changed"
grep -q -i -F -e "$old" -e "$new" "$T/out" "$T/err" && fail "rotate printed key bytes" ||
    pass "rotate prints no key bytes"
pairs "after rotation, old raw key" "$h" "$old" fail
pairs "after rotation, new raw key" "$h" "$new" ok
kill -0 "$DPID" 2>/dev/null && [ "$DAEMON_PID" = "$DPID" ] &&
    [ "$(grep -c ' serving module ' "$T/p11pskd.log")" = 1 ] &&
    pass "same p11pskd process throughout (pid $DPID)" || fail "p11pskd was restarted or died"

# --- rotate --generate: handle and length kept (default), or the length given.
"${P[@]}" rotate life >"$T/out" 2>"$T/err" && grep -q 'new 32-byte key generated' "$T/out" &&
    pass "rotate (default --generate): 32 bytes again" || fail "rotate: $(cat "$T/out" "$T/err")"
"${P[@]}" list --json >"$T/list.json"
[ "$(json_get "$T/list.json" 'join ",", map { "$_->{length},$_->{handle},$_->{readable}" } grep { $_->{id} eq "life" } @$j')" = "32,$h,0" ] &&
    pass "after --generate: one key, 32 bytes, same handle, not readable" ||
    fail "after --generate: $(cat "$T/list.json")"
pairs "after --generate, new raw key from --hex-file" "$h" "$new" fail
expect_ok_both "after --generate: handles on both sides, TLS 1.3" handle "$h" handle "$h" "${TLS13[@]}"
expect_ok_both "after --generate: handles on both sides, TLS 1.2" handle "$h" handle "$h" "${TLS12[@]}"
"${P[@]}" rotate life --generate 48 --readable >"$T/out" 2>"$T/err" &&
    grep -q 'new 48-byte key' "$T/out" && grep -q 'now readable' "$T/out" &&
    pass "rotate --generate 48 --readable" || fail "rotate 48: $(cat "$T/out" "$T/err")"
[ "$("${P[@]}" list --json | json_get /dev/stdin 'join ",", map { "$_->{length},$_->{readable}" } grep { $_->{id} eq "life" } @$j')" = "48,1" ] &&
    [ "$(handle_of life)" = "$h" ] && pass "48 bytes, readable, same handle" ||
    fail "after --generate 48: $("${P[@]}" list)"

# --- rotate without a reachable p11pskd: done, says so, exit 3; bad usage; unknown ID.
sed "s|^socket = .*|socket = $T/nothing-here.sock|" "$T/p11pskd.conf" >"$T/nod.conf"
rc=0
"$BIN/p11psk" --config "$T/nod.conf" rotate life >"$T/out" 2>"$T/err" || rc=$?
if [ "$rc" = 3 ] && grep -q 'rotated .*could not be told: .*unreachable' "$T/err"; then
    pass "daemon unreachable: rotated, exit 3, says p11pskd was not told"
else
    fail "unreachable daemon: rc $rc: $(cat "$T/out" "$T/err")"
fi
rc=0
"${P[@]}" rotate life --generate 32 --hex-file /dev/null >/dev/null 2>"$T/err" || rc=$?
[ "$rc" = 2 ] && grep -q 'not both' "$T/err" && pass "--generate with --hex-file: usage error" ||
    fail "both sources: rc $rc $(cat "$T/err")"
"${P[@]}" rotate nosuch >/dev/null 2>"$T/err" && fail "rotate nosuch worked" ||
    { grep -q "no key labelled 'nosuch'" "$T/err" && pass "rotate of an unknown ID names it" ||
        fail "rotate nosuch: $(cat "$T/err")"; }

# --- rotation under load: in-process handshakes with the handle on both sides while the
# key is rotated 10 times. A handshake that straddles a rotation may derive on both keys
# and fail, as with any key change; but p11pskd must never find the key missing or
# ambiguous (create-then-destroy, with its cached object in use until the destroy).
logstart=$(wc -l <"$T/p11pskd.log")
OPENSSL_CONF=$T/openssl.cnf timeout 60 "$HSLOOP" --tls13 --threads 4 --count 400 --interval-ms 5 -v \
    --client-psk "$h" --server-psk "$h" >"$T/load.out" 2>"$T/load.err" &
LOADPID=$!
PIDS+=("$LOADPID")
sleep 0.5
for i in $(seq 10); do
    "${P[@]}" rotate life >/dev/null 2>>"$T/rot.err" || fail "rotation $i under load: $(tail -n 1 "$T/rot.err")"
    sleep 0.2
done
wait "$LOADPID" || true
HS_OK=$(grep -c ' ok$' "$T/load.out" || true)
HS_FAILED=$(grep -c ' fail: ' "$T/load.out" || true)
tail -n +"$((logstart + 1))" "$T/p11pskd.log" >"$T/load.log"
gaps=$(cat "$T/load.out" "$T/load.log" | grep -c -E 'key not found|share CKA_ID|no key with' || true)
log "  under load: $HS_OK ok, $HS_FAILED failed while rotating 10 times"
[ "$HS_FAILED" = 0 ] || log "  first failure: $(grep -m 1 -o 'fail: .*' "$T/load.out")"
[ "$gaps" = 0 ] && [ "$HS_OK" -gt 0 ] &&
    pass "rotation under load: p11pskd never lacked the key ($HS_OK ok, $HS_FAILED straddling)" ||
    fail "rotation under load: $gaps lookups found no key or two: $(grep -h -m 2 -E 'not found|share CKA_ID' "$T/load.out" "$T/load.log")"

# --- rm: confirmation. Not a terminal and no --yes: refused, naming --yes.
"${P[@]}" add gone >/dev/null 2>&1
if "${P[@]}" rm gone </dev/null >"$T/out" 2>"$T/err"; then
    fail "rm without --yes on a non-terminal removed the key"
elif grep -q -- '--yes' "$T/err" && grep -q 'pkcs11:.*object=gone' "$T/err" && handle_of gone >/dev/null; then
    pass "rm without --yes refused: $(cut -c 1-60 "$T/err")..."
else
    fail "rm refusal: $(cat "$T/err")"
fi
if command -v script >/dev/null; then
    # On a terminal (script(1) gives it a pty): "n" keeps the key, "y" removes it.
    printf 'n\n' | timeout 10 script -q -e -c "${P[*]} rm gone" /dev/null >"$T/tty.out" 2>&1 || true
    grep -q "remove key 'gone' (pkcs11:.*object=gone;type=secret-key)? \[y/N\]" "$T/tty.out" &&
        handle_of gone >/dev/null 2>&1 && pass "rm on a terminal asks; 'n' keeps the key" ||
        fail "rm prompt: $(cat "$T/tty.out")"
    printf 'y\n' | timeout 10 script -q -e -c "${P[*]} rm gone" /dev/null >"$T/tty.out" 2>&1 || true
    ! handle_of gone >/dev/null 2>&1 && pass "rm on a terminal: 'y' removes" ||
        fail "rm 'y': $(cat "$T/tty.out")"
    "${P[@]}" add gone >/dev/null 2>&1
fi
"${P[@]}" rm gone --yes >"$T/out" 2>"$T/err" &&
    grep -q '^removed pkcs11:token=p11psk-test;.*object=gone;type=secret-key (32 bytes)' "$T/out" &&
    pass "rm --yes removes and prints the URI" || fail "rm --yes: $(cat "$T/out" "$T/err")"
handle_of gone >/dev/null 2>&1 && fail "key still there after rm --yes" || pass "handle of a removed key fails"

# --- list --json: valid JSON with every field; handle --uri matches.
"${P[@]}" add "odd \"name\";x" --generate 20 >/dev/null 2>&1
"${P[@]}" list --json >"$T/list.json"
if json_get "$T/list.json" '
    die "not an array\n" unless ref $j eq "ARRAY" && @$j == 2;
    for my $k (@$j) {
        for my $f (qw(id ckaid type length readable handle uri)) { die "no $f\n" unless exists $k->{$f} }
        die "bad ckaid\n" unless $k->{ckaid} =~ /^[0-9a-f]{32}$/;
        die "bad uri $k->{uri}\n" unless $k->{uri} =~ /^pkcs11:token=p11psk-test;id=(%[0-9A-F]{2}){16};object=[^;]+;type=secret-key$/;
    }
    "ok"' >"$T/json.out" 2>&1 && [ "$(cat "$T/json.out")" = ok ]; then
    pass "list --json parses, every key has id ckaid type length readable handle uri"
else
    fail "list --json: $(cat "$T/json.out" "$T/list.json")"
fi
[ "$(json_get "$T/list.json" 'join "", map { "$_->{length}:$_->{handle}" } grep { $_->{id} eq "life" } @$j')" = "48:$h" ] &&
    pass "list --json: life has the same handle and length after 10 more rotations" || fail "list --json life: $(cat "$T/list.json")"
[ "$(json_get "$T/list.json" 'join "", map { $_->{uri} } grep { $_->{id} eq "odd \"name\";x" } @$j')" = \
    "$("${P[@]}" handle 'odd "name";x' --uri)" ] && "${P[@]}" handle 'odd "name";x' --uri | grep -q 'object=odd%20%22name%22%3Bx;' &&
    pass "a label with quotes and ';' survives JSON and URI encoding" || fail "odd label: $(cat "$T/list.json")"
"${P[@]}" list >"$T/out"
grep -q -E '^life .* pkcs11:token=p11psk-test;id=.*;object=life;type=secret-key$' "$T/out" &&
    pass "list shows the URI column" || fail "list: $(cat "$T/out")"
for c in rotate rm list handle; do
    "${P[@]}" "$c" --help >"$T/out" && grep -q "^Usage: p11psk $c" "$T/out" && pass "$c --help" ||
        fail "$c --help: $(cat "$T/out")"
done
finish
