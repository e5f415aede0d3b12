#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# p11pskd under valgrind (memcheck): TLS 1.3 and TLS 1.2 handshakes with a handle on either
# side against raw-key peers, then SIGTERM. valgrind must exit 0 (no memory errors, no
# definite leaks) and its log must say so. Third-party noise would go in tests/valgrind.supp
# (each entry with its reason); none is needed today.
. "$(dirname "$0")/lib.sh"
case ${LD_PRELOAD:-} in
*asan*) skip "sanitizer build: valgrind cannot run ASan-instrumented binaries" ;;
esac
command -v valgrind >/dev/null || skip "valgrind is not installed"
SRC=${P11PSK_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}
# Suppressions for third-party noise, if any is ever needed (none with SoftHSM2 2.6.1,
# p11-kit 0.24 and OpenSSL 3.0 on Debian 12).
SUPP=()
[ -f "$SRC/tests/valgrind.supp" ] && SUPP=(--suppressions="$SRC/tests/valgrind.supp")
VG_LOG=$T/valgrind.log

setup_token
raw32=$(rand_hex 32)
h32=$(add_hex vg32 "$raw32")
raw16=$(rand_hex 16)
h16=$(add_hex vg16 "$raw16" --readable)

# start_daemon with valgrind in front and a longer wait: valgrind starts slowly, and the
# token login under it takes seconds.
t0=$(date +%s)
valgrind --tool=memcheck --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=1 \
    --show-leak-kinds=definite --num-callers=30 "${SUPP[@]}" --log-file="$VG_LOG" \
    "$BIN/p11pskd" --config "$T/p11pskd.conf" --foreground >>"$T/p11pskd.log" 2>&1 &
DAEMON_PID=$!
PIDS+=("$DAEMON_PID")
for _ in $(seq 1200); do
    [ -S "$T/p11psk.sock" ] && break
    kill -0 "$DAEMON_PID" 2>/dev/null ||
        die "p11pskd under valgrind exited: $(tail -n 5 "$T/p11pskd.log") $(tail -n 20 "$VG_LOG")"
    sleep 0.05
done
[ -S "$T/p11psk.sock" ] || die "p11pskd socket did not appear within 60 s under valgrind"
log "p11pskd up under valgrind after $(($(date +%s) - t0)) s"
# The provider's default 2 s per call is tight for a daemon under valgrind.
export P11PSK_TIMEOUT_MS=20000

expect_ok "tls13 under valgrind: client handle" raw "$raw32" handle "$h32" -tls1_3
expect_ok "tls13 under valgrind: server handle" handle "$h32" raw "$raw32" -tls1_3
# SHA-384: `-psk` always makes a SHA-256 session, so session files (as openssl_tls13.sh).
"$BIN/p11psk-mksess" TLS_AES_256_GCM_SHA384 "$raw32" "$T/raw.pem"
"$BIN/p11psk-mksess" TLS_AES_256_GCM_SHA384 "$h32" "$T/handle.pem"
expect_ok "tls13 under valgrind: SHA384 suite" raw "session:$T/raw.pem" \
    handle "session:$T/handle.pem" -tls1_3 -ciphersuites TLS_AES_256_GCM_SHA384
expect_ok "tls12 under valgrind: token path (32-byte key)" raw "$raw32" handle "$h32" \
    -tls1_2 -cipher PSK-AES128-GCM-SHA256
expect_ok "tls12 under valgrind: ECDHE-PSK, server handle" handle "$h32" raw "$raw32" \
    -tls1_2 -cipher ECDHE-PSK-AES128-CBC-SHA256
expect_ok "tls12 under valgrind: value path (readable 16-byte key)" raw "$raw16" handle "$h16" \
    -tls1_2 -cipher PSK-AES128-GCM-SHA256
# A few error paths too: a bad request and an unknown key.
if [ -x "$BIN/p11psk-wireprobe" ]; then
    timeout 60 "$BIN/p11psk-wireprobe" "$T/p11psk.sock" 000000020701 >/dev/null || true
fi
"$BIN/p11psk" --config "$T/p11pskd.conf" rm vg16 --yes >/dev/null
expect_fail "tls12 under valgrind: removed key refused" "key not found" \
    raw "$raw16" handle "$h16" -tls1_2 -cipher PSK-AES128-GCM-SHA256

# SIGTERM, then valgrind's verdict: its exit status and its log.
kill -TERM "$DAEMON_PID"
rc=0
wait "$DAEMON_PID" || rc=$?
DAEMON_PID=
log "valgrind run took $(($(date +%s) - t0)) s"
if [ "$rc" -eq 0 ]; then pass "valgrind exit status 0"; else fail "valgrind exit status $rc"; fi
summary=$(grep -E 'ERROR SUMMARY' "$VG_LOG" | tail -n 1)
case $summary in
*"ERROR SUMMARY: 0 errors"*) pass "valgrind: ${summary#*== }" ;;
*) fail "valgrind: ${summary:-no ERROR SUMMARY line}" ;;
esac
if grep -q 'definitely lost: [1-9]' "$VG_LOG"; then
    fail "valgrind: $(grep -m1 'definitely lost' "$VG_LOG" | sed 's/^==[0-9]*== *//')"
else
    pass "valgrind: no definite leaks ($(grep -m1 -E 'definitely lost|All heap blocks were freed' "$VG_LOG" | sed 's/^==[0-9]*== *//'))"
fi
if [ "$FAILS" -ne 0 ]; then
    log "--- valgrind log (errors and leaks)"
    grep -E -A25 'Invalid|uninitialised|definitely lost in|Syscall param|Mismatched' "$VG_LOG" | head -n 150 >&2 || true
fi
finish
