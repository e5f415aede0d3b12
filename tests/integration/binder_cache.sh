#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
# The provider's binder-key cache: after the first handshake a TLS 1.3 side on a handle
# costs one request to p11pskd (the handshake secret); `p11psk rotate` reaches a process
# that stayed up before its very next handshake (generation page); a process without the
# page asks every time; and the cached binder key is not in the process's core dump.
# Requests are counted by p11pskd itself (`p11psk status --json`).
. "$(dirname "$0")/lib.sh"
setup_token
start_daemon
P=("$BIN/p11psk" --config "$T/p11pskd.conf")
N=20
SLACK=3 # the first two handshakes' expands (the page comes after the first), a reconnect

# reqs OP-REGEX: requests p11pskd counted for the matching operations (any result). Prints
# nothing when status cannot be read, so a broken read never looks like "0 requests".
reqs() {
    "$BIN/p11psk" status --json --socket "$T/p11psk.sock" 2>"$T/status.err" |
        perl -MJSON::PP -e 'my $j = eval { decode_json(join "", <STDIN>) } or exit 1;
            my $n = 0; $n += $_->{count} for grep { $_->{op} =~ /^(?:$ARGV[0])$/ } @{$j->{requests}};
            print "$n\n"' "$1"
}
DERIV='tls13-early|tls13-expand|tls13-extract|tls12-prf'

old=$(rand_hex 32)
new=$(rand_hex 32)
h=$(add_hex bc "$old" 2>"$T/add.err") || die "add: $(cat "$T/add.err")"

# --- N handshakes in one process: N + a constant requests per side on a handle.
# count_case NAME PER_HS ENV... -- hsloop-args: checks N*PER_HS <= requests <= N*PER_HS + SLACK.
count_case() {
    local name=$1 per=$2 env=() b a n
    shift 2
    while [ "$1" != -- ]; do env+=("$1"); shift; done
    shift
    b=$(reqs "$DERIV") || true
    HS_RC=0
    env "${env[@]}" OPENSSL_CONF="$T/openssl.cnf" timeout 120 "$BIN/p11psk-hsloop" --tls13 \
        --count "$N" "$@" >"$T/hs.out" 2>"$T/hs.err" || HS_RC=$?
    a=$(reqs "$DERIV") || true
    [ -n "$b" ] && [ -n "$a" ] || { fail "$name: cannot read p11pskd's counters: $(cat "$T/status.err")"; return; }
    n=$((a - b))
    if [ "$HS_RC" -ne 0 ] || ! grep -q "^handshakes=$N ok=$N failed=0" "$T/hs.out"; then
        fail "$name: handshakes failed (exit $HS_RC): $(tail -n 2 "$T/hs.out" "$T/hs.err")"
    elif [ "$n" -lt $((N * per)) ] || [ "$n" -gt $((N * per + SLACK)) ]; then
        fail "$name: $n requests for $N handshakes, expected $((N * per))..$((N * per + SLACK))"
    else
        pass "$name: $n requests for $N handshakes"
    fi
}
raw=$(rand_hex_importable 32)
"${P[@]}" rotate bc --hex-file <(printf '%s\n' "$raw") >/dev/null 2>"$T/rot.err" ||
    die "rotate: $(cat "$T/rot.err")"
gp0=$(reqs gen-page)
count_case "client handle" 1 -- --client-psk "$h" --server-psk "$raw"
count_case "server handle" 1 -- --client-psk "$raw" --server-psk "$h"
count_case "handle on both sides (one cache per process)" 2 -- --client-psk "$h" --server-psk "$h"
gp1=$(reqs gen-page)
[ "$((gp1 - gp0))" -ge 1 ] && [ "$((gp1 - gp0))" -le 3 ] &&
    pass "one GEN_PAGE request per process ($((gp1 - gp0)) for 3 processes)" ||
    fail "GEN_PAGE requests: $((gp1 - gp0)) for 3 processes"

