#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
# A smart card or HSM locks after a few wrong PINs, so p11pskd never tries a refused PIN
# twice (issue 13). The token's calls are counted with OpenSC's pkcs11-spy.so as p11pskd's
# module (PKCS11SPY_OUTPUT), in front of p11psk-logout-shim.so, which makes SoftHSM2 forget
# the login on demand, in front of SoftHSM2.
#  * Start with a wrong PIN: exactly one C_Login, exit status 78 (not restarted by systemd).
#  * Running: the PIN file now holds a wrong PIN and the token forgets the login. During 10 s
#    of requests there is exactly one C_Login; the requests fail with "token login refused:
#    CKR_PIN_INCORRECT; fix the PIN in FILE, then reload".
#  * The PIN is fixed and p11pskd reloaded: requests succeed again.
. "$(dirname "$0")/lib.sh"
SPY=${PKCS11SPY_MODULE:-}
for m in /usr/lib/x86_64-linux-gnu/pkcs11-spy.so /usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so \
    $(dpkg -L opensc-pkcs11 2>/dev/null | grep '/pkcs11-spy\.so$' || true); do
    [ -n "$SPY" ] || { [ -f "$m" ] && SPY=$m; }
done
[ -n "$SPY" ] || skip "OpenSC's pkcs11-spy.so not found (package opensc-pkcs11)"
SHIM=$P11PSK_BUILD/lib/p11psk-logout-shim.so
[ -f "$SHIM" ] || die "$SHIM missing (build the tests/helpers targets)"
BAD=$BIN/p11psk-badclient

setup_token
raw=$(rand_hex 32)
h=$(add_hex k "$raw")
# Through the spy from now on; every derivation reaches the token.
sed -i "s|^module = .*|module = $SPY|" "$T/p11pskd.conf"
echo "cache = off" >>"$T/p11pskd.conf"

# In the sanitizer build: the spy's own leak (OpenSC's, not ours) is not reported.
printf 'leak:pkcs11-spy.so\n' >"$T/lsan.supp"

# with_spy LOG CMD...: runs CMD with the spy logging to LOG, in front of the shim.
with_spy() {
    local logf=$1
    shift
    PKCS11SPY=$SHIM PKCS11SPY_OUTPUT=$logf P11PSK_SHIM_MODULE=$SOFTHSM_MODULE \
        P11PSK_SHIM_TRIGGER=$T/logout LSAN_OPTIONS=suppressions=$T/lsan.supp "$@"
}
logins() { grep -c ': C_Login$' "$1" 2>/dev/null || true; }

# 1. A wrong PIN at start.
printf '9999\n' >"$T/pin"
rc=0
with_spy "$T/spy-start.log" timeout 30 "$BIN/p11pskd" --config "$T/p11pskd.conf" --foreground \
    >"$T/start.out" 2>&1 || rc=$?
n=$(logins "$T/spy-start.log")
[ "$rc" = 78 ] && pass "wrong PIN at start: exit status 78" ||
    fail "wrong PIN at start: exit status $rc: $(tail -n 2 "$T/start.out" | tr '\n' ' ')"
[ "$n" = 1 ] && pass "wrong PIN at start: exactly one C_Login" || fail "wrong PIN at start: $n C_Login calls"
grep -q -F "token login refused: CKR_PIN_INCORRECT; fix the PIN in $T/pin" "$T/start.out" &&
    pass "start message: $(grep -m1 -o 'token login refused.*' "$T/start.out")" ||
    fail "start message: $(tail -n 2 "$T/start.out" | tr '\n' ' ')"

# 2. Running with the right PIN; then the PIN file goes wrong and the token forgets us.
printf '%s\n' "$USER_PIN" >"$T/pin"
with_spy "$T/spy.log" start_daemon
if out=$("$BAD" "$T/p11psk.sock" good 1 2000 "$h" 2>&1); then
    pass "through the spy: $(printf '%s' "$out" | tail -n 1)"
else
    fail "through the spy: $out"
fi
n0=$(logins "$T/spy.log")
printf '9999\n' >"$T/pin"
touch "$T/logout"
t0=$(date +%s)
out=$("$BAD" "$T/p11psk.sock" good 10 2000 "$h" 2>&1) || true
n1=$(logins "$T/spy.log")
log "  10 s of requests with a wrong PIN: $(printf '%s' "$out" | tail -n 1) in $(($(date +%s) - t0)) s"
[ ! -e "$T/logout" ] && pass "the token forgot the login" || fail "the shim was not reached"
[ $((n1 - n0)) = 1 ] && pass "exactly one C_Login in 10 s of requests (spy: $n0 before, $n1 after)" ||
    fail "$((n1 - n0)) C_Login calls in 10 s of requests"
failed=$(printf '%s' "$out" | sed -n 's/^good: .* failed=\([0-9]*\) .*/\1/p')
[ "${failed:-0}" -ge 50 ] && pass "$failed early-secret requests failed fast meanwhile" ||
    fail "only '${failed:-}' failed requests: $out"
# The client reads the daemon's message (the first failures are printed).
if printf '%s' "$out" | grep -q -F "token login refused: CKR_PIN_INCORRECT; fix the PIN in $T/pin, then reload"; then
    pass "requests say: $(printf '%s' "$out" | grep -m1 -o 'token login refused[^;]*; fix the PIN in [^,]*, then reload')"
else
    fail "requests' message: $(printf '%s' "$out" | head -n 2 | tr '\n' ' ')"
fi
grep -q 'op=tls13-early key=[^ ]* result=[a-z-]* reason="token login refused: CKR_PIN_INCORRECT' \
    "$T/p11pskd.log" &&
    pass "audit lines carry the refusal" || fail "no audit line with the refusal"

# 3. Fixed and reloaded: served again.
printf '%s\n' "$USER_PIN" >"$T/pin"
kill -HUP "$DAEMON_PID"
sleep 0.5
if out=$("$BAD" "$T/p11psk.sock" good 2 2000 "$h" 2>&1); then
    pass "PIN fixed, reloaded: $(printf '%s' "$out" | tail -n 1)"
else
    fail "after fixing the PIN and reloading: $out"
fi
n2=$(logins "$T/spy.log")
[ $((n2 - n1)) = 1 ] && pass "one C_Login after the reload" || fail "$((n2 - n1)) C_Login calls after the reload"
finish
