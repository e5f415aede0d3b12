#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Revocation that revokes: after `p11psk rm` the very next handshake with the handle fails
# even though p11pskd had the key's values cached; rm without a running p11pskd says so and
# exits 3; a key deleted or replaced by another tool (OpenSC pkcs11-tool) stops working, or
# works with its new value, within revalidate-ms plus one request. Prints the worst delay.
. "$(dirname "$0")/lib.sh"
command -v pkcs11-tool >/dev/null || skip "pkcs11-tool (package opensc) is not installed"
setup_token
REVAL_MS=200
echo "revalidate-ms = $REVAL_MS" >>"$T/p11pskd.conf"
start_daemon
P=("$BIN/p11psk" --config "$T/p11pskd.conf")
TLS12=(-tls1_2 -cipher PSK-AES128-GCM-SHA256)

# cached_hits LABEL: requests for LABEL that p11pskd answered from its value cache.
cached_hits() { grep -c "key=$1 result=ok step=cache" "$T/p11pskd.log" || true; }

# --- p11psk rm: the next handshake fails, cache warm, both versions, handle on each side.
n=0
for v in tls13 tls12; do
    for side in client server; do
        n=$((n + 1))
        label=rm-$v-$side-$n
        raw=$(rand_hex 32)
        h=$(add_hex "$label" "$raw")
        if [ "$v" = tls13 ]; then o=(-tls1_3); else o=("${TLS12[@]}"); fi
        if [ "$side" = client ]; then pair=(raw "$raw" handle "$h"); else pair=(handle "$h" raw "$raw"); fi
        # Two handshakes: the second is served from the cache (checked below).
        expect_ok "$v $side handle works before rm" "${pair[@]}" "${o[@]}"
        expect_ok "$v $side handle works before rm, again" "${pair[@]}" "${o[@]}"
        [ "$(cached_hits "$label")" -ge 1 ] && pass "$v $side: p11pskd's cache was warm" ||
            fail "$v $side: no request for $label was answered from the cache"
        if "${P[@]}" rm "$label" --yes >"$T/out" 2>"$T/err" &&
            grep -q "^p11pskd flushed [1-9][0-9]* cached values for '$label'" "$T/out"; then
            pass "$v $side: rm told p11pskd: $(grep flushed "$T/out")"
        else
            fail "$v $side: rm: $(cat "$T/out" "$T/err")"
        fi
        expect_fail "$v $side: the very next handshake after rm" "key not found" "${pair[@]}" "${o[@]}"
    done
done

# --- status shows the bound, the age and the counters.
"${P[@]}" status --json >"$T/st.json" 2>&1 || true
grep -q "\"revalidate_ms\": $REVAL_MS" "$T/st.json" && grep -q '"revalidate_age_ms": [0-9]' "$T/st.json" &&
    grep -q '"key_changes": [1-9]' "$T/st.json" && pass "status --json: revalidate_ms, age, key_changes" ||
    fail "status --json: $(grep -E 'revalid|key_changes' "$T/st.json" | tr '\n' ' ')"
"${P[@]}" status >"$T/st.txt" 2>&1 && grep -q "^revalidate   every $REVAL_MS ms" "$T/st.txt" &&
    pass "status: $(grep '^revalidate' "$T/st.txt")" || fail "status text: $(cat "$T/st.txt")"
"${P[@]}" metrics >"$T/st.prom" 2>&1 && grep -q "^p11psk_revalidate_ms $REVAL_MS" "$T/st.prom" &&
    grep -q '^p11psk_revalidate_age_ms ' "$T/st.prom" && grep -q '^p11psk_revalidations_total ' "$T/st.prom" &&
    pass "metrics: p11psk_revalidate_ms, _age_ms, _revalidations_total" ||
    fail "metrics: $(grep revalid "$T/st.prom" | tr '\n' ' ')"

