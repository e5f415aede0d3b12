#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
# Debian package test, as root on Debian 12: builds p11psk and p11psk-provider from a clean
# clone of the committed HEAD, runs lintian (errors fail), installs the .debs, runs a TLS 1.3
# PSK handshake through the INSTALLED daemon, CLI, provider and openssl stanza, checks the
# installed units with systemd-analyze (verify, security exposure <= 3.0), then purges and
# checks that nothing of the package is left. Prints "N passed, N failed".
set -euo pipefail
P11PSK_ROOT=$(cd "$(dirname "$0")/.." && pwd)
PKGS=(p11psk p11psk-provider)
MAX_EXPOSURE=3.0
TEST_USER=p11psk-pkgtest # a throwaway application user in p11psk-clients
PASSES=0
FAILS=0
PIDS=()

log() { printf '%s\n' "$*" >&2; }
pass() { PASSES=$((PASSES + 1)); log "PASS: $*"; }
fail() { FAILS=$((FAILS + 1)); log "FAIL: $*"; }
die() { log "FATAL: $*"; echo "$PASSES passed, $((FAILS + 1)) failed"; exit 1; }

[ "$(id -u)" -eq 0 ] || { log "pkgtest.sh installs packages: run it as root"; exit 77; }

W=$(mktemp -d /tmp/p11psk-pkgtest.XXXXXX)
chmod 0755 "$W" # the daemon's user and the test user reach the demo files below
installed_here=0

purge_pkgs() {
    env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "${PKGS[@]}" >"$W/purge.log" 2>&1
}

cleanup() {
    local rc=$? p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    id "$TEST_USER" >/dev/null 2>&1 && userdel "$TEST_USER" 2>/dev/null
    # Leave the machine as found if a check stopped us half-way.
    if [ "$installed_here" -eq 1 ] && dpkg-query -W p11psk >/dev/null 2>&1; then
        purge_pkgs || true
    fi
    if [ -n "${P11PSK_KEEP:-}" ]; then log "kept $W"; else rm -rf "$W"; fi
    exit "$rc"
}
trap cleanup EXIT

# ---- build dependencies (debian/control) and test tools ----
DEBS=(git debhelper dpkg-dev fakeroot lintian cmake pkgconf libssl-dev libp11-kit-dev systemd
      openssl softhsm2 iproute2 util-linux python3 man-db)
missing=()
for p in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
        missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "Installing: ${missing[*]}"
    env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"
fi

if dpkg-query -W p11psk >/dev/null 2>&1 || dpkg-query -W p11psk-provider >/dev/null 2>&1; then
    log "purging an earlier install of ${PKGS[*]}"
    purge_pkgs || die "cannot purge the installed p11psk packages: $(tail -n 5 "$W/purge.log")"
fi

# ---- build from a clean clone: untracked and uncommitted files stay out ----
HEAD=$(git -C "$P11PSK_ROOT" rev-parse HEAD)
[ -z "$(git -C "$P11PSK_ROOT" status --porcelain --untracked-files=no)" ] ||
    log "note: uncommitted changes in $P11PSK_ROOT are not part of this build"
git clone -q --no-checkout "$P11PSK_ROOT" "$W/src"
git -C "$W/src" checkout -q "$HEAD"
log "== dpkg-buildpackage of $HEAD"
if (cd "$W/src" && DEB_BUILD_OPTIONS=nocheck timeout 1800 dpkg-buildpackage -us -uc -b \
    >"$W/build.log" 2>&1); then
    pass "dpkg-buildpackage -us -uc -b"
else
    tail -n 30 "$W/build.log" >&2
    die "dpkg-buildpackage failed"
fi
CHANGES=$(ls "$W"/p11psk_*_*.changes)
for p in "${PKGS[@]}"; do
    # shellcheck disable=SC2012 # our own .deb names: no spaces or newlines
    [ -f "$(ls "$W/${p}"_*_*.deb 2>/dev/null | head -n 1)" ] && pass "built $p" ||
        fail "no $p .deb"
done

log "== lintian"
if lintian --fail-on error "$CHANGES" >"$W/lintian.log" 2>&1; then
    pass "lintian: no errors ($(grep -c '^[EWIP]:' "$W/lintian.log" || true) tags)"
else
    fail "lintian errors: $(grep '^E:' "$W/lintian.log" | head -n 5)"
fi
sed 's/^/   lintian: /' "$W/lintian.log" >&2

# ---- install ----
log "== apt-get install"
debs=()
# shellcheck disable=SC2012 # our own .deb names: no spaces or newlines
for p in "${PKGS[@]}"; do debs+=("$(ls "$W/${p}"_*_*.deb | head -n 1)"); done
installed_here=1
if env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${debs[@]}" >"$W/install.log" 2>&1; then
    pass "apt-get install ${PKGS[*]}"
else
    tail -n 20 "$W/install.log" >&2
    die "apt-get install failed"
fi
dpkg -L "${PKGS[@]}" | sort -u >"$W/files.list"

