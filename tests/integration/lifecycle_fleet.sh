#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# What a fleet needs around the keys: `p11psk export --stunnel` read unmodified by stunnel4
# (server with the provider) against a raw-key openssl client; validity windows
# (--not-after: an expired key fails the handshake with "key expired on DATE" in the
# daemon log, a future date works, list shows both); pkcs11: URIs as IDs; per-key usage
# counters that match the audit log, with Prometheus label escaping; the latency
# histogram; and `metrics`/`status` exit status with p11pskd up and down.
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
. "$(dirname "$0")/lib.sh"
command -v stunnel4 >/dev/null || die "stunnel4 not installed"
STUNNEL_PRELOAD=${LD_PRELOAD:-} # only the provider's hosts get the ASan runtime
unset LD_PRELOAD
setup_token
start_daemon
P=("$BIN/p11psk" --config "$T/p11pskd.conf")
D=$T/fleet
mkdir "$D"
TAG=t$$

# --- metrics and status with p11pskd up: exit 0, p11psk_up 1.
if "${P[@]}" metrics >"$D/m.out" 2>"$D/m.err" && grep -qx 'p11psk_up 1' "$D/m.out"; then
    pass "metrics with p11pskd up: exit 0, p11psk_up 1"
else
    fail "metrics with p11pskd up: exit $?, $(head -n 3 "$D/m.out" "$D/m.err" | tr '\n' ' ')"
fi

# --- export --stunnel, used unmodified by stunnel4.
SID=fleet-$TAG-tunnel
sraw=$(rand_hex_importable 32)
import_aes "$SID" "$sraw" # softhsm2-util: no CKA_END_DATE, so it never expires
other=fleet-$TAG-zz
add_hex "$other" "$(rand_hex 32)" >/dev/null 2>&1
add_hex "skip-$TAG" "$(rand_hex 32)" >/dev/null 2>&1
if "${P[@]}" export --stunnel --match "fleet-$TAG-*" -o "$D/psk.txt" 2>"$D/exp.err"; then
    pass "export --stunnel -o: $(cat "$D/exp.err")"
else
    fail "export --stunnel -o: $(cat "$D/exp.err")"
fi
want=$(printf '%s:%s\n%s:%s' "$SID" "$(handle_of "$SID")" "$other" "$(handle_of "$other")")
if [ "$(cat "$D/psk.txt")" = "$want" ]; then
    pass "export: identity:handle lines, sorted, --match left skip-$TAG out"
else
    fail "export: got '$(cat "$D/psk.txt")', want '$want'"
fi
mode=$(stat -c %a "$D/psk.txt")
[ "$mode" = 600 ] && pass "export -o: mode 0600" || fail "export -o: mode $mode"
if grep -q -i -F -- "$sraw" "$D/psk.txt"; then fail "export: raw key in the file"; fi
ls "$D"/psk.txt.p11psk-* >/dev/null 2>&1 && fail "export: temporary file left behind"
# A URI as --match names one key.
uri=$("${P[@]}" handle "$SID" --uri)
if [ "$("${P[@]}" export --mosquitto --match "$uri" 2>/dev/null)" = "$SID:$(handle_of "$SID")" ]; then
    pass "export --match pkcs11: URI picks exactly that key"
else
    fail "export --match '$uri': $("${P[@]}" export --mosquitto --match "$uri" 2>&1)"
fi
if [ "$("${P[@]}" handle "$uri")" = "$(handle_of "$SID")" ]; then
    pass "handle accepts the key's pkcs11: URI as ID"
else
    fail "handle $uri: $("${P[@]}" handle "$uri" 2>&1)"
fi
out=$("${P[@]}" handle 'pkcs11:token=nosuch;object=x' 2>&1) && fail "URI of another token accepted"
case $out in
*"names token 'nosuch'"*) pass "URI naming another token refused: $out" ;;
*) fail "URI of another token: $out" ;;
esac
# Not a regular file: refused, nothing replaced.
mkdir "$D/adir"
ln -s "$D/psk.txt" "$D/alink"
for tgt in "$D/adir" "$D/alink"; do
    if out=$("${P[@]}" export --stunnel -o "$tgt" 2>&1); then
        fail "export -o $tgt succeeded"
    elif [[ $out == *"is not a regular file"* ]]; then
        pass "export -o ${tgt##*/}: refused ($out)"
    else
        fail "export -o ${tgt##*/}: $out"
    fi