# fork: the child keeps the page but starts with an empty cache (MADV_WIPEONFORK). The
# parent asks for the binder key twice (its first round trip only fetches the page after
# it; the second fills the cache), the child once: exactly 3.
b=$(reqs tls13-expand)
OPENSSL_CONF=$T/openssl.cnf timeout 120 "$BIN/p11psk-hsloop" --tls13 --count 5 --fork \
    --client-psk "$h" --server-psk "$raw" >"$T/hs.out" 2>&1 || true
a=$(reqs tls13-expand)
if ! grep -q '^handshakes=15 ok=15 failed=0' "$T/hs.out"; then
    fail "fork: handshakes failed: $(tail -n 3 "$T/hs.out")"
elif [ "$((a - b))" = 3 ]; then
    pass "fork: 2 binder-key requests in the parent, 1 in the child (its cache starts empty)"
else
    fail "fork: $((a - b)) binder-key requests for parent + child, expected 3"
fi

# The provider maps the page only after checking that it cannot map it for writing (a
# client that could write the counter could keep stale binder keys alive elsewhere).
P11PSK_DEBUG=1 OPENSSL_CONF=$T/openssl.cnf timeout 60 "$BIN/p11psk-hsloop" --tls13 --count 3 \
    --client-psk "$h" --server-psk "$raw" >"$T/hs.out" 2>"$T/hs.err" || true
grep -q 'gen-page: generation page mapped' "$T/hs.err" && grep -q 'binder key from the provider cache' "$T/hs.err" &&
    pass "debug log: page mapped read-only (write mapping refused), binder key served from the cache" ||
    fail "debug log lacks the page mapping or a cache hit: $(grep -m3 -i 'gen-page\|binder' "$T/hs.err")"

# --- A process that cannot map the page does not cache: 2 requests per handshake side.
gp2=$(reqs gen-page)
count_case "no generation page: client handle" 2 P11PSK_NO_GEN_PAGE=1 -- \
    --client-psk "$h" --server-psk "$raw"
[ "$(reqs gen-page)" = "$gp2" ] && pass "no generation page: no GEN_PAGE request either" ||
    fail "P11PSK_NO_GEN_PAGE=1 still asked for the page"
# p11psk-binder-cache-ttl = 0 turns the cache off in the same way.
cp "$T/openssl.cnf" "$T/openssl.cnf.keep"
set_provider_param p11psk-binder-cache-ttl 0
count_case "p11psk-binder-cache-ttl = 0: server handle" 2 -- --client-psk "$raw" --server-psk "$h"
cp "$T/openssl.cnf.keep" "$T/openssl.cnf"
set_provider_param p11psk-binder-cache-ttl soon
OPENSSL_CONF=$T/openssl.cnf timeout 60 "$BIN/p11psk-hsloop" --tls13 --count 1 --client-psk "$h" \
    --server-psk "$raw" -v >"$T/hs.out" 2>&1 || true
grep -q 'p11psk-binder-cache-ttl "soon": expected seconds in 0..86400' "$T/hs.out" &&
    pass "an invalid p11psk-binder-cache-ttl fails handle operations, naming the setting" ||
    fail "invalid p11psk-binder-cache-ttl: $(grep -m1 fail "$T/hs.out")"
cp "$T/openssl.cnf.keep" "$T/openssl.cnf"

# --- rotate reaches a process that stayed up, before its very next handshake.
coproc HSL { OPENSSL_CONF=$T/openssl.cnf exec timeout 300 "$BIN/p11psk-hsline" 2>"$T/hsl.err"; }
PIDS+=("$HSL_PID")
# hs CLIENT SERVER: one handshake in the long-lived process; prints ok / fail: ...
hs() {
    local r=""
    printf '%s %s\n' "$1" "$2" >&"${HSL[1]}"
    read -r -t 30 r <&"${HSL[0]}" || r="fail: no answer within 30 s"
    printf '%s\n' "$r"
}
# expect NAME ok|fail CLIENT SERVER
expect() {
    local r
    r=$(hs "$3" "$4")
    case $2:$r in
    ok:ok | fail:fail*) pass "$1: $r" ;;
    *) fail "$1: expected $2, got $r" ;;
    esac
}
for i in 1 2; do
    expect "before rotate #$i: client handle" ok "$h" "$raw"
    expect "before rotate #$i: server handle" ok "$raw" "$h"
    expect "before rotate #$i: both" ok "$h" "$h"