MODULESDIR=$(pkg-config --variable=modulesdir libcrypto)
UNITDIR=$(pkg-config --variable=systemdsystemunitdir systemd)
for f in /usr/sbin/p11pskd /usr/bin/p11psk "$MODULESDIR/p11psk.so" \
    /etc/p11psk/p11pskd.conf /etc/p11psk/openssl-p11psk.cnf /etc/p11psk/softhsm2.conf \
    "$UNITDIR/p11pskd.service" "$UNITDIR/p11pskd.socket" \
    /usr/lib/sysusers.d/p11psk.conf /usr/lib/tmpfiles.d/p11psk.conf \
    /usr/share/doc/p11psk/examples/p11pskd-network-hsm.conf \
    /usr/share/man/man8/p11pskd.8.gz /usr/share/man/man1/p11psk.1.gz \
    /usr/share/man/man7/p11psk-provider.7.gz; do
    [ -e "$f" ] && pass "installed $f" || fail "missing $f"
done
for c in /etc/p11psk/p11pskd.conf /etc/p11psk/openssl-p11psk.cnf /etc/p11psk/softhsm2.conf; do
    grep -q -x "$c" /var/lib/dpkg/info/p11psk.conffiles && pass "conffile $c" ||
        fail "$c is not a conffile"
done
getent passwd p11psk >/dev/null && getent group p11psk >/dev/null &&
    getent group p11psk-clients >/dev/null &&
    pass "postinst created user p11psk, groups p11psk and p11psk-clients" ||
    fail "users/groups after install: $(getent passwd p11psk) / $(getent group p11psk-clients)"
[ "$(stat -c '%U:%G %a' /var/lib/p11psk/tokens 2>/dev/null)" = "p11psk:p11psk 700" ] &&
    pass "/var/lib/p11psk/tokens is p11psk:p11psk 0700" ||
    fail "/var/lib/p11psk/tokens: $(stat -c '%U:%G %a' /var/lib/p11psk/tokens 2>&1)"
if systemctl is-enabled p11pskd.service >/dev/null 2>&1 ||
    systemctl is-enabled p11pskd.socket >/dev/null 2>&1; then
    fail "the install enabled a unit"
else
    pass "units installed but not enabled"
fi
v=$(/usr/sbin/p11pskd --version)
[ "$v" = "p11pskd $(dpkg-query -W -f='${Version}' p11psk)" ] && pass "installed $v" ||
    fail "p11pskd --version: '$v'"
grep -q "^module = $MODULESDIR/p11psk.so$" /etc/p11psk/openssl-p11psk.cnf &&
    pass "openssl-p11psk.cnf names the provider in $MODULESDIR" ||
    fail "openssl-p11psk.cnf: $(grep '^module' /etc/p11psk/openssl-p11psk.cnf)"

# ---- demo through the installed programs ----
log "== TLS 1.3 PSK through the installed p11pskd, p11psk and provider"
D=$W/demo
mkdir -m 0755 "$D"
mkdir "$D/tokens" "$D/run"
chown p11psk:p11psk "$D/tokens" "$D/run"
chmod 0700 "$D/tokens"
chmod 0755 "$D/run" # like /run/p11psk: the daemon writes, clients reach the socket
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$D" \
    >"$D/softhsm2.conf"
as_daemon() { # runs a command as p11psk, as the README says to provision keys
    env SOFTHSM2_CONF="$D/softhsm2.conf" setpriv --reuid=p11psk --regid=p11psk --init-groups \
        -- "$@"
}
as_daemon softhsm2-util --init-token --free --label pkgtest --so-pin 87654321 --pin 1234 \
    >/dev/null
install -m 0640 -o root -g p11psk /dev/null "$D/pin"
echo 1234 >"$D/pin"
useradd --system --no-create-home --shell /usr/sbin/nologin -G p11psk-clients "$TEST_USER"
cat >"$D/p11pskd.conf" <<EOC
module = /usr/lib/softhsm/libsofthsm2.so
token = pkcs11:token=pkgtest
pin-source = file:$D/pin
socket = $D/run/p11psk.sock
socket-group = p11psk-clients
allow pkgtest-* gid=p11psk-clients
EOC
out=$(as_daemon /usr/sbin/p11pskd --check-config --config "$D/p11pskd.conf" 2>&1) &&
    pass "p11pskd --check-config as p11psk: $out" || fail "--check-config: $out"

RAW=$(openssl rand -hex 32)
printf '%s\n' "$RAW" >"$D/psk.hex"
chown p11psk "$D/psk.hex"
chmod 0400 "$D/psk.hex"
if HANDLE=$(as_daemon /usr/bin/p11psk --config "$D/p11pskd.conf" add pkgtest-client \
    --hex-file "$D/psk.hex" 2>"$D/add.err"); then
    pass "p11psk add as p11psk: handle ${HANDLE:0:12}..."
else
    die "p11psk add: $(cat "$D/add.err")"
fi
rm -f "$D/psk.hex"