done
[ -d "$D/adir" ] && [ -L "$D/alink" ] || fail "export replaced a non-regular file"

# Echo backend behind the stunnel server: one line back per line, bounded.
BPORT=$(free_port)
perl -MIO::Socket::INET -e '
    my $l = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $ARGV[0],
                                  Listen => 8, ReuseAddr => 1) or die "listen: $!\n";
    $SIG{PIPE} = "IGNORE";
    while (my $c = $l->accept) {
        eval {
            local $SIG{ALRM} = sub { die "timeout\n" };
            alarm 20;
            while (my $line = <$c>) { print $c $line; }
            alarm 0;
        };
        close $c;
    }' "$BPORT" >"$D/backend.log" 2>&1 &
PIDS+=("$!")
wait_port "$BPORT" "$!" || die "backend did not listen"
SPORT=$(free_port)
cat >"$D/stunnel.conf" <<EOC
foreground = yes
pid =
syslog = no
debug = 7

[fleet]
accept = 127.0.0.1:$SPORT
connect = 127.0.0.1:$BPORT
PSKsecrets = $D/psk.txt
sslVersion = TLSv1.3
ciphersuites = TLS_AES_128_GCM_SHA256
EOC
LD_PRELOAD=$STUNNEL_PRELOAD OPENSSL_CONF=$T/openssl.cnf stunnel4 "$D/stunnel.conf" \
    >"$D/stunnel.log" 2>&1 &
STUNNEL_PID=$!
PIDS+=("$STUNNEL_PID")
wait_port "$SPORT" "$STUNNEL_PID" || die "stunnel did not listen: $(tail -n 5 "$D/stunnel.log")"
msg="fleet-$RANDOM-$RANDOM"
got=$(printf '%s\n' "$msg" | OPENSSL_CONF=$T/plain.cnf timeout 20 openssl s_client \
    -connect "127.0.0.1:$SPORT" -tls1_3 -ciphersuites TLS_AES_128_GCM_SHA256 \
    -psk "$sraw" -psk_identity "$SID" -quiet -ign_eof 2>"$D/sclient.err" | head -n 1) || true
if [ "$got" = "$msg" ]; then
    pass "stunnel4 with the exported PSKsecrets (provider) and a raw-key openssl client: round trip"
else
    fail "stunnel round trip: got '$got'; $(tail -n 3 "$D/sclient.err" | tr '\n' ' ')" \
        "stunnel: $(grep -i -m3 'error\|fail' "$D/stunnel.log" | tr '\n' ' ')"
fi
if grep -q -E "pid=$STUNNEL_PID .* key=$SID result=ok" "$T/p11pskd.log"; then
    pass "p11pskd served stunnel (pid $STUNNEL_PID) for $SID"
else
    fail "no derivation for stunnel pid $STUNNEL_PID in the daemon log"
fi
kill "$STUNNEL_PID" 2>/dev/null || true
# The openssl peers below load the provider: in the sanitizer build they need the ASan
# runtime that only stunnel had above.
if [ -n "$STUNNEL_PRELOAD" ]; then export LD_PRELOAD=$STUNNEL_PRELOAD; fi

# --- validity windows.
yesterday=$(date -u -d yesterday +%F)
future=$(date -u -d '+30 days' +%F)
soon=$(date -u -d '+3 days' +%F)
XID=exp-$TAG
xraw=$(rand_hex 32)
xh=$(add_hex "$XID" "$xraw" --not-after "$yesterday" 2>"$D/add.err")
grep -q "expired on $yesterday" "$D/add.err" && pass "add --not-after (past): warns" ||
    fail "add --not-after past: no warning: $(cat "$D/add.err")"
FID=fut-$TAG
fraw=$(rand_hex 32)
fh=$(add_hex "$FID" "$fraw" --not-after "$future" 2>/dev/null)
add_hex "soon-$TAG" "$(rand_hex 32)" --not-after "$soon" >/dev/null 2>&1
out=$("${P[@]}" add "bad-$TAG" --not-after 2026-02-30 2>&1) && fail "add took 2026-02-30"
[[ $out == *"--not-after takes a date YYYY-MM-DD"* ]] && pass "add --not-after 2026-02-30 refused" ||
    fail "add --not-after 2026-02-30: $out"
