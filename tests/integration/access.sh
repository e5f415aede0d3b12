#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Per-key access control by peer credentials, and the audit line each request leaves.
# Two throwaway users: A may use alpha (uid rule); B may use gamma through a supplementary
# group (gid rule); everything else is denied by default. The socket is 0660 with a group
# both users are in, so the ACL, not the file mode, is what refuses them.
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || skip "needs root to create throwaway users"
UA=p11psk-t$$-a
UB=p11psk-t$$-b
GS=p11psk-t$$-sock
GB=p11psk-t$$-grpb
cleanup_users() {
    userdel "$UA" 2>/dev/null || true
    userdel "$UB" 2>/dev/null || true
    groupdel "$GS" 2>/dev/null || true
    groupdel "$GB" 2>/dev/null || true
}
cleanup_users # leftovers of an interrupted run
ON_EXIT+=(cleanup_users)
groupadd "$GS"
groupadd "$GB"
useradd -M -N -g "$GS" -s /usr/sbin/nologin "$UA"
useradd -M -N -g "$GS" -G "$GB" -s /usr/sbin/nologin "$UB"

setup_token
sed -i '/^allow /d' "$T/p11pskd.conf"
cat >>"$T/p11pskd.conf" <<EOC
socket-group = $GS
allow alpha uid=$UA
allow gam* gid=$GB
EOC

# Unknown users and groups are startup errors that name the line.
for bad in "allow x uid=no-such-user-p11psk" "allow x gid=no-such-group-p11psk"; do
    cp "$T/p11pskd.conf" "$T/bad.conf"
    printf '%s\n' "$bad" >>"$T/bad.conf"
    line=$(wc -l <"$T/bad.conf")
    if "$BIN/p11pskd" --config "$T/bad.conf" --foreground >"$T/bad.out" 2>&1; then
        fail "'$bad' accepted"
    elif grep -q "bad.conf:$line: unknown" "$T/bad.out"; then
        pass "startup refused: $(head -n 1 "$T/bad.out")"
    else
        fail "'$bad': $(cat "$T/bad.out")"
    fi
done

start_daemon
[ "$(stat -c '%a %G' "$T/p11psk.sock")" = "660 $GS" ] && pass "socket is 0660 group $GS" ||
    fail "socket is $(stat -c '%a %G' "$T/p11psk.sock")"

declare -A raw h
for k in alpha beta gamma; do
    raw[$k]=$(rand_hex_importable 32)
    import_aes "$k" "${raw[$k]}"
    h[$k]=$(handle_of "$k")
done

# case USER KEY ok|denied
acl_case() {
    local user=$1 key=$2 want=$3 name="$1 with $2"
    for v in -tls1_3 -tls1_2; do
        if [ "$want" = ok ]; then
            RUN_AS=$user expect_ok "$name $v" raw "${raw[$key]}" handle "${h[$key]}" "$v" \
                -cipher PSK-AES128-GCM-SHA256
        else
            RUN_AS=$user expect_fail "$name $v denied" "access denied" raw "${raw[$key]}" \
                handle "${h[$key]}" "$v" -cipher PSK-AES128-GCM-SHA256
        fi
    done
}
acl_case "$UA" alpha ok
acl_case "$UA" beta denied
acl_case "$UB" alpha denied
acl_case "$UB" gamma ok
acl_case "$UA" gamma denied
# root has no rule at all now: denied by default.
expect_fail "root (no rule) denied by default" "access denied" raw "${raw[alpha]}" handle \
    "${h[alpha]}" -tls1_3
grep -q "access-denied reason=\"uid $(id -u "$UA") .*may not use 'beta'" "$T/p11pskd.log" &&
    pass "denial logged with uid and key" || fail "no denial line for $UA/beta"

# The audit line: time, peer pid/uid/gid/exe, operation, identity, result, latency.
ua=$(id -u "$UA")
gs=$(getent group "$GS" | cut -d: -f3)
ts='^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z p11pskd\[[0-9]+\]: (info|warn): '
ok_re="${ts}pid=[0-9]+ uid=$ua gid=$gs exe=$(readlink -f "$(command -v openssl)") op=tls13-expand key=alpha result=ok step=(token|cache) latency=[0-9]+us\$"
deny_re="${ts}pid=[0-9]+ uid=$ua gid=$gs exe=\\S+ op=tls12-prf key=beta result=access-denied reason=\"[^\"]*\" latency=[0-9]+us\$"
grep -q -E "$ok_re" "$T/p11pskd.log" && pass "audit line for a granted request has every field" ||
    fail "no audit line like: $ok_re"
grep -q -E "$deny_re" "$T/p11pskd.log" && pass "audit line for a denied request" ||
    fail "no audit line like: $deny_re"
n=$(grep -c -E 'op=tls1(3-early|3-expand|3-extract|2-prf) ' "$T/p11pskd.log")
[ "$n" -ge 11 ] && pass "one line per request ($n lines)" || fail "only $n request lines"
leak=0
for k in alpha beta gamma; do grep -q -i "${raw[$k]}" "$T/p11pskd.log" && leak=1; done
[ "$leak" = 0 ] && pass "no key bytes in the log" || fail "a raw key is in the log"
finish
