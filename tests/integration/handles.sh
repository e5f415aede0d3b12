#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
# Handles are capabilities (issue 12): a handle carries a tag made with the token's handle
# key, so knowing a CKA_ID is not enough to build one. Checked here with real tokens and a
# real p11pskd whose module is OpenSC's pkcs11-spy (to count token searches):
#  - two tokens holding the same key (same label, same CKA_ID) issue different handles, and
#    one token's handle is "bad handle" on the other's daemon;
#  - a forged handle (right CKA_ID, wrong tag) gets the same words, and no token search;
#  - a uid no allow rule names gets byte-identical "access denied" for an existing and a
#    removed key, without the label and without a token search;
#  - version 1 handles and early-secret placeholders from another process are refused by name;
#  - `p11psk handle --reissue-all --yes` makes every old handle "bad handle", new ones work.
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || skip "needs root to create a throwaway user"
SPY=${PKCS11_SPY:-/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so}
[ -f "$SPY" ] || skip "$SPY is missing (package opensc-pkcs11)"
PROBE=$BIN/p11psk-wireprobe
U=p11psk-t$$-x
cleanup_user() { userdel "$U" 2>/dev/null || true; }
ON_EXIT+=(cleanup_user)
useradd -M -N -s /usr/sbin/nologin "$U"

BAD='bad handle: not issued for this token'

