#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Token faults (issue 5) on a remote token (issue 7): p11pskd serves a SoftHSM2 token through
# p11-kit-client.so from a `p11-kit server`, which is then taken away while p11pskd runs.
#  * The server's listener is killed: p11pskd's established connection lives in a separate
#    p11-kit-remote process and keeps serving.
#  * That process is killed too (the token is gone): a fully cached key (object handle and
#    early secret / H(premaster)) still works until the fault is noticed; the first request
#    that needs the token fails fast with "token unavailable ... CKR_DEVICE_ERROR", p11pskd
#    logs the fault, drops its object cache and stays up; then every key fails fast.
#  * The server is restarted on the same socket: handshakes work again (bounded poll)
#    without restarting p11pskd, which logs "token ... is back".
#  * The p11-kit-remote process is stopped (SIGSTOP, a hung token): the request blocks in
#    p11pskd; the provider gives up after p11psk-timeout-ms (2 s) with "service timed out";
#    after SIGCONT handshakes work again.
#  * A token that forgets the login (a shim module logs out, so SoftHSM2 returns
#    CKR_USER_NOT_LOGGED_IN): p11pskd logs in again and the handshake succeeds.
. "$(dirname "$0")/lib.sh"
setup_token
p11kit_setup

# gone PID...: waits (up to 2 s) until each PID has exited or is a zombie.
gone() {
    local p st
    for p in "$@"; do
        for _ in $(seq 40); do
            st=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null || echo X)
            [ "$st" = X ] || [ "$st" = Z ] && break
            sleep 0.05
        done
    done
}

# status NAME: a value from p11pskd's STATUS answer, through `p11psk status --json`
# (booleans as 1/0, absent names as nothing).
status() {
    "$BIN/p11psk" status --json --socket "$T/p11psk.sock" 2>/dev/null |
        perl -MJSON::PP -e 'my $j = eval { decode_json(join "", <STDIN>) } or exit 0;
            my $v = $j->{$ARGV[0]}; exit 0 unless defined $v;
            print JSON::PP::is_bool($v) ? ($v ? 1 : 0) : $v, "\n"' "$1"
}

# timed VAR CMD...: runs CMD, stores its wall time in ms in VAR; never fails.
timed() {
    local var=$1 t0
    shift
    t0=$(now_ms)
    "$@" || true
    printf -v "$var" '%s' "$(($(now_ms) - t0))"
}

# last_latency_us RESULT: latency of the last logged tls13-expand request with RESULT (a key
# the token could not look up is logged by its CKA_ID, not its identity).
last_latency_us() {
    { grep -E "op=tls13-expand key=[^ ]* result=$1" "$T/p11pskd.log" || true; } | tail -n 1 |
        sed -n 's/.*latency=\([0-9]*\)us.*/\1/p'
}

O13=(-tls1_3 -ciphersuites TLS_AES_128_GCM_SHA256)
O12=(-tls1_2 -cipher PSK-AES128-GCM-SHA256)

start_p11kit
remote_conf "unix:path=$P11KIT_SOCK"
# Keys are re-validated in the token every revalidate-ms; high here so that the window in
# which a cached key outlives the token stays open long enough to observe.
echo "revalidate-ms = 600000" >>"$T/p11pskd.conf"
raw_warm=$(rand_hex 32)
h_warm=$(add_hex warm "$raw_warm")
raw_mid=$(rand_hex 32)
h_mid=$(add_hex mid "$raw_mid")
raw_cold=$(rand_hex 32)
h_cold=$(add_hex cold "$raw_cold")
raw_hang=$(rand_hex 32)
h_hang=$(add_hex hang "$raw_hang")
start_daemon
mapfile -t OLD_KIDS < <(remote_children)
PIDS+=("${OLD_KIDS[@]}")
[ "${#OLD_KIDS[@]}" -gt 0 ] || die "no p11-kit-remote child serves p11pskd"

expect_ok "before the fault: tls13 warm" raw "$raw_warm" handle "$h_warm" "${O13[@]}"
expect_ok "before the fault: tls12 warm" raw "$raw_warm" handle "$h_warm" "${O12[@]}"

