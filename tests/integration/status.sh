#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# p11psk status / metrics against a real p11pskd: the report, JSON whose counts match the
# audit log, Prometheus text that passes a format check, and the status permission: a
# non-root user is refused with a message naming allow-status, and allowed after an
# allow-status line and SIGHUP.
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || skip "needs root to create a throwaway user"
U=p11psk-it-st
cleanup_user() { userdel "$U" 2>/dev/null || true; }
cleanup_user # leftover of an interrupted run
ON_EXIT+=(cleanup_user)
useradd -M -U -s /usr/sbin/nologin "$U"

setup_token
# Any local user may connect; the STATUS permission is what refuses them.
printf 'socket-mode = 0666\n' >>"$T/p11pskd.conf"
start_daemon
P=("$BIN/p11psk" --config "$T/p11pskd.conf")
as() { setpriv --reuid="$U" --regid="$(id -g "$U")" --init-groups "$@"; }

raw=$(rand_hex 32)
h=$(add_hex st "$raw" 2>/dev/null)
expect_ok "TLS 1.3 handshake 1" handle "$h" raw "$raw" -tls1_3
expect_ok "TLS 1.3 handshake 2" raw "$raw" handle "$h" -tls1_3
expect_ok "TLS 1.2 handshake" handle "$h" raw "$raw" -tls1_2 -cipher PSK-AES128-GCM-SHA256
sleep 0.2 # each request is logged as it is answered
log_count() { grep -c "op=$1 .*result=ok" "$T/p11pskd.log" || true; }
early=$(log_count tls13-expand)
prf=$(log_count tls12-prf)

# --- the readable report
if "${P[@]}" status >"$T/status.txt" 2>"$T/err"; then pass "status"; else fail "status: $(cat "$T/err")"; fi
grep -q "^token        'p11psk-test' (SoftHSM v2), module $SOFTHSM_MODULE" "$T/status.txt" &&
    pass "status names the token and module" || fail "status: $(cat "$T/status.txt")"
grep -q '^             available: yes, logged in: yes' "$T/status.txt" &&
    pass "status: token available and logged in" || fail "status: $(cat "$T/status.txt")"
grep -q -E "^p11pskd [0-9.]+ at $T/p11psk.sock, up " "$T/status.txt" && pass "status: version and uptime" ||
    fail "status header: $(head -n 1 "$T/status.txt")"
n=$(awk '$1 == "tls13-expand" && $2 == "ok" {print $3} $2 == "tls13-expand" && $3 == "ok" {print $4}' "$T/status.txt")
[ -n "$n" ] && [ "$n" -gt 0 ] && [ "$n" = "$early" ] &&
    pass "status: tls13-expand ok = $n, as in the audit log" ||
    fail "status: tls13-expand ok '$n', log $early: $(cat "$T/status.txt")"
grep -q -E '^cache +on: [0-9]+ entries of [0-9]+, ttl [0-9]+ s, [0-9]+ hits, [0-9]+ misses' "$T/status.txt" &&
    pass "status: cache line" || fail "status cache: $(cat "$T/status.txt")"

# --- JSON
"${P[@]}" status --json >"$T/status.json" 2>"$T/err" || fail "status --json: $(cat "$T/err")"
if perl -MJSON::PP -e '
    local $/; my $j = decode_json(<STDIN>);
    my ($early, $prf) = @ARGV; my %c;
    $c{"$_->{op}/$_->{result}"} = $_->{count} for @{$j->{requests}};
    die "token_label $j->{token_label}\n" unless $j->{token_label} eq "p11psk-test";
    die "token_available\n" unless $j->{token_available} && JSON::PP::is_bool($j->{token_available});
    die "uptime\n" unless $j->{uptime_seconds} =~ /^\d+$/;
    die "early $c{q(tls13-expand/ok)} != $early\n" unless $c{"tls13-expand/ok"} == $early;
    die "prf $c{q(tls12-prf/ok)} != $prf\n" unless $c{"tls12-prf/ok"} == $prf;
    my $sum = 0; $sum += $_ for values %c;
    die "requests_total $j->{requests_total} != $sum\n" unless $j->{requests_total} == $sum;
    die "no cache_hits\n" unless exists $j->{cache_hits};
    print "ok\n"' "$early" "$prf" <"$T/status.json" >"$T/json.out" 2>&1; then
    pass "status --json parses; counts match the log (early $early, prf $prf)"
else
    fail "status --json: $(cat "$T/json.out" "$T/status.json")"
fi