# field TAG-HEX VALUE-HEX / frame BODY-HEX: the wire format (include/p11psk/wire.h).
field() { printf '%s%04x%s' "$1" $((${#2} / 2)) "$2"; }
frame() { printf '%08x%s' $((${#1} / 2)) "$1"; }
# extract HANDLE-HEX: a TLS13_EXTRACT (SHA256, "tls13 " "derived", 32-byte non-zero IKM).
extract() {
    local body
    body=0112$(field 01 01)$(field 02 "$1")$(field 03 746c73313320)$(field 04 64657269766564)
    body+=$(field 06 "$(printf '5a%.0s' $(seq 32))")
    frame "$body"
}
# probe SOCKET HANDLE-HEX: the daemon's answer line ("status=... msg=...").
probe() { timeout 20 "$PROBE" "$1" "$(extract "$2")" | head -n 1; }
probe_as() { timeout 20 setpriv --reuid="$U" --regid="$(id -g "$U")" --clear-groups \
    "$PROBE" "$1" "$(extract "$2")" | head -n 1; }
# finds: token searches the daemon has made so far (pkcs11-spy logs every call).
finds() { grep -c 'C_FindObjectsInit' "$T/spy.log" || true; }
# reforge HANDLE-HEX: the same handle with a flipped tag bit and a fresh check value, so it
# passes the typo check and only the tag is wrong.
reforge() {
    local body
    body=${1:0:52}$(printf '%02x' $((0x${1:52:2} ^ 1)))${1:54:30}
    printf '%s%s' "$body" "$(printf '%s' "$body" | xxd -r -p | sha256sum | cut -c1-12)"
}
# import_id TOKEN-CONF LABEL ID HEX: softhsm2-util import with a chosen CKA_ID.
import_id() {
    perl -e 'print pack("H*", $ARGV[0])' "$4" >"$T/key.bin"
    SOFTHSM2_CONF=$1 softhsm2-util --import "$T/key.bin" --aes --label "$2" --id "$3" \
        --token "$TOKEN_LABEL" --pin "$USER_PIN" >/dev/null
    rm -f "$T/key.bin"
}

setup_token
P=("$BIN/p11psk" --config "$T/p11pskd.conf")
# Daemon A: token A through pkcs11-spy; the CLI uses token A directly.
sed -e "s|^module = .*|module = $SPY|" "$T/p11pskd.conf" >"$T/spyd.conf"
echo "socket-mode = 0666" >>"$T/spyd.conf" # the throwaway user may connect; the ACL decides

# Token B: another token directory, the same token label, the same key under the same
# label and CKA_ID (an operator who imported one key file into two tokens).
mkdir -p "$T/tokensB"
sed -e "s|$T/tokens|$T/tokensB|" "$T/softhsm2.conf" >"$T/softhsm2-b.conf"
SOFTHSM2_CONF=$T/softhsm2-b.conf softhsm2-util --init-token --free --label "$TOKEN_LABEL" \
    --so-pin 87654321 --pin "$USER_PIN" >/dev/null
sed -e "s|^socket = .*|socket = $T/b.sock|" "$T/p11pskd.conf" >"$T/b.conf"

raw=$(rand_hex_importable 32)
import_id "$T/softhsm2.conf" twin 01 "$raw"
import_id "$T/softhsm2-b.conf" twin 01 "$raw"
hA=$(handle_of twin)
hB=$(SOFTHSM2_CONF=$T/softhsm2-b.conf "$BIN/p11psk" --config "$T/b.conf" handle twin)
[ ${#hA} = 96 ] && [ ${#hB} = 96 ] || die "handles '$hA' '$hB'"
if [ "$hA" != "$hB" ] && [ "${hA:0:52}" = "${hB:0:52}" ]; then
    pass "same key, label and CKA_ID in two tokens: different handles (same id, other tag)"
else
    fail "handles of twin: A $hA, B $hB"
fi
"${P[@]}" list >"$T/list.out"
grep -q 'p11psk-handle-key' "$T/list.out" && fail "list shows the handle key: $(cat "$T/list.out")" ||
    pass "list does not show the handle key"
if "${P[@]}" handle p11psk-handle-key >"$T/out" 2>&1; then
    fail "handle of the handle key printed: $(cat "$T/out")"
else
    grep -q "no key labelled 'p11psk-handle-key'" "$T/out" && pass "no handle for the handle key" ||
        fail "handle p11psk-handle-key: $(cat "$T/out")"
fi

# Daemon B (token B, plain module) on its own socket.
SOFTHSM2_CONF=$T/softhsm2-b.conf "$BIN/p11pskd" --config "$T/b.conf" --foreground \
    >>"$T/b.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$T/b.sock" ] && break; sleep 0.05; done
[ -S "$T/b.sock" ] || die "p11pskd on token B did not start: $(tail -n 5 "$T/b.log")"
got=$(probe "$T/b.sock" "$hB")
[ "$got" = "status=ok msg=" ] && pass "token B's daemon serves token B's handle" || fail "B/B: $got"
foreign=$(probe "$T/b.sock" "$hA")
case $foreign in
"status=bad handle msg=$BAD"*) pass "token A's handle on token B's daemon: $foreign" ;;
*) fail "A's handle on B: '$foreign'" ;;
esac

# Daemon A through pkcs11-spy, which logs every PKCS#11 call.
: >"$T/spy.log"
PKCS11SPY=$SOFTHSM_MODULE PKCS11SPY_OUTPUT=$T/spy.log "$BIN/p11pskd" --config "$T/spyd.conf" \
    --foreground >>"$T/p11pskd.log" 2>&1 &
DAEMON_PID=$!
PIDS+=("$DAEMON_PID")
for _ in $(seq 100); do [ -S "$T/p11psk.sock" ] && break; sleep 0.05; done
[ -S "$T/p11psk.sock" ] || die "p11pskd on token A did not start: $(tail -n 5 "$T/p11pskd.log")"
SOCK=$T/p11psk.sock
got=$(probe "$SOCK" "$hA")
[ "$got" = "status=ok msg=" ] && pass "token A's daemon serves token A's handle" || fail "A/A: $got"

# A key added after the start is not in the prefetched table: its first use searches.
late=$(add_hex late "$(rand_hex 32)" 2>/dev/null)
f0=$(finds)
got=$(probe "$SOCK" "$late")
f1=$(finds)
[ "$got" = "status=ok msg=" ] && [ "$f1" -gt "$f0" ] &&
    pass "control: a key added later is searched for ($f0 -> $f1 C_FindObjectsInit)" ||
    fail "control: '$got', searches $f0 -> $f1"

forged=$(reforge "$hA")
f0=$(finds)
got=$(probe "$SOCK" "$forged")
other=$(probe "$SOCK" "$hB")
f1=$(finds)
case $got in
"status=bad handle msg=$BAD"*) pass "forged handle (right CKA_ID, wrong tag): $got" ;;
*) fail "forged handle: '$got'" ;;
esac
[ "$got" = "$other" ] && pass "forged and foreign handles get byte-identical errors" ||
    fail "forged '$got' vs foreign '$other'"
[ "$f0" = "$f1" ] && pass "no token search for forged or foreign handles ($f0 C_FindObjectsInit)" ||
    fail "token searched for a bad handle: $f0 -> $f1"
grep -q 'key=(bad-handle) result=bad-handle' "$T/p11pskd.log" && pass "audit line: key=(bad-handle)" ||
    fail "no audit line for the forged handle"

# A uid without any allow rule: the same answer for an existing and a removed key.
alive=$(add_hex alive "$(rand_hex 32)" 2>/dev/null)
gone=$(add_hex gone "$(rand_hex 32)" 2>/dev/null)
"${P[@]}" rm gone --yes >/dev/null
f0=$(finds)
a=$(probe_as "$SOCK" "$alive")
g=$(probe_as "$SOCK" "$gone")
f1=$(finds)
case $a in
"status=access denied msg="*) pass "unauthorised uid, existing key: $a" ;;
*) fail "unauthorised uid, existing key: '$a'" ;;
esac
[ "$a" = "$g" ] && pass "unauthorised uid: byte-identical answers for an existing and a removed key" ||
    fail "existing '$a' vs removed '$g'"
case $a$g in
*alive* | *gone*) fail "a denial names the key: $a / $g" ;;
*) pass "the denials name no key" ;;
esac
[ "$f0" = "$f1" ] && pass "no token search for a uid without rules" ||
    fail "token searched for a uid without rules: $f0 -> $f1"
# Root (allowed everything) still learns that the removed key is gone.
got=$(probe "$SOCK" "$gone")
case $got in
"status=key not found"*) pass "an allowed uid learns 'key not found': $got" ;;
*) fail "removed key for root: '$got'" ;;
esac