# 1. Only the listener goes: established connections are separate processes.
kill "$P11KIT_PID"
gone "$P11KIT_PID"
expect_ok "listener killed: p11pskd's p11-kit-remote (pid ${OLD_KIDS[*]}) still serves a new key" \
    raw "$raw_mid" handle "$h_mid" "${O13[@]}"

# 2. The token goes: kill the p11-kit-remote process that serves p11pskd.
kill "${OLD_KIDS[@]}"
gone "${OLD_KIDS[@]}"
[ ! -S "$P11KIT_SOCK" ] || log "note: $P11KIT_SOCK still exists"
before=$(wc -l <"$T/p11pskd.log")
expect_ok "token gone, fault not yet noticed: tls13 warm (cached early secret)" \
    raw "$raw_warm" handle "$h_warm" "${O13[@]}"
expect_ok "token gone, fault not yet noticed: tls12 warm (cached H(premaster))" \
    raw "$raw_warm" handle "$h_warm" "${O12[@]}"
if tail -n +"$((before + 1))" "$T/p11pskd.log" | grep 'key=warm result=ok' | grep -qv 'step=cache'; then
    fail "a warm-key derivation during the outage did not come from the cache"
else
    pass "warm-key derivations during the outage came from the cache (step=cache)"
fi

timed ms_cold expect_fail "token gone: tls13 cold fails" "token unavailable" \
    raw "$raw_cold" handle "$h_cold" "${O13[@]}"
lat=$(last_latency_us token-unavailable)
if grep -q "token 'p11psk-test' unavailable (CKR_DEVICE_ERROR in C_" "$T/client.err"; then
    pass "client error names the token and the fault: $(grep -m1 -o 'token unavailable:.*' "$T/client.err" | sed 's/^token unavailable:[^:]*:[0-9]*://')"
else
    fail "client error: $(grep -v SSL_get_servername "$T/client.err" | head -n 2 | tr '\n' ' ')"
fi
# The whole attempt includes starting s_server and s_client, which ASan slows down.
bound=1500
case ${LD_PRELOAD:-} in *asan*) bound=5000 ;; esac
# shellcheck disable=SC2154 # timed set ms_cold by name
if [ -n "$lat" ] && [ "$lat" -lt 500000 ] && [ "$ms_cold" -lt "$bound" ]; then
    pass "fails fast: p11pskd answered in ${lat} us, whole handshake attempt ${ms_cold} ms (provider timeout 2000 ms)"
else
    fail "not fast: p11pskd latency '${lat}' us, handshake attempt ${ms_cold} ms"
fi
if kill -0 "$DAEMON_PID" 2>/dev/null &&
    grep -q "token 'p11psk-test': CKR_DEVICE_ERROR in C_.*; reinitialising module $CLIENT_MODULE" "$T/p11pskd.log"; then
    pass "p11pskd is alive and logged: $(grep -m1 -o "token 'p11psk-test': CKR_DEVICE_ERROR[^;]*" "$T/p11pskd.log")"
else
    fail "p11pskd dead or fault not logged: $(tail -n 3 "$T/p11pskd.log" | tr '\n' ' ')"
fi
timed ms_warm expect_fail "token gone, fault noticed: tls13 warm fails too (object cache dropped)" \
    "token unavailable" raw "$raw_warm" handle "$h_warm" "${O13[@]}"
expect_fail "token gone: tls12 cold, server side handle" "token unavailable" \
    handle "$h_cold" raw "$raw_cold" "${O12[@]}"
avail=$(status token_available)
why=$(status token_fault)
if [ "$avail" = 0 ] && [ -n "$why" ]; then
    pass "status during the outage: token_available 0, token_fault $why"
else
    fail "status during the outage: token_available '$avail' token_fault '$why'"
fi

# 3. The server comes back on the same path; p11pskd recovers by itself.
start_p11kit
t0=$(now_ms)
ok=0
for _ in $(seq 80); do # every 0.5 s (plus the attempt), bounded by 40 s
    if run_pair raw "$raw_cold" handle "$h_cold" "${O13[@]}"; then ok=1; break; fi
    [ $(($(now_ms) - t0)) -lt 40000 ] || break
    sleep 0.5