env SOFTHSM2_CONF="$D/softhsm2.conf" setpriv --reuid=p11psk --regid=p11psk --init-groups \
    -- /usr/sbin/p11pskd --config "$D/p11pskd.conf" --foreground \
    2>"$D/p11pskd.log" &
DPID=$!
PIDS+=("$DPID")
for _ in $(seq 100); do
    grep -q 'serving with' "$D/p11pskd.log" 2>/dev/null && break
    kill -0 "$DPID" 2>/dev/null || break
    sleep 0.05
done
[ "$(stat -c '%U:%G %a' "$D/run/p11psk.sock" 2>/dev/null)" = "p11psk:p11psk-clients 660" ] &&
    pass "socket is p11psk:p11psk-clients 0660" ||
    fail "socket: $(stat -c '%U:%G %a' "$D/run/p11psk.sock" 2>&1); log: $(tail -n 3 "$D/p11pskd.log")"

PORT=$((20000 + RANDOM % 12000))
for _ in $(seq 50); do
    ss -Hltn "sport = :$PORT" | grep -q . || break
    PORT=$((20000 + RANDOM % 12000))
done
OPENSSL_CONF=/dev/null timeout 30 openssl s_server -accept "127.0.0.1:$PORT" -nocert \
    -psk "$RAW" -tls1_3 -rev -naccept 1 >"$D/server.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do ss -Hltn "sport = :$PORT" | grep -q . && break; sleep 0.05; done
# The application: a member of p11psk-clients, with only the handle and the installed stanza.
GOT=$(printf 'hello installed p11psk\nCLOSE\n' |
    setpriv --reuid="$TEST_USER" --regid="$TEST_USER" --init-groups -- \
        env OPENSSL_CONF=/etc/p11psk/openssl-p11psk.cnf P11PSK_SOCKET="$D/run/p11psk.sock" \
        timeout 30 openssl s_client -connect "127.0.0.1:$PORT" -tls1_3 -psk "$HANDLE" \
        -ign_eof 2>&1) || true
if echo "$GOT" | grep -q 'ksp11p dellatsni olleh'; then
    pass "TLS 1.3 PSK round trip: handle via the installed provider, raw key on the server"
    # The raw key never reaches the client's side.
    echo "$GOT" | grep -q -i "$RAW" && fail "the raw PSK shows up on the client side" ||
        pass "the client side never sees the raw PSK"
else
    fail "no round trip; s_client: $(echo "$GOT" | tail -n 8); p11pskd: $(tail -n 5 "$D/p11pskd.log")"
fi
grep -q -E 'tls13-(early|extract).*pkgtest-client' "$D/p11pskd.log" &&
    pass "p11pskd served the handshake: $(grep -m1 -E 'tls13-(early|extract)' "$D/p11pskd.log")" ||
    fail "no tls13 request in the p11pskd log: $(tail -n 5 "$D/p11pskd.log")"

# ---- the installed units ----
log "== systemd-analyze"
if systemd-analyze verify "$UNITDIR/p11pskd.service" "$UNITDIR/p11pskd.socket" \
    >"$W/verify.log" 2>&1; then
    pass "systemd-analyze verify p11pskd.service p11pskd.socket"
else
    fail "systemd-analyze verify: $(head -n 5 "$W/verify.log")"
fi
systemd-analyze security --offline=true "$UNITDIR/p11pskd.service" >"$W/security.log" 2>&1 || true
exposure=$(sed -n 's/.*Overall exposure level for p11pskd.service: \([0-9.]*\).*/\1/p' \
    "$W/security.log")
if [ -n "$exposure" ] && awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }'; then
    pass "systemd-analyze security: exposure $exposure <= $MAX_EXPOSURE"
else
    fail "systemd-analyze security: exposure '${exposure:-?}' > $MAX_EXPOSURE: $(tail -n 2 "$W/security.log")"
fi

# ---- purge ----
log "== apt-get purge"
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
userdel "$TEST_USER"
if purge_pkgs; then
    pass "apt-get purge ${PKGS[*]}"
else
    fail "apt-get purge: $(tail -n 5 "$W/purge.log")"
fi
left=()
while IFS= read -r f; do
    # Shared directories (/usr, /etc, the /lib symlink ...) stay; what only this package
    # made must go.
    if [ -d "$f" ]; then
        if [[ $f == *p11psk* ]]; then left+=("$f"); fi
    elif [ -e "$f" ] || [ -L "$f" ]; then
        left+=("$f")
    fi
done <"$W/files.list"
for d in /etc/p11psk /var/lib/p11psk /run/p11psk; do
    if [ -e "$d" ]; then left+=("$d"); fi
done
[ "${#left[@]}" -eq 0 ] && pass "purge left no file of the package behind ($(wc -l <"$W/files.list") paths checked)" ||
    fail "left after purge: ${left[*]}"
dpkg-query -W -f='${Status}' p11psk 2>/dev/null | grep -q installed &&
    fail "dpkg still lists p11psk" || pass "dpkg no longer lists p11psk"

echo "$PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