# Version 1 handles: refused by name in the provider, before any request.
v1=d1703131706b01010001$(printf '01%.0s' 1)$(printf '00%.0s' $(seq 15))
v1+=$(printf '%s' "$v1" | xxd -r -p | sha256sum | cut -c1-12)
# shellcheck disable=SC2016 # the backquotes are part of the expected message
expect_fail "version 1 handle refused in the application" \
    'handle version 1 is no longer accepted: re-issue it with `p11psk handle ID`' \
    raw "$raw" handle "$v1" -tls1_3
got=$(probe "$SOCK" "$v1")
case $got in
"status=bad handle msg=$BAD"*) pass "version 1 handle on the wire: $got" ;;
*) fail "version 1 handle on the wire: '$got'" ;;
esac

# An early-secret placeholder is only good in the process whose provider made it.
es=$(OPENSSL_CONF=$T/openssl.cnf openssl kdf -keylen 32 -kdfopt digest:SHA256 \
    -kdfopt mode:EXTRACT_ONLY -kdfopt "hexkey:$hA" TLS13-KDF 2>"$T/kdf.err" | tr -d ':\n' |
    tr 'A-F' 'a-f')
[ "${es:0:18}" = d1703131706b020201 ] && pass "early secret of a handle: a v2 placeholder" ||
    fail "EXTRACT_ONLY on a handle printed '$es': $(cat "$T/kdf.err")"
if OPENSSL_CONF=$T/openssl.cnf openssl kdf -keylen 32 -kdfopt digest:SHA256 \
    -kdfopt mode:EXPAND_ONLY -kdfopt "hexkey:$es" -kdfopt "prefix:tls13 " \
    -kdfopt "label:ext binder" -kdfopt hexdata:00 TLS13-KDF >"$T/kdf.out" 2>"$T/kdf.err"; then
    fail "a placeholder from another process was expanded: $(cat "$T/kdf.out")"
else
    grep -q "early-secret handle not made by this process's p11psk provider" "$T/kdf.err" &&
        pass "a placeholder from another process is refused by name" ||
        fail "EXPAND_ONLY on a foreign placeholder: $(cat "$T/kdf.err")"
fi

# Real handshakes on v2 handles: TLS 1.3 with SHA-256 and SHA-384, TLS 1.2.
expect_ok_both "TLS 1.3 SHA-256, handles on both sides" handle "$hA" handle "$hA" -tls1_3 \
    -ciphersuites TLS_AES_128_GCM_SHA256
# SHA-384: `-psk` always makes a SHA-256 session, so session files from p11psk-mksess.
"$BIN/p11psk-mksess" TLS_AES_256_GCM_SHA384 "$raw" "$T/raw.pem"
"$BIN/p11psk-mksess" TLS_AES_256_GCM_SHA384 "$hA" "$T/handle.pem"
expect_ok "TLS 1.3 SHA-384, handle client, raw server" raw "session:$T/raw.pem" \
    handle "session:$T/handle.pem" -tls1_3 -ciphersuites TLS_AES_256_GCM_SHA384