done
t_back=$(($(now_ms) - t0))
if [ "$ok" = 1 ]; then
    pass "server restarted: handshakes work again after ${t_back} ms, p11pskd not restarted"
else
    fail "no handshake within ${t_back} ms after the server came back: $REASON"
fi
if grep -q "token 'p11psk-test' is back" "$T/p11pskd.log"; then
    pass "p11pskd logged: $(grep -m1 -o "token 'p11psk-test' is back.*" "$T/p11pskd.log")"
else
    fail "p11pskd did not log that the token is back"
fi
mapfile -t -O "${#PIDS[@]}" PIDS < <(remote_children)
avail=$(status token_available)
rec=$(status token_recoveries)
if [ "$avail" = 1 ] && [ "${rec:-0}" -ge 1 ]; then
    pass "status after recovery: token_available 1, token_recoveries $rec"
else
    fail "status after recovery: token_available '$avail' token_recoveries '$rec'"
fi
expect_ok "after recovery: tls13 warm" raw "$raw_warm" handle "$h_warm" "${O13[@]}"
expect_ok "after recovery: tls12 cold, server side handle" handle "$h_cold" raw "$raw_cold" "${O12[@]}"

# 4. A hung token: the p11-kit-remote process serving p11pskd is stopped. p11-kit-client
# has no timeout, so p11pskd's request blocks; the provider's timeout bounds the handshake.
KID=$(remote_children | head -n 1)
[ -n "$KID" ] || die "no p11-kit-remote child after recovery"
kill -STOP "$KID"
ON_EXIT+=("kill -CONT $KID 2>/dev/null")
timed ms_hang expect_fail "hung token: tls13 new key fails with the provider's timeout" \
    "service timed out" raw "$raw_hang" handle "$h_hang" "${O13[@]}"