# --- rm and rotate with p11pskd stopped: done in the token, exit 3, and they say so.
gone=$(add_hex rm-nodaemon "$(rand_hex 32)")
rot=$(add_hex rot-nodaemon "$(rand_hex 32)")
stop_daemon
rc=0
"${P[@]}" rm rm-nodaemon --yes >"$T/out" 2>"$T/err" || rc=$?
if [ "$rc" = 3 ] && grep -q "the key was removed from the token ('rm-nodaemon') but p11pskd at $T/p11psk.sock could not be told: .*unreachable.*within revalidate-ms ($REVAL_MS ms)" "$T/err"; then
    pass "rm without p11pskd: exit 3, $(cut -c 1-90 "$T/err")..."
else
    fail "rm without p11pskd: rc $rc: $(cat "$T/out" "$T/err")"
fi
"${P[@]}" list | grep -q '^rm-nodaemon ' && fail "rm without p11pskd left the key in the token" ||
    pass "rm without p11pskd: the key is gone from the token"
rc=0
"${P[@]}" rotate rot-nodaemon >"$T/out" 2>"$T/err" || rc=$?
[ "$rc" = 3 ] && grep -q "rotated in the token ('rot-nodaemon') but p11pskd .*could not be told" "$T/err" &&
    [ "$(handle_of rot-nodaemon)" = "$rot" ] && pass "rotate without p11pskd: rotated, exit 3" ||
    fail "rotate without p11pskd: rc $rc: $(cat "$T/out" "$T/err")"
start_daemon
expect_fail "a key removed while p11pskd was down is refused" "key not found" \
    raw "$(rand_hex 32)" handle "$gone" -tls1_3

# --- another tool (OpenSC pkcs11-tool) deletes or replaces a key while p11pskd serves it.
p11tool() {
    pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$TOKEN_LABEL" --login --pin "$USER_PIN" "$@" \
        >>"$T/p11tool.out" 2>&1
}

# write_key LABEL IDHEX HEX: a secret key written by pkcs11-tool. GENERIC when this
# pkcs11-tool can write one (OpenSC >= 0.24), else AES (0.23 knows no other secret type).
write_key() {
    local rc=0
    perl -e 'print pack("H*", $ARGV[0])' "$3" >"$T/k.bin"
    p11tool --write-object "$T/k.bin" --type secrkey --key-type "$KEYTYPE:$((${#3} / 2))" \
        --id "$2" --label "$1" --private || rc=$?
    rm -f "$T/k.bin"
    return "$rc"
}
KEYTYPE=GENERIC
write_key probe-$$ 0badc0de "$(rand_hex 32)" || KEYTYPE=AES
p11tool --delete-object --type secrkey --id 0badc0de || true
log "pkcs11-tool writes ${KEYTYPE} secret keys here"


# delay_after OUT T0 [ok|fail]: ms from T0 to the end of the last handshake that started at
# or after T0 with the given outcome (0 if none): how long the stale answer lasted.
delay_after() {
    awk -v t0="$2" -v want="$3" '
    /^hs / {
        s = 0; d = 0
        for (i = 1; i <= NF; i++) {
            if ($i ~ /^start_ms=/) s = substr($i, 10) + 0
            if ($i ~ /^dur_ms=/) d = substr($i, 8) + 0
        }
        ok = ($NF == "ok")
        if (s >= t0 && ((want == "ok" && ok) || (want == "fail" && !ok)) && s + d - t0 > m)
            m = s + d - t0
    }
    END { print m + 0 }' "$1"
}

# loop_bg OUT CLIENT_PSK SERVER_PSK: TLS 1.3 handshakes for ~1.5 s in the background.
loop_bg() {
    hsloop_bg "$T/openssl.cnf" "$1" --tls13 --count "$LOOP_N" --interval-ms 10 -v \
        --client-psk "$2" --server-psk "$3"
}