if run_pair handle "$xh" raw "$xraw" -tls1_3; then
    fail "expired key: handshake succeeded"
else
    pass "expired key: handshake fails ($REASON)"
fi
if grep -q "key=$XID result=refused-by-policy reason=\"key expired on $yesterday " "$T/p11pskd.log"; then
    pass "daemon log: key expired on $yesterday"
else
    fail "daemon log lacks 'key expired on $yesterday': $(grep "key=$XID" "$T/p11pskd.log" | tail -n 2)"
fi
expect_ok "key valid through $future: handshake works" handle "$fh" raw "$fraw" -tls1_3
"${P[@]}" list >"$D/list.out"
if grep -E "^$XID .* $yesterday! " "$D/list.out" >/dev/null &&
    grep -E "^$FID .* $future " "$D/list.out" >/dev/null &&
    grep -E "^$SID .* - +pkcs11:" "$D/list.out" >/dev/null; then
    pass "list: NOT-AFTER shows $yesterday! (expired), $future, and - (no date)"
else
    fail "list: $(grep -E "$XID|$FID|$SID" "$D/list.out" | tr '\n' ' ')"
fi
"${P[@]}" list --json >"$D/list.json"
if perl -MJSON::PP -e '
    my ($x, $f, $s, $y, $fu) = @ARGV[1..5];
    local $/; open my $fh, "<", $ARGV[0] or die; my $j = decode_json(<$fh>);
    my %k = map { $_->{id} => $_ } @$j;
    exit !($k{$x}{not_after} eq $y && $k{$x}{expired} && $k{$f}{not_after} eq $fu &&
           !$k{$f}{expired} && !defined $k{$s}{not_after} && !$k{$s}{expired});
    ' "$D/list.json" "$XID" "$FID" "$SID" "$yesterday" "$future"; then
    pass "list --json: not_after and expired"
else
    fail "list --json: $(grep -E "$XID|$FID" "$D/list.json")"
fi
"${P[@]}" export --stunnel --match "exp-$TAG" >/dev/null 2>"$D/exp2.err" &&
    fail "export of only an expired key succeeded"
grep -q "left out '$XID': it has expired" "$D/exp2.err" && pass "export leaves expired keys out" ||
    fail "export of an expired key: $(cat "$D/exp2.err")"
# rotate gives the identity a new date; the same handle works again.
printf '%s\n' "$xraw" >"$D/x.hex"
if "${P[@]}" rotate "$XID" --hex-file "$D/x.hex" --not-after "$future" >"$D/rot.out" 2>&1; then
    expect_ok "rotate --not-after $future: the expired identity works again" \
        handle "$xh" raw "$xraw" -tls1_3
else
    fail "rotate --not-after: $(cat "$D/rot.out")"
fi
rm -f "$D/x.hex"

