# SPDX-License-Identifier: Apache-2.0
# shellcheck shell=bash
# Shared setup for integration tests: a throwaway SoftHSM2 token, a real p11pskd, and
# helpers to run real TLS peers. Sourced by each test; everything lives in $T and every
# process started here is killed by PID on exit.
set -euo pipefail

: "${P11PSK_BUILD:?run through ctest (P11PSK_BUILD unset)}"
BIN=$P11PSK_BUILD/bin
PROVIDER=$P11PSK_BUILD/lib/p11psk.so
SOFTHSM_MODULE=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
T=$(mktemp -d /tmp/p11psk-it.XXXXXX)
chmod 0755 "$T"
PIDS=()
ON_EXIT=() # extra cleanup commands (eval'd), e.g. removing throwaway users
FAILS=0
PASSES=0
TOKEN_LABEL=p11psk-test
USER_PIN=1234
DAEMON_PID=

cleanup() {
    local rc=$? p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        # Bounded: give each process up to 2 s, then SIGKILL.
        for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    for p in "${ON_EXIT[@]}"; do
        eval "$p" || true
    done
    if [ "$rc" -ne 0 ] && [ -f "$T/p11pskd.log" ]; then
        echo "--- p11pskd log (last 30 lines)"; tail -n 30 "$T/p11pskd.log"
    fi
    # P11PSK_KEEP=1 keeps the temp dir (token, logs) for debugging.
    if [ -n "${P11PSK_KEEP:-}" ]; then echo "kept $T" >&2; else rm -rf "$T"; fi
    exit "$rc"
}
trap cleanup EXIT