# --- Prometheus text format
"${P[@]}" metrics >"$T/metrics.prom" 2>"$T/err" || fail "metrics: $(cat "$T/err")"
if perl -e '
    my (%type, %help, $bad);
    while (<STDIN>) {
        chomp;
        if (my ($kw, $name, $rest) = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$/) {
            if ($kw eq "TYPE") {
                $rest =~ /^(counter|gauge|untyped|histogram|summary)$/ or die "bad TYPE: $_\n";
                $type{$name} = $rest;
            } else { $help{$name} = 1 }
            next;
        }
        /^#/ and die "bad comment: $_\n";
        my ($m) = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*\})? (-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|NaN|[+-]Inf)$/
            or die "bad sample: $_\n";
        # histogram samples: NAME_bucket, NAME_sum and NAME_count
        $m = $1 if !$type{$m} && $m =~ /^(.*)_(?:bucket|sum|count)$/ &&
            ($type{$1} // "") eq "histogram";
        $type{$m} or die "no TYPE before $m\n";
        $help{$m} or die "no HELP for $m\n";
        $m =~ /^p11psk_/ or die "not prefixed p11psk_: $m\n";
        $type{$m} ne "counter" or $m =~ /_total$/ or die "counter $m lacks _total\n";
    }
    print "ok\n"' <"$T/metrics.prom" >"$T/prom.out" 2>&1; then
    pass "metrics: every line is valid Prometheus text (HELP and TYPE for each metric)"
else
    fail "metrics format: $(cat "$T/prom.out")"
fi
for want in '^p11psk_up 1$' '^p11psk_token_available 1$' '^p11psk_cache_hits_total [0-9]+$' \
    "^p11psk_requests_total\\{op=\"tls13-expand\",result=\"ok\"\\} $early\$" \
    '^p11psk_info\{version="[0-9.]+",token="p11psk-test",'; do
    grep -q -E "$want" "$T/metrics.prom" && pass "metrics has $want" || fail "metrics lacks $want"
done
# node_exporter's textfile collector: write, then rename.
mkdir -p "$T/textfile"
"${P[@]}" metrics >"$T/textfile/p11psk.prom.$$" && mv "$T/textfile/p11psk.prom.$$" "$T/textfile/p11psk.prom" &&
    [ -s "$T/textfile/p11psk.prom" ] && pass "textfile collector recipe" || fail "textfile recipe"

# --- p11pskd not reachable: status fails naming the socket; metrics says p11psk_up 0.
rc=0
"${P[@]}" status --socket "$T/none.sock" >/dev/null 2>"$T/err" || rc=$?
[ "$rc" = 1 ] && grep -q "unreachable at $T/none.sock" "$T/err" &&
    pass "status, daemon unreachable: $(cut -c 1-70 "$T/err")..." || fail "status unreachable: rc $rc $(cat "$T/err")"
rc=0
"${P[@]}" metrics --socket "$T/none.sock" >"$T/out" 2>/dev/null || rc=$?
[ "$rc" = 1 ] && grep -q '^p11psk_up 0$' "$T/out" &&
    pass "metrics, daemon unreachable: p11psk_up 0, exit 1" || fail "metrics unreachable: rc $rc $(cat "$T/out")"
# --socket needs no readable configuration file.
"$BIN/p11psk" --config /nonexistent/p11pskd.conf status --socket "$T/p11psk.sock" >/dev/null 2>"$T/err" &&
    pass "status --socket without a config file" || fail "status --socket: $(cat "$T/err")"

# --- permission: a user without allow-status is refused, naming the fix.
rc=0
as "${P[@]}" status >"$T/out" 2>"$T/err" || rc=$?
[ "$rc" = 1 ] && grep -q 'access denied.*allow-status' "$T/err" &&
    pass "non-root user refused: $(cut -c 1-90 "$T/err")..." || fail "non-root status: rc $rc $(cat "$T/out" "$T/err")"
rc=0
as "${P[@]}" metrics >"$T/out" 2>"$T/err" || rc=$?
[ "$rc" = 1 ] && grep -q 'allow-status' "$T/err" && pass "non-root metrics refused (exit 1)" ||
    fail "non-root metrics: rc $rc $(cat "$T/out" "$T/err")"
printf 'allow-status uid=%s\n' "$U" >>"$T/p11pskd.conf"
reloads=$(grep -c 'reloaded' "$T/p11pskd.log" || true)
kill -HUP "$DAEMON_PID"
for _ in $(seq 50); do [ "$(grep -c 'reloaded' "$T/p11pskd.log")" -gt "$reloads" ] && break; sleep 0.1; done
as "${P[@]}" status --json >"$T/out" 2>"$T/err" &&
    perl -MJSON::PP -e 'local $/; exit(decode_json(<STDIN>)->{token_label} eq "p11psk-test" ? 0 : 1)' <"$T/out" &&
    pass "after allow-status uid=$U and SIGHUP: allowed" || fail "after allow-status: $(cat "$T/out" "$T/err")"
grep -q "uid $(id -u "$U") may not read the status" "$T/p11pskd.log" && pass "the refusal is in the audit log" ||
    fail "no refusal line in the log"
for c in status metrics; do
    "${P[@]}" "$c" --help >"$T/out" && grep -q "^Usage: p11psk $c" "$T/out" && pass "$c --help" ||
        fail "$c --help"
done
finish