expect_ok "TLS 1.2, handle server, raw client" handle "$hA" raw "$raw" -tls1_2 \
    -cipher PSK-AES128-GCM-SHA256

# Re-issue: refused without --yes; then every old handle is refused and the new ones work.
if "${P[@]}" handle --reissue-all >"$T/out" 2>"$T/err"; then
    fail "--reissue-all without --yes ran"
else
    grep -q 'pass --yes to do it' "$T/err" && pass "--reissue-all without --yes refused: $(cat "$T/err")" ||
        fail "--reissue-all without --yes: $(cat "$T/err")"
fi
[ "$(probe "$SOCK" "$hA")" = "status=ok msg=" ] && pass "the refused re-issue changed nothing" ||
    fail "old handle stopped working without --yes"
"${P[@]}" handle --reissue-all --yes >"$T/reissue.out" 2>"$T/reissue.err" ||
    fail "--reissue-all --yes: $(cat "$T/reissue.err")"
new=$(awk '$1 == "twin" { print $2 }' "$T/reissue.out")
[ ${#new} = 96 ] && [ "$new" != "$hA" ] && [ "$(handle_of twin)" = "$new" ] &&
    pass "re-issue printed twin's new handle, and \`p11psk handle\` agrees" ||
    fail "re-issue output: $(cat "$T/reissue.out")"
grep -q 'replace every handle file' "$T/reissue.err" && grep -q 'handle key reloaded' "$T/reissue.err" &&
    pass "re-issue says to replace handle files and p11pskd reloaded: $(tr '\n' ' ' <"$T/reissue.err")" ||
    fail "re-issue stderr: $(cat "$T/reissue.err")"
got=$(probe "$SOCK" "$hA")
case $got in
"status=bad handle msg=$BAD"*) pass "old handle after re-issue: $got" ;;
*) fail "old handle after re-issue: '$got'" ;;
esac
got=$(probe "$SOCK" "$new")
[ "$got" = "status=ok msg=" ] && pass "new handle after re-issue is served" || fail "new handle: '$got'"
expect_ok "TLS 1.3 on the re-issued handle" raw "$raw" handle "$new" -tls1_3
expect_fail "TLS 1.3 on the old handle after re-issue" "bad handle" raw "$raw" handle "$hA" -tls1_3
[ "$(grep -c 'p11psk-handle-key' "$T/reissue.out")" = 0 ] && pass "re-issue lists no handle key" ||
    fail "re-issue printed the handle key"

# The handle key removed behind p11pskd's back: a FLUSH (no handle) finds none and every
# handle is refused; once `p11psk handle` has made a new one, p11pskd finds it by itself.
pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$TOKEN_LABEL" --login --pin "$USER_PIN" \
    --delete-object --type secrkey --label p11psk-handle-key >/dev/null 2>&1 ||
    die "pkcs11-tool could not delete the handle key"
got=$(timeout 20 "$PROBE" "$SOCK" "$(frame 0103)" | head -n 1)
[ "$got" = "status=ok msg=" ] || fail "FLUSH: '$got'"
grep -q 'no handle key: token .* has no handle key' "$T/p11pskd.log" &&
    pass "FLUSH without a handle key: p11pskd says so" || fail "no warning after FLUSH"
got=$(probe "$SOCK" "$new")
case $got in
"status=bad handle msg=$BAD"*) pass "without a handle key every handle is refused: $got" ;;
*) fail "no handle key, handle: '$got'" ;;
esac
new2=$(handle_of twin)
[ "$new2" != "$new" ] && pass "\`p11psk handle\` made a new handle key" || fail "same handle: $new2"
for _ in $(seq 10); do # p11pskd looks again at most every 2 s
    got=$(probe "$SOCK" "$new2")
    [ "$got" = "status=ok msg=" ] && break
    sleep 0.5
done
[ "$got" = "status=ok msg=" ] && pass "p11pskd found the new handle key without a restart" ||
    fail "after a new handle key: '$got'"
leak=0
grep -q -i "$raw" "$T/p11pskd.log" "$T/b.log" && leak=1
[ "$leak" = 0 ] && pass "no key bytes in the logs" || fail "a raw key is in a log"
finish