log() { printf '%s\n' "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

pass() { PASSES=$((PASSES + 1)); log "PASS: $*"; }
fail() { FAILS=$((FAILS + 1)); log "FAIL: $*"; }

# Prints the totals and sets the exit status; call last.
finish() {
    # A clean daemon exit, and (in the sanitizer build) no ASan/UBSan/LSan report.
    if [ -n "$DAEMON_PID" ]; then
        kill "$DAEMON_PID" 2>/dev/null || true
        # shellcheck disable=SC2015 # pass always returns 0, so fail runs only when wait fails
        wait "$DAEMON_PID" 2>/dev/null && pass "p11pskd exited cleanly" ||
            fail "p11pskd exit status $? on SIGTERM"
        DAEMON_PID=
    fi
    if [ -f "$T/p11pskd.log" ] &&
        grep -q -E 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$T/p11pskd.log"; then
        fail "sanitizer report in p11pskd log: $(grep -m1 -E 'Sanitizer|runtime error' "$T/p11pskd.log")"
    fi
    echo "$PASSES passed, $FAILS failed"
    [ "$FAILS" -eq 0 ]
}

# An OpenSSL config that loads nothing: raw-key peers must not see the provider.
printf '# empty: no providers beyond the built-in default\n' >"$T/plain.cnf"

setup_token() {
    mkdir -p "$T/tokens"
    cat >"$T/softhsm2.conf" <<EOC
directories.tokendir = $T/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOC
    export SOFTHSM2_CONF=$T/softhsm2.conf
    softhsm2-util --init-token --free --label "$TOKEN_LABEL" --so-pin 87654321 \
        --pin "$USER_PIN" >/dev/null
    printf '%s\n' "$USER_PIN" >"$T/pin"
    chmod 0600 "$T/pin"
    cat >"$T/p11pskd.conf" <<EOC
module = $SOFTHSM_MODULE
token = pkcs11:token=$TOKEN_LABEL
pin-source = file:$T/pin
socket = $T/p11psk.sock
log-level = debug
allow * uid=0
EOC
    export P11PSK_CONF=$T/p11pskd.conf
    cat >"$T/openssl.cnf" <<EOC
openssl_conf = openssl_init

[openssl_init]
providers = provider_sect
alg_section = evp_properties

[provider_sect]
default = default_sect
p11psk = p11psk_sect

[default_sect]
activate = 1

[p11psk_sect]
module = $PROVIDER
p11psk-socket = $T/p11psk.sock
activate = 1

[evp_properties]
default_properties = ?p11psk.handles=yes
EOC
}

# allow_rule LINE: appends an ACL line to the daemon config (before start_daemon).
allow_rule() { printf '%s\n' "$*" >>"$T/p11pskd.conf"; }

start_daemon() {
    ASAN_OPTIONS=${P11PSK_OWN_ASAN_OPTIONS:-${ASAN_OPTIONS:-}} \
        "$BIN/p11pskd" --config "$T/p11pskd.conf" --foreground >>"$T/p11pskd.log" 2>&1 &
    DAEMON_PID=$!
    PIDS+=("$DAEMON_PID")
    for _ in $(seq 100); do
        [ -S "$T/p11psk.sock" ] && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || die "p11pskd exited: $(tail -n 5 "$T/p11pskd.log")"
        sleep 0.05
    done
    die "p11pskd socket did not appear within 5 s"
}

stop_daemon() {
    [ -n "$DAEMON_PID" ] || return 0
    kill "$DAEMON_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
    DAEMON_PID=
}

# In the sanitizer build LD_PRELOAD carries the ASan runtime for the openssl peers that load
# the provider; some system tools (ps, groff) hang or fail under it: run those with
# `env -u LD_PRELOAD`.

awk() { env -u LD_PRELOAD awk "$@"; } # mawk over-reads in memcmp, which ASan reports
ps() { env -u LD_PRELOAD ps "$@"; }

# skip REASON: ctest reports the test as skipped (SKIP_RETURN_CODE 77).
skip() { log "SKIP: $*"; exit 77; }

# as_user CMD...: runs CMD as $RUN_AS (a user name) with its groups, or as we are.
as_user() {
    if [ -n "${RUN_AS:-}" ]; then
        setpriv --reuid="$RUN_AS" --regid="$(id -g "$RUN_AS")" --init-groups "$@"
    else
        "$@"
    fi
}

# rand_hex N: N random bytes as hex.
rand_hex() { openssl rand -hex "$1"; }

# rand_hex_importable N: N random bytes as hex, with no 00 or 0a byte. softhsm2-util 2.6.1
# --import --aes reads the file with fgets(): it stops after a newline and at a NUL byte.
rand_hex_importable() {
    local h
    for _ in $(seq 100); do
        h=$(rand_hex "$1")
        perl -e 'exit(pack("H*", $ARGV[0]) =~ /[\x00\x0a]/ ? 1 : 0)' "$h" && { echo "$h"; return 0; }
    done
    die "could not draw an importable key"
}

# import_aes LABEL HEX: the softhsm2-util path (sensitive, non-extractable CKK_AES).
import_aes() {
    local label=$1 hex=$2 id
    perl -e 'exit(pack("H*", $ARGV[0]) =~ /[\x00\x0a]/ ? 1 : 0)' "$hex" ||
        die "import_aes: key has a 00 or 0a byte, which softhsm2-util would truncate"
    id=$(rand_hex 8)
    perl -e 'print pack("H*", $ARGV[0])' "$hex" >"$T/key.bin"
    softhsm2-util --import "$T/key.bin" --aes --label "$label" --id "$id" \
        --token "$TOKEN_LABEL" --pin "$USER_PIN" >/dev/null
    rm -f "$T/key.bin"
}

# add_hex LABEL HEX [--readable]: the p11psk CLI path; prints the handle.
add_hex() {
    local label=$1 hex=$2
    shift 2
    printf '%s\n' "$hex" >"$T/key.hex"
    "$BIN/p11psk" --config "$T/p11pskd.conf" add "$label" --hex-file "$T/key.hex" "$@"
    rm -f "$T/key.hex"
}

handle_of() { "$BIN/p11psk" --config "$T/p11pskd.conf" handle "$1"; }

# free_port: a port no TCP or UDP socket uses, below the kernel's ephemeral range
# (32768-60999) so that no outgoing connection can take it before the server binds.
free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 12000))
        if ! ss -Htuan "sport = :$p" | grep -q .; then
            echo "$p"
            return 0
        fi
    done
    die "no free port"
}

