#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The admin CLI against a real token: add, handle, list, rm, --help, and clear errors.
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
. "$(dirname "$0")/lib.sh"
setup_token
P=("$BIN/p11psk" --config "$T/p11pskd.conf")

check() { # check NAME COMMAND...: the command must succeed
    local name=$1
    shift
    if "$@" >"$T/out" 2>"$T/err"; then pass "$name"; else fail "$name: $(cat "$T/err")"; fi
}
check_fails() { # check_fails NAME PATTERN COMMAND...: must fail and say PATTERN
    local name=$1 pattern=$2
    shift 2
    if "$@" >"$T/out" 2>"$T/err"; then
        fail "$name: succeeded but should have failed"
    elif grep -q -i -- "$pattern" "$T/err"; then
        pass "$name"
    else
        fail "$name: stderr lacks '$pattern': $(cat "$T/err")"
    fi
}

check "--help" "${P[@]}" --help
grep -q add "$T/out" && grep -q list "$T/out" && grep -q handle "$T/out" && grep -q rm "$T/out" &&
    pass "--help lists the commands" || fail "--help lacks commands: $(cat "$T/out")"
for c in add handle list rm; do
    check "$c --help" "${P[@]}" "$c" --help
    grep -q -i usage "$T/out" && pass "$c --help shows usage" || fail "$c --help: $(cat "$T/out")"
done

check "add --generate (default 32)" "${P[@]}" add gen
h=$(cat "$T/out")
[[ $h =~ ^[0-9a-f]{96}$ ]] && pass "add prints a 48-byte hex handle" || fail "add printed '$h'"
check "handle gen" "${P[@]}" handle gen
[ "$(cat "$T/out")" = "$h" ] && pass "handle matches add's output" || fail "handle differs"

check "add --generate 48 --readable" "${P[@]}" add rd --generate 48 --readable
raw=$(rand_hex_importable 32)
import_aes imp "$raw"
check "handle of a softhsm2-util key" "${P[@]}" handle imp
[[ $(cat "$T/out") =~ ^[0-9a-f]{96}$ ]] && pass "imported key has a handle" || fail "no handle"

check "list" "${P[@]}" list
grep -E '^gen[[:space:]].*generic.*[[:space:]]32[[:space:]].*no' "$T/out" >/dev/null &&
    pass "list: gen is generic, 32 bytes, not readable" || fail "list: $(cat "$T/out")"
grep -E '^rd[[:space:]].*48[[:space:]].*yes' "$T/out" >/dev/null &&
    pass "list: rd is 48 bytes, readable" || fail "list: $(cat "$T/out")"
grep -E '^imp[[:space:]].*aes.*[[:space:]]32[[:space:]]' "$T/out" >/dev/null &&
    pass "list: imp is aes, 32 bytes" || fail "list: $(cat "$T/out")"
if grep -q -i "$raw" "$T/out"; then fail "list printed key bytes"; else pass "list shows no key bytes"; fi

check_fails "add of an existing identity" "exists" "${P[@]}" add gen
printf 'zz\n' >"$T/bad.hex"
check_fails "add --hex-file with bad hex" "hex" "${P[@]}" add badhex --hex-file "$T/bad.hex"
printf '00112233\n' >"$T/short.hex"
check_fails "add --hex-file with a 4-byte key" "16" "${P[@]}" add short --hex-file "$T/short.hex"
check_fails "handle of an unknown identity" "not found\|no key" "${P[@]}" handle nosuch
# No p11pskd runs here: rm removes the key, says p11pskd could not be told, and exits 3.
rc=0
"${P[@]}" rm gen --yes >"$T/out" 2>"$T/err" || rc=$?
[ "$rc" = 3 ] && grep -q 'removed from the token .*could not be told' "$T/err" &&
    pass "rm gen --yes without p11pskd: exit 3" || fail "rm gen --yes: rc $rc: $(cat "$T/err")"
check_fails "handle after rm" "not found\|no key" "${P[@]}" handle gen
rc=0
"${P[@]}" frobnicate >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] && pass "unknown command exits 2" || fail "unknown command exit status"
check_fails "missing config names the file" "/nonexistent/p11pskd.conf" \
    "$BIN/p11psk" --config /nonexistent/p11pskd.conf list
finish