done
b=$(reqs "$DERIV")
expect "warm cache: both" ok "$h" "$h"
a=$(reqs "$DERIV")
[ "$((a - b))" = 2 ] && pass "warm cache: a handshake with the handle on both sides made 2 requests" ||
    fail "warm cache: $((a - b)) requests for one handshake with the handle on both sides"

"${P[@]}" rotate bc --hex-file <(printf '%s\n' "$new") >"$T/rot.out" 2>&1 ||
    fail "rotate: $(cat "$T/rot.out")"
b=$(reqs "$DERIV")
expect "right after rotate: both (binder key fetched again)" ok "$h" "$h"
a=$(reqs "$DERIV")
[ "$((a - b))" = 3 ] && pass "right after rotate: the cache was dropped (3 requests, 1 expand)" ||
    fail "right after rotate: $((a - b)) requests for a handshake on both sides, expected 3"
# A raw peer with the new key: only a binder from the new key is accepted.
expect "after rotate: client handle, raw server with the new key" ok "$h" "$new"
expect "after rotate: server handle, raw client with the new key" ok "$new" "$h"
expect "after rotate: client handle, raw server with the old key" fail "$h" "$old"
expect "after rotate: server handle, raw client with the old key" fail "$old" "$h"
# And once more without the intervening warm-up, the other side first.
"${P[@]}" rotate bc --hex-file <(printf '%s\n' "$old") >"$T/rot.out" 2>&1 ||
    fail "rotate back: $(cat "$T/rot.out")"
expect "rotate back: server handle first, raw client with that key" ok "$old" "$h"
expect "rotate back: client handle, raw server with that key" ok "$h" "$old"
expect "rotate back: client handle, raw server with the previous key" fail "$h" "$new"

# --- A clean stop of p11pskd marks its page dead: a key changed while it was down (the
# FLUSH of rotate cannot reach it) is still seen by the next handshake after the restart.
[ "$(hs "$h" "$old")" = ok ] && [ "$(hs "$h" "$old")" = ok ] || fail "restart: warm-up handshakes failed"
stop_daemon
# The token changes; p11pskd cannot be told, which rotate reports with exit status 3.
rc=0
"${P[@]}" rotate bc --hex-file <(printf '%s\n' "$new") >"$T/rot.out" 2>&1 || rc=$?
if [ "$rc" = 3 ] && grep -q "could not be told" "$T/rot.out"; then
    pass "rotate with p11pskd stopped: token changed, exit 3, says p11pskd was not told"
else
    fail "rotate with p11pskd stopped: exit $rc: $(cat "$T/rot.out")"
fi
start_daemon
expect "after a restart: client handle, raw server with the key rotated meanwhile" ok "$h" "$new"
expect "after a restart: client handle, raw server with the old key" fail "$h" "$old"
gp3=$(reqs gen-page)
expect "after a restart: handle on both sides" ok "$h" "$h"
[ "$gp3" -ge 1 ] && pass "after a restart: the provider fetched the new p11pskd's page ($gp3 gen-page)" ||
    fail "after a restart: no gen-page request to the new p11pskd"
"${P[@]}" rotate bc --hex-file <(printf '%s\n' "$old") >"$T/rot.out" 2>&1 ||
    fail "rotate back after the restart: $(cat "$T/rot.out")"