# other_tool_round I REVAL: one deletion and one replacement, measured; sets WORST.
other_tool_round() {
    local i=$1 reval=$2 label id raw new h t0 d1 d2 d3 d lpid
    label=ext-$$-$i-$reval
    id=$(rand_hex 8)
    raw=$(rand_hex 32)
    new=$(rand_hex 32)
    write_key "$label" "$id" "$raw"
    h=$(handle_of "$label")
    # Deletion: warm, then delete while handshakes run.
    hsloop "$T/openssl.cnf" "$T/warm.out" --tls13 --count 2 --client-psk "$h" --server-psk "$raw"
    [ "$HS_OK" = 2 ] || { fail "round $i: warm-up failed: $(tail -n 2 "$T/warm.out.err")"; return; }
    loop_bg "$T/del.out" "$h" "$raw"
    lpid=$HS_PID
    sleep 0.2
    p11tool --delete-object --type secrkey --id "$id"
    t0=$(now_ms)
    wait "$lpid" || true
    d1=$(delay_after "$T/del.out" "$t0" ok)
    tail -n 3 "$T/del.out" | grep -q ' ok$' && fail "round $i: deleted key still works at the end"
    # Replacement: same label and CKA_ID, new value; the old raw key must stop working and
    # the new one start, while handshakes with both run.
    write_key "$label" "$id" "$raw"
    hsloop "$T/openssl.cnf" "$T/warm.out" --tls13 --count 2 --client-psk "$h" --server-psk "$raw"
    [ "$HS_OK" = 2 ] || { fail "round $i: re-written key failed: $(tail -n 2 "$T/warm.out.err")"; return; }
    loop_bg "$T/old.out" "$h" "$raw"
    lpid=$HS_PID
    loop_bg "$T/new.out" "$h" "$new"
    sleep 0.2
    p11tool --delete-object --type secrkey --id "$id"
    write_key "$label" "$id" "$new"
    t0=$(now_ms)
    wait "$lpid" || true
    wait "$HS_PID" || true
    d2=$(delay_after "$T/old.out" "$t0" ok)
    d3=$(delay_after "$T/new.out" "$t0" fail)
    tail -n 3 "$T/old.out" | grep -q ' fail: ' || fail "round $i: the old raw key still works at the end"
    tail -n 3 "$T/new.out" | grep -q ' ok$' || fail "round $i: the new raw key does not work at the end"
    for d in "$d1" "$d2" "$d3"; do [ "$d" -gt "$WORST" ] && WORST=$d; done
    log "  round $i (revalidate-ms $reval): deleted stale for $d1 ms, replaced: old worked $d2 ms, new failed $d3 ms"
    p11tool --delete-object --type secrkey --id "$id"
}

# bound REVAL: revalidate-ms, plus one request and a handshake's length and scheduling slack.
bound() { echo $(($1 + 300)); }

WORST=0
LOOP_N=$(((REVAL_MS + 900) / 12))
for i in $(seq 20); do other_tool_round "$i" "$REVAL_MS"; done
[ "$WORST" -le "$(bound "$REVAL_MS")" ] &&
    pass "another tool's delete/replace noticed within $WORST ms (worst of 20; revalidate-ms $REVAL_MS)" ||
    fail "another tool's change served for $WORST ms (> $(bound "$REVAL_MS") ms, revalidate-ms $REVAL_MS)"
log "WORST CASE revalidate-ms=$REVAL_MS: $WORST ms"
worst200=$WORST

# Once with the default bound, for the figure.
stop_daemon
sed -i '/^revalidate-ms/d' "$T/p11pskd.conf"
start_daemon
WORST=0
LOOP_N=$(((1000 + 900) / 12))
other_tool_round 1 1000
[ "$WORST" -le "$(bound 1000)" ] &&
    pass "default revalidate-ms 1000: noticed within $WORST ms" ||
    fail "default revalidate-ms 1000: served for $WORST ms (> $(bound 1000) ms)"
log "WORST CASE revalidate-ms=1000 (default): $WORST ms; revalidate-ms=$REVAL_MS: $worst200 ms"
grep -q 'value changed in the token; dropped' "$T/p11pskd.log" &&
    grep -q 'removed from the token; dropped' "$T/p11pskd.log" &&
    pass "p11pskd logged the changes it found" || fail "no change lines in the p11pskd log"

finish