wait_port() {
    local port=$1 pid=$2
    for _ in $(seq 100); do
        ss -Hltn "sport = :$port" | grep -q . && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# ossl_env handle|raw: the OPENSSL_CONF a peer of that kind runs with.
ossl_conf() { [ "$1" = handle ] && echo "$T/openssl.cnf" || echo "$T/plain.cnf"; }

# run_pair SERVER_KIND SERVER_KEY CLIENT_KIND CLIENT_KEY [openssl options for both...]
# s_server -rev against s_client; succeeds if a line makes the round trip (reversed),
# which proves both sides derived the same keys. A KEY of the form session:FILE uses
# -psk_session FILE instead of -psk. Leaves the peers' output in $T/server.out and
# $T/client.err, and a reason in $REASON. With RUN_AS=USER the client runs as USER.
run_pair() {
    local skind=$1 skey=$2 ckind=$3 ckey=$4
    shift 4
    local port spid msg got sopt copt
    port=$(free_port)
    mapfile -t sopt < <(psk_opt "$skey")
    mapfile -t copt < <(psk_opt "$ckey")
    msg="p11psk-$RANDOM-$RANDOM"
    : >"$T/client.err"
    OPENSSL_CONF=$(ossl_conf "$skind") timeout 20 openssl s_server -accept "127.0.0.1:$port" \
        -nocert "${sopt[@]}" -rev -naccept 1 "$@" >"$T/server.out" 2>&1 &
    spid=$!
    PIDS+=("$spid")
    if ! wait_port "$port" "$spid"; then
        REASON="s_server did not listen: $(tail -n 3 "$T/server.out" | tr '\n' ' ')"
        return 1
    fi
    got=$(printf '%s\nCLOSE\n' "$msg" | as_user env OPENSSL_CONF="$(ossl_conf "$ckind")" timeout 20 \
        openssl s_client -connect "127.0.0.1:$port" "${copt[@]}" -ign_eof -quiet "$@" \
        2>"$T/client.err" | head -n 1) || true
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    if [ "$got" = "$(reverse "$msg")" ]; then
        REASON=
        return 0
    fi
    REASON="no round trip (got '$got'); client: $(grep -v 'SSL_get_servername' "$T/client.err" | tail -n 3 | tr '\n' ' ')"
    return 1
}

# psk_opt KEY: the s_server/s_client PSK option for KEY, one word a line (read with mapfile).
psk_opt() {
    case $1 in
    session:*) printf -- '-psk_session\n%s\n' "${1#session:}" ;;
    *) printf -- '-psk\n%s\n' "$1" ;;
    esac
}

reverse() { perl -e 'print scalar reverse $ARGV[0]' "$1"; }

# expect_ok NAME run_pair-args...
expect_ok() {
    local name=$1
    shift
    if run_pair "$@"; then pass "$name"; else fail "$name: $REASON"; fi
}

# expect_fail NAME PATTERN run_pair-args...: the handshake must fail and the client's
# (or server's) error output must contain PATTERN.
expect_fail() {
    local name=$1 pattern=$2
    shift 2
    if run_pair "$@"; then
        fail "$name: handshake succeeded but should have failed"
    elif grep -q -- "$pattern" "$T/client.err" "$T/server.out"; then
        pass "$name: failed with '$pattern'"
    else
        fail "$name: error output lacks '$pattern': $(tail -n 4 "$T/client.err" "$T/server.out" | tr '\n' ' ')"
    fi
}

# Derivation requests p11pskd has logged so far (one line per request outcome).
daemon_requests() { grep -c -E 'tls1(3-early|3-expand|3-extract|2-prf)' "$T/p11pskd.log" || true; }