# --- per-key usage counters against the audit log; label escaping.
EID="fleet $TAG \"q\\x"
eraw=$(rand_hex 32)
eh=$(add_hex "$EID" "$eraw" 2>/dev/null)
for _ in 1 2; do expect_ok "handshake with a key labelled '$EID'" handle "$eh" raw "$eraw" -tls1_3; done
"${P[@]}" status --json >"$D/status.json" 2>"$D/status.err" || fail "status --json: $(cat "$D/status.err")"
"${P[@]}" metrics >"$D/metrics.out" 2>"$D/metrics.err" || fail "metrics: $(cat "$D/metrics.err")"
for id in "$SID" "$FID" "$XID" "$EID"; do
    # The audit line writes the label logfmt-style: quoted when it has a space, '=' or a
    # character that needs escaping, with \ and " escaped.
    lf=$(perl -e '$_ = $ARGV[0]; my $q = /[ ="\\\x00-\x1f\x7f]/; s/\\/\\\\/g; s/"/\\"/g;
        print $q ? "\"$_\"" : $_' "$id")
    audit=$(grep -c -F " key=$lf result=" "$T/p11pskd.log" || true)
    counted=$(perl -MJSON::PP -e '
        local $/; open my $fh, "<", $ARGV[0] or die; my $j = decode_json(<$fh>);
        for (@{$j->{keys}}) { if ($_->{key} eq $ARGV[1]) { print $_->{requests}; exit } }
        print 0;' "$D/status.json" "$id")
    esc=$(perl -e '$_ = $ARGV[0]; s/\\/\\\\/g; s/"/\\"/g; print' "$id")
    prom=$(grep -F "p11psk_key_requests_total{key=\"$esc\"} " "$D/metrics.out" | sed 's/.* //')
    if [ "$audit" -gt 0 ] && [ "$audit" = "$counted" ] && [ "$prom" = "$counted" ]; then
        pass "key '$id': $counted requests in status --json and metrics = audit lines"
    else
        fail "key '$id': audit $audit, status $counted, metrics '${prom:-none}'"
    fi
done
if grep -q -F "p11psk_key_last_use_timestamp_seconds{key=\"fleet $TAG \\\"q\\\\x\"} " "$D/metrics.out"; then
    pass "metrics: label value escaped (quote, backslash)"
else
    fail "metrics: escaped label missing: $(grep -F "$TAG" "$D/metrics.out" | head -n 3)"
fi
# Histogram: +Inf bucket = _count, buckets never decrease, one TYPE line.
if perl -e '
    my (%inf, %cnt, %last, $bad, $types);
    while (<STDIN>) {
        $types++ if /^# TYPE p11psk_request_duration_seconds histogram$/;
        if (/^p11psk_request_duration_seconds_bucket\{op="([^"]+)",le="([^"]+)"\} (\d+)$/) {
            $bad++ if defined $last{$1} && $3 < $last{$1};
            $last{$1} = $3; $inf{$1} = $3 if $2 eq "+Inf";
        }
        $cnt{$1} = $2 if /^p11psk_request_duration_seconds_count\{op="([^"]+)"\} (\d+)$/;
    }
    exit 1 unless $types == 1 && %cnt && !$bad && exists $cnt{"tls13-expand"};
    for (keys %cnt) { exit 1 unless $inf{$_} == $cnt{$_} }' <"$D/metrics.out"; then
    pass "metrics: request_duration_seconds histogram per op, +Inf = count"
else
    fail "metrics histogram: $(grep duration "$D/metrics.out" | head -n 5 | tr '\n' ' ')"
fi
exp_n=$(grep '^p11psk_keys_expired ' "$D/metrics.out" | sed 's/.* //')
soon_n=$(grep '^p11psk_keys_expiring_7d ' "$D/metrics.out" | sed 's/.* //')
[ "$exp_n" = 0 ] && [ "${soon_n:-0}" -ge 1 ] && pass "metrics: keys_expired 0, keys_expiring_7d $soon_n" ||
    fail "metrics: keys_expired '$exp_n' keys_expiring_7d '$soon_n'"
"${P[@]}" status >"$D/status.txt" 2>&1 || fail "status: $(cat "$D/status.txt")"
grep -q '^latency ' "$D/status.txt" && grep -q '^key usage ' "$D/status.txt" &&
    pass "status report: latency and key usage tables" ||
    fail "status report: $(cat "$D/status.txt")"

# --- metrics and status with p11pskd down: p11psk_up 0 on stdout, exit 1, why on stderr.
stop_daemon
rc=0
"${P[@]}" metrics >"$D/m2.out" 2>"$D/m2.err" || rc=$?
if [ "$rc" = 1 ] && grep -qx 'p11psk_up 0' "$D/m2.out" && grep -q -F "$T/p11psk.sock" "$D/m2.err" &&
    grep -q "socket's group" "$D/m2.err"; then
    pass "metrics with p11pskd down: exit 1, p11psk_up 0; $(cat "$D/m2.err")"
else
    fail "metrics with p11pskd down: exit $rc; stdout $(tr '\n' ' ' <"$D/m2.out"); stderr $(cat "$D/m2.err")"
fi
rc=0
"${P[@]}" status >"$D/s2.out" 2>"$D/s2.err" || rc=$?
[ "$rc" = 1 ] && grep -q "cannot reach p11pskd" "$D/s2.err" && pass "status with p11pskd down: exit 1" ||
    fail "status with p11pskd down: exit $rc: $(cat "$D/s2.err")"
finish
