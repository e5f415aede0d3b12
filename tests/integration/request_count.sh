#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Round trips to p11pskd per handshake: N in-process handshakes (p11psk-hsloop, one thread,
# data both ways in each) with a handle on one side and a raw key on the other, counted by
# p11pskd's own request counters (`p11psk status --json`). Fewer round trips is the point of
# later changes; this keeps them from creeping back up. Lower the expectations with
# P11PSK_EXPECT_RT_TLS13 / P11PSK_EXPECT_RT_TLS12 once the provider needs fewer.
. "$(dirname "$0")/lib.sh"
setup_token
start_daemon

N=20
EXPECT_RT_TLS13=${P11PSK_EXPECT_RT_TLS13:-1} # binder keys cached by the provider
EXPECT_RT_TLS12=${P11PSK_EXPECT_RT_TLS12:-1}
SLACK=3 # connection set-up and a retried call may add a request or two

raw=$(rand_hex_importable 32)
import_aes rckey "$raw"
h=$(handle_of rckey)

# derivations: requests p11pskd answered for derivation ops (any result), from STATUS.
# Prints nothing when status cannot be read, so a broken read never looks like "0 requests".
derivations() {
    "$BIN/p11psk" status --json --socket "$T/p11psk.sock" 2>"$T/status.err" |
        perl -MJSON::PP -e 'my $j = eval { decode_json(join "", <STDIN>) } or exit 1;
            my $n = 0;
            $n += $_->{count} for grep { $_->{op} =~ /^tls1(3-early|3-expand|3-extract|2-prf)$/ }
                @{$j->{requests}};
            print "$n\n"'
}

# rt_case NAME PER_HANDSHAKE hsloop-args...: N handshakes must all succeed, and p11pskd must
# have answered at least N (the handle really went through it) and at most
# N x PER_HANDSHAKE + SLACK derivation requests.
rt_case() {
    local name=$1 per=$2 before after n max
    shift 2
    before=$(derivations) || true
    hsloop "$T/openssl.cnf" "$T/hs.out" --threads 1 --count "$N" "$@"
    after=$(derivations) || true
    if [ -z "$before" ] || [ -z "$after" ]; then
        fail "$name: cannot read p11pskd's counters: $(cat "$T/status.err")"
        return
    fi
    n=$((after - before))
    max=$((N * per + SLACK))
    if [ "$HS_RC" -ne 0 ] || [ "$HS_OK" != "$N" ]; then
        fail "$name: $HS_OK of $N handshakes ok (exit $HS_RC): $(grep -m1 'fail:' "$T/hs.out"; tail -n 2 "$T/hs.out.err")"
    elif [ "$n" -lt "$N" ]; then
        fail "$name: p11pskd counted only $n requests for $N handshakes on a handle"
    elif [ "$n" -gt "$max" ]; then
        fail "$name: $n requests for $N handshakes, more than $N x $per + $SLACK = $max"
    else
        pass "$name: $n requests for $N handshakes (at most $max)"
    fi
    log "  $name: $(awk -v n="$n" -v h="$N" 'BEGIN { printf "%.2f", n / h }') round trips per handshake"
}

rt_case "tls13 psk_dhe_ke, client handle" "$EXPECT_RT_TLS13" --tls13 \
    --client-psk "$h" --server-psk "$raw"
rt_case "tls13 psk_dhe_ke, server handle" "$EXPECT_RT_TLS13" --tls13 \
    --client-psk "$raw" --server-psk "$h"
rt_case "tls12 PSK, client handle" "$EXPECT_RT_TLS12" --tls12 --cipher PSK-AES128-GCM-SHA256 \
    --client-psk "$h" --server-psk "$raw"
rt_case "tls12 ECDHE-PSK, server handle" "$EXPECT_RT_TLS12" --tls12 \
    --cipher ECDHE-PSK-AES128-CBC-SHA256 --client-psk "$raw" --server-psk "$h"

# Controls: raw keys on both sides cost p11pskd nothing, and a counter read that fails says
# why instead of passing as zero.
before=$(derivations)
hsloop "$T/openssl.cnf" "$T/hs.out" --tls13 --count "$N" --client-psk "$raw" --server-psk "$raw"
after=$(derivations)
if [ "$HS_OK" = "$N" ] && [ "$after" = "$before" ]; then
    pass "control: raw keys on both sides, $N handshakes, no requests"
else
    fail "control: raw/raw gave $HS_OK ok and $((after - before)) requests"
fi
if "$BIN/p11psk" status --json --socket "$T/missing.sock" >"$T/out" 2>"$T/err"; then
    fail "control: status on a missing socket succeeded: $(cat "$T/out")"
elif grep -q 'is p11pskd running' "$T/err"; then
    pass "control: status on a missing socket fails with 'is p11pskd running'"
else
    fail "control: status on a missing socket: $(cat "$T/err")"
fi
finish