# expect_ok_both NAME run_pair-args...: like expect_ok, for handles on both sides, where a
# round trip alone would also pass if both used the handle bytes as a raw key: p11pskd must
# have served derivations to two different processes.
expect_ok_both() {
    local name=$1 before peers
    shift
    before=$(wc -l <"$T/p11pskd.log")
    if ! run_pair "$@"; then
        fail "$name: $REASON"
        return
    fi
    peers=$(tail -n +"$((before + 1))" "$T/p11pskd.log" |
        grep -E 'op=tls1(3-early|3-expand|3-extract|2-prf) .*result=ok' |
        grep -o 'pid=[0-9]*' | sort -u | wc -l)
    if [ "$peers" -ge 2 ]; then
        pass "$name (p11pskd served both peers)"
    else
        fail "$name: round trip but p11pskd served $peers peer process(es)"
    fi
}

# --- In-process handshakes (p11psk-hsloop) ---

HSLOOP=$BIN/p11psk-hsloop

# hsloop CONF OUT ARGS...: runs p11psk-hsloop (bounded to 120 s) with OPENSSL_CONF=CONF,
# stdout to OUT and stderr to OUT.err; sets HS_TOTAL, HS_OK, HS_FAILED and HS_RATE from its
# summary lines, and HS_RC to its exit status. A sanitizer report is a failure (hsloop is
# our own binary: leaks are checked in it as in p11pskd).
# shellcheck disable=SC2034 # HS_RC is read by the tests that source this file
hsloop() {
    hsloop_bg "$@"
    HS_RC=0
    wait "$HS_PID" || HS_RC=$?
    hsloop_collect "$2"
}

# hsloop_bg CONF OUT ARGS...: the same in the background; HS_PID is its PID (also in PIDS).
# Then wait "$HS_PID" and call hsloop_collect OUT.
hsloop_bg() {
    local conf=$1 out=$2
    shift 2
    ASAN_OPTIONS=${P11PSK_OWN_ASAN_OPTIONS:-${ASAN_OPTIONS:-}} OPENSSL_CONF=$conf \
        timeout 120 "$HSLOOP" "$@" >"$out" 2>"$out.err" &
    HS_PID=$!
    PIDS+=("$HS_PID")
}

# hsloop_collect OUT: reads the summary lines (HS_TOTAL ...) and checks for sanitizer reports.
hsloop_collect() {
    local out=$1
    hs_sanitizer_check "$out"
    HS_TOTAL=$(sed -n 's/^handshakes=\([0-9]*\) .*/\1/p' "$out" | tail -n 1)
    HS_OK=$(sed -n 's/^handshakes=.* ok=\([0-9]*\) .*/\1/p' "$out" | tail -n 1)
    HS_FAILED=$(sed -n 's/^handshakes=.* failed=\([0-9]*\)$/\1/p' "$out" | tail -n 1)
    HS_RATE=$(sed -n 's/^elapsed_ms=.* rate_per_s=\([0-9.]*\)$/\1/p' "$out" | tail -n 1)
    : "${HS_TOTAL:=0}" "${HS_OK:=0}" "${HS_FAILED:=0}" "${HS_RATE:=0}"
}

# hs_sanitizer_check OUT: fails on a sanitizer report in OUT.err.
hs_sanitizer_check() {
    if grep -q -E 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$1.err"; then
        fail "sanitizer report from p11psk-hsloop: $(grep -m1 -E 'Sanitizer|runtime error' "$1.err")"
    fi
}

# set_provider_param NAME VALUE: adds a parameter to the p11psk section of $T/openssl.cnf.
set_provider_param() {
    sed -i "/^\[p11psk_sect\]/a $1 = $2" "$T/openssl.cnf"
}

# now_ms: wall-clock milliseconds, the clock p11psk-hsloop's start_ms uses.
now_ms() { date +%s%3N; }