# shellcheck disable=SC2154 # timed set ms_hang by name
if [ "$ms_hang" -ge 1900 ] && [ "$ms_hang" -lt 6000 ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    pass "hung token: handshake attempt ended after ${ms_hang} ms (p11psk-timeout-ms 2000); p11pskd alive"
else
    fail "hung token: handshake attempt took ${ms_hang} ms; p11pskd alive: $(kill -0 "$DAEMON_PID" 2>/dev/null && echo yes || echo no)"
fi
sleep 1
kill -CONT "$KID"
t0=$(now_ms)
ok=0
for _ in $(seq 20); do
    if run_pair raw "$raw_hang" handle "$h_hang" "${O13[@]}"; then ok=1; break; fi
    sleep 0.5
done
if [ "$ok" = 1 ]; then
    pass "hung token resumed (SIGCONT): handshakes work again after $(($(now_ms) - t0)) ms"
else
    fail "after SIGCONT: $REASON"
fi
lat=$({ grep -E 'op=tls13-expand key=hang result=ok' "$T/p11pskd.log" || true; } | head -n 1 |
    sed -n 's/.*latency=\([0-9]*\)us.*/\1/p')
log "note: the stalled request finished in p11pskd after ${lat:-?} us"

# 5. A forgotten login. SoftHSM2 keeps the login per process (here the p11-kit-remote
# process) and nothing outside it can end it, so a shim module in front of SoftHSM2 on the
# server side calls the real C_Logout once, when a trigger file exists, inside C_DigestKey.
# Trigger "rv": the shim then answers CKR_USER_NOT_LOGGED_IN (what the PKCS#11 spec says a
# token answers); trigger "softhsm": it passes the call on and SoftHSM2 2.6.1 answers for
# itself. cache = off so that every derivation reaches the token; the key's object handle
# stays cached from the first handshake.
if ! command -v cc >/dev/null; then
    log "note: no C compiler; relogin case not run"
else
    cat >"$T/shim.c" <<'EOC'
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST shim, *real;

static CK_RV shim_digest_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k)
{
    const char *t = getenv("P11PSK_SHIM_TRIGGER");
    char mode[16] = "";
    FILE *f = t ? fopen(t, "r") : NULL;
    char done[4096];
    CK_RV rv;

    if (f == NULL)
        return real->C_DigestKey(s, k);
    if (fgets(mode, sizeof(mode), f) == NULL)
        mode[0] = 0;
    fclose(f);
    unlink(t);
    real->C_Logout(s);
    rv = strncmp(mode, "rv", 2) == 0 ? CKR_USER_NOT_LOGGED_IN : real->C_DigestKey(s, k);
    snprintf(done, sizeof(done), "%s.done", t);
    if ((f = fopen(done, "w")) != NULL) { /* what the caller got, for the test's log */
        fprintf(f, "done rv=0x%lx\n", (unsigned long)rv);
        fclose(f);
    }
    return rv;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    if (real == NULL) {
        const char *m = getenv("P11PSK_SHIM_MODULE");
        void *h = m ? dlopen(m, RTLD_NOW | RTLD_LOCAL) : NULL;
        CK_C_GetFunctionList gfl = h ? (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList") : NULL;

        if (gfl == NULL || gfl(&real) != CKR_OK)
            return CKR_GENERAL_ERROR;
        shim = *real;
        shim.C_GetFunctionList = C_GetFunctionList;
        shim.C_DigestKey = shim_digest_key;
    }
    *out = &shim;
    return CKR_OK;
}
EOC
    cc -shared -fPIC -I/usr/include/p11-kit-1 -o "$T/shim.so" "$T/shim.c" -ldl ||
        die "cannot build the logout shim"
    stop_daemon
    mapfile -t cur < <(remote_children)
    kill "$P11KIT_PID" "${cur[@]}" 2>/dev/null || true
    gone "$P11KIT_PID" "${cur[@]}"
    export P11PSK_SHIM_MODULE=$SOFTHSM_MODULE P11PSK_SHIM_TRIGGER=$T/force-logout
    start_p11kit "$T/shim.so"
    unset P11PSK_SHIM_MODULE P11PSK_SHIM_TRIGGER
    remote_conf "unix:path=$P11KIT_SOCK"
    echo "cache = off" >>"$T/p11pskd.conf"
    : >"$T/p11pskd.log"
    rm -f "$T/p11psk.sock"
    start_daemon
    mapfile -t -O "${#PIDS[@]}" PIDS < <(remote_children)
    expect_ok "shim token, cache off: tls13 warm" raw "$raw_warm" handle "$h_warm" "${O13[@]}"
    echo rv >"$T/force-logout"
    expect_ok "token forgot the login (CKR_USER_NOT_LOGGED_IN): tls13 warm still succeeds" \
        raw "$raw_warm" handle "$h_warm" "${O13[@]}"
    if grep -q 'rv=0x101' "$T/force-logout.done" 2>/dev/null &&
        grep -q "logged in again after .*CKR_USER_NOT_LOGGED_IN" "$T/p11pskd.log"; then
        pass "p11pskd logged: $(grep -m1 -o "token '[^']*': logged in again.*" "$T/p11pskd.log")"
    else
        fail "relogin not seen (shim: $(cat "$T/force-logout.done" 2>/dev/null || echo unused)): $(grep -i 'login' "$T/p11pskd.log" | tail -n 2 | tr '\n' ' ')"
    fi
    expect_ok "after the relogin: tls12 warm" raw "$raw_warm" handle "$h_warm" "${O12[@]}"

    # SoftHSM2's own answer to a forgotten login: the private key's handle becomes invalid
    # and C_FindObjects no longer shows it, so p11pskd sees CKR_OBJECT_HANDLE_INVALID, looks
    # the key up again and answers "key not found"; it does not log in again. Recorded, not
    # failed: see the report (p11pskd should check the session state before "not found").
    echo softhsm >"$T/force-logout"
    if run_pair raw "$raw_warm" handle "$h_warm" "${O13[@]}"; then
        pass "token forgot the login (SoftHSM2's own answer): tls13 warm still succeeds"
    else
        log "KNOWN GAP: after SoftHSM2 forgets the login (C_DigestKey: $(cat "$T/force-logout.done" 2>/dev/null)), p11pskd answers: $(grep -m1 -o 'key not found:.*' "$T/client.err" | sed 's/^key not found:[^:]*:[0-9]*://')"
        log "KNOWN GAP: status then says token_logged_in $(status token_logged_in); no relogin is attempted"
    fi
fi
finish