# --- Core dump: the binder keys the process cached are not in it.
command -v gcore >/dev/null || die "gcore (package gdb) is missing"
case ${LD_PRELOAD:-} in
*asan*)
    # shellcheck disable=SC1083,SC2093 # bash's exec {fd}>&- closes the coprocess's input
    exec {HSL[1]}>&-
    skip "ASan shadow memory makes core dumps impractical"
    ;;
esac
# binder KEYHEX LABEL: Derive-Secret(HKDF-Extract(0, KEY), LABEL, "") with SHA-256, in hex,
# computed here from the raw key with openssl kdf.
zeros=$(printf '0%.0s' $(seq 64))
binder() {
    local es info lab="tls13 $2"
    es=$(openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt mode:EXTRACT_ONLY \
        -kdfopt hexkey:"$1" -kdfopt hexsalt:"$zeros" HKDF | tr -d ':\n' | tr 'A-F' 'a-f')
    info=0020$(printf '%02x' ${#lab})$(printf '%s' "$lab" | od -An -tx1 | tr -d ' \n')20$(printf '' | sha256sum | cut -d' ' -f1)
    openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt mode:EXPAND_ONLY -kdfopt hexkey:"$es" \
        -kdfopt hexinfo:"$info" HKDF | tr -d ':\n' | tr 'A-F' 'a-f'
}
search() {
    perl -e 'local $/; open(my $f, "<:raw", shift) or die; my $d = <$f>;
             print join(" ", map { index($d, pack("H*", $_)) >= 0 ? "found" : "absent" } @ARGV), "\n"' "$@"
}
bk=$(binder "$old" "ext binder")
rk=$(binder "$old" "res binder")
[ ${#bk} = 64 ] && [ ${#rk} = 64 ] || die "could not compute the binder keys"
printf 'pid\n' >&"${HSL[1]}"
read -r -t 10 hpid <&"${HSL[0]}" || die "hsline did not tell its pid"
# dump PID NAME: a core of PID in $T/core.NAME.
dump() {
    rm -f "$T/core.$2"
    timeout 60 gcore -o "$T/core.x" "$1" >/dev/null 2>&1 && mv "$T/core.x.$1" "$T/core.$2"
    [ -s "$T/core.$2" ]
}
# The cache holds the current key's binder key: refill it, then dump mid-life.
[ "$(hs "$h" "$h")" = ok ] && [ "$(hs "$h" "$old")" = ok ] || fail "core: handshakes before the dump failed"
if dump "$hpid" handle; then
    r=$(search "$T/core.handle" "$bk" "$rk" "$old")
    [ "$r" = "absent absent absent" ] &&
        pass "core of a process with a filled binder cache: binder keys and PSK absent ($(($(stat -c %s "$T/core.handle") / 1024)) KiB)" ||
        fail "core of the handle process: ext binder key / res binder key / PSK: $r"
else
    fail "gcore of the handle process failed"
fi
# Control: the same process dumped with the excluded mappings included (gdb's
# dump-excluded-mappings ignores MADV_DONTDUMP) holds the binder key: the cache really has
# it, and the search finds it where it is. (libssl itself cleanses the binder key it gets,
# so a raw-key process is no control: its core holds no binder key either.)
rm -f "$T/core.all"
if timeout 60 gdb -batch -nx -p "$hpid" -ex 'set dump-excluded-mappings on' \
    -ex "gcore $T/core.all" >"$T/gdb.out" 2>&1 && [ -s "$T/core.all" ]; then
    r=$(search "$T/core.all" "$bk")
    [ "$r" = found ] &&
        pass "control: with excluded mappings dumped too, the same process's core holds the binder key" ||
        fail "control: binder key $r even with the excluded mappings dumped"
else
    fail "control: gdb could not dump with excluded mappings: $(tail -n 2 "$T/gdb.out")"
fi
# shellcheck disable=SC1083,SC2093 # bash's exec {fd}>&- closes the coprocess's input
exec {HSL[1]}>&-
finish