# hs_window OUT FROM_MS TO_MS PATTERN: sorts the handshakes logged in OUT (hsloop -v) by
# their time against the window [FROM_MS, TO_MS] and prints "before bad_before during
# during_ok during_clean during_unclean after bad_after": "before" ended before FROM_MS,
# "after" started at or after TO_MS, "during" overlaps the window; a failure during the
# window is clean when its error matches PATTERN (an ERE). Unclean lines go to stderr.
hs_window() {
    awk -v a="$2" -v b="$3" -v pat="$4" '
    /^hs / {
        s = ""; d = ""
        for (i = 1; i <= NF; i++) {
            if ($i ~ /^start_ms=/) s = substr($i, 10) + 0
            if ($i ~ /^dur_ms=/) d = substr($i, 8) + 0
        }
        ok = ($NF == "ok")
        if (s >= b) { after++; if (!ok) { bad_after++; print "after: " $0 > "/dev/stderr" } }
        else if (s + d < a) { before++; if (!ok) { bad_before++; print "before: " $0 > "/dev/stderr" } }
        else if (ok) { during++; during_ok++ }
        else if ($0 ~ pat) { during++; during_clean++ }
        else { during++; unclean++; print "during: " $0 > "/dev/stderr" }
    }
    END { printf "%d %d %d %d %d %d %d %d\n", before, bad_before, during, during_ok,
                 during_clean, unclean, after, bad_after }' "$1"
}

# ---- a token exported by `p11-kit server` (remote_token.sh, token_fault.sh) ----

# p11kit_setup: skips without p11-kit or its client module; sets CLIENT_MODULE and
# P11KIT_SOCK. Call after setup_token.
p11kit_setup() {
    command -v p11-kit >/dev/null || skip "p11-kit (the p11-kit CLI) is not installed"
    CLIENT_MODULE=${P11KIT_CLIENT_MODULE:-/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so}
    [ -f "$CLIENT_MODULE" ] || skip "$CLIENT_MODULE is missing (package p11-kit-modules)"
    P11KIT_SOCK=$T/p11kit.sock
    P11KIT_PID=
}

# start_p11kit [PROVIDER]: `p11-kit server` in the foreground exporting the test token on
# $P11KIT_SOCK. Sets P11KIT_PID and P11KIT_ADDR (the address it prints for its clients).
start_p11kit() {
    rm -f "$P11KIT_SOCK"
    p11-kit server --provider "${1:-$SOFTHSM_MODULE}" -f -n "$P11KIT_SOCK" \
        "pkcs11:token=$TOKEN_LABEL" >"$T/p11kit.out" 2>"$T/p11kit.err" &
    P11KIT_PID=$!
    PIDS+=("$P11KIT_PID")
    for _ in $(seq 100); do
        [ -S "$P11KIT_SOCK" ] && grep -q '^P11_KIT_SERVER_ADDRESS=' "$T/p11kit.out" && break
        kill -0 "$P11KIT_PID" 2>/dev/null || die "p11-kit server exited: $(cat "$T/p11kit.err")"
        sleep 0.05
    done
    [ -S "$P11KIT_SOCK" ] || die "p11-kit server socket did not appear within 5 s"
    # shellcheck disable=SC2034 # read by the tests that source this file
    P11KIT_ADDR=$(sed -n 's/^P11_KIT_SERVER_ADDRESS=\([^;]*\);.*/\1/p' "$T/p11kit.out")
}

# remote_children: the server's per-connection p11-kit-remote processes.
remote_children() { ps -o pid= --ppid "$P11KIT_PID" | tr -d ' ' || true; }

# remote_conf [ADDRESS]: the daemon and CLI config for the remote module; without ADDRESS no
# p11-kit-server-address line (the environment must name the server).
remote_conf() {
    {
        echo "module = $CLIENT_MODULE"
        [ -z "${1:-}" ] || echo "p11-kit-server-address = $1"
        echo "token = pkcs11:token=$TOKEN_LABEL"
        echo "pin-source = file:$T/pin"
        echo "socket = $T/p11psk.sock"
        echo "log-level = debug"
        echo "allow * uid=0"
        echo "allow-status uid=0"
    } >"$T/p11pskd.conf"
}
