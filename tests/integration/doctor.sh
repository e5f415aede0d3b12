#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
# p11psk doctor against real configurations, a real p11pskd and real openssl processes: the
# shipped stanza passes; a wrong module path, a missing default_properties and no OpenSSL
# configuration each fail with a line naming the fix; --handle tells an allowed key from a
# denied one (a throwaway user); --pid tells a process with the provider from one without.
# Also the provider's own warning when default_properties do not select it.
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || skip "needs root: a throwaway user, and a p11pskd running as root"
U=p11psk-it-doc-$$ # unique: tests of other checkouts may run at the same time
cleanup_user() { userdel "$U" 2>/dev/null || true; }
ON_EXIT+=(cleanup_user)
useradd -M -N -s /usr/sbin/nologin "$U"
UID_U=$(id -u "$U")

setup_token
# Any local user may connect: the allow rules, not the socket's mode, decide.
cat >>"$T/p11pskd.conf" <<EOC
socket-mode = 0666
allow mine uid=$U
EOC
start_daemon
h_root=$(add_hex rootkey "$(rand_hex 32)")
h_mine=$(add_hex mine "$(rand_hex 32)")
h_gone=$(add_hex gone "$(rand_hex 32)")
"$BIN/p11psk" --config "$T/p11pskd.conf" rm gone --yes >/dev/null
id_of() { perl -e 'my $h = $ARGV[0]; my $n = hex(substr($h, 18, 2)); print substr($h, 20, 2 * $n)' "$1"; }

# doc CMD...: runs a doctor command line; output in $T/doc.out (stdout) and $T/doc.err.
doc() {
    DOC_RC=0
    "$@" >"$T/doc.out" 2>"$T/doc.err" || DOC_RC=$?
}
# has NAME TEXT: the doctor's stdout has a line containing TEXT (fixed string).
has() {
    if grep -q -F -- "$2" "$T/doc.out"; then
        pass "$1"
    else
        fail "$1: no line with '$2' in: $(cat "$T/doc.out" "$T/doc.err")"
    fi
}
# rc_is NAME WANT
rc_is() {
    [ "$DOC_RC" = "$2" ] && pass "$1: exit $2" || fail "$1: exit $DOC_RC, want $2: $(cat "$T/doc.out" "$T/doc.err")"
}

# --- the configuration lib.sh writes (the shipped stanza) with the test daemon
doc env OPENSSL_CONF="$T/openssl.cnf" "$BIN/p11psk" doctor --handle "$h_root"
rc_is "shipped config" 0
has "config file named" "ok   OpenSSL configuration: $T/openssl.cnf (OPENSSL_CONF)"
has "provider loaded" "ok   p11psk provider loaded (section [p11psk_sect], module = $PROVIDER)"
has "default properties select p11psk" \
    "ok   TLS13-KDF and TLS1-PRF come from p11psk with the default properties"
has "stunnel's query selects p11psk" \
    'ok   TLS13-KDF and TLS1-PRF come from p11psk with query "provider!=fips" (stunnel)'
has "socket from the provider's section" \
    "ok   p11pskd answers PING at $T/p11psk.sock (p11psk-socket in $T/openssl.cnf): p11pskd "
has "daemon peer is root" "ok   p11pskd at $T/p11psk.sock runs as a trusted user: uid 0 (root)"
has "root may use its key" "ok   uid 0 may use the key with CKA_ID $(id_of "$h_root")"
[ "$(grep -c -v '^ok   ' "$T/doc.out")" = 0 ] && pass "every line is ok" ||
    fail "lines that are not ok: $(grep -v '^ok   ' "$T/doc.out")"
[ ! -s "$T/doc.err" ] && pass "nothing on stderr" || fail "stderr: $(cat "$T/doc.err")"

# --- (a) a wrong module path
sed "s#^module = .*#module = $T/no-such-dir/p11psk.so#" "$T/openssl.cnf" >"$T/badmod.cnf"
doc "$BIN/p11psk" doctor --openssl-conf "$T/badmod.cnf"
rc_is "wrong module path" 1
has "wrong module: fix named" "FAIL p11psk provider loaded: it is not ($T/no-such-dir/p11psk.so: No such file or directory): check \`module = $T/no-such-dir/p11psk.so\`"
has "wrong module: activate named" "and \`activate = 1\` in [p11psk_sect] of $T/badmod.cnf"
has "wrong module: handles as raw keys" \
    "FAIL TLS13-KDF and TLS1-PRF come from p11psk with the default properties (most applications): TLS13-KDF comes from provider 'default', so handles are used as raw keys"

sed '/^\[p11psk_sect\]/,/^\[/{/^activate/d}' "$T/openssl.cnf" >"$T/noact.cnf"
doc "$BIN/p11psk" doctor --openssl-conf "$T/noact.cnf"
rc_is "provider not activated" 1
has "no activate: fix named" \
    "FAIL p11psk provider loaded: it is not (its section has no \`activate = 1\`): check"

# --- (b) no default_properties; then no alg_section either
sed '/^default_properties/d' "$T/openssl.cnf" >"$T/nodp.cnf"
doc "$BIN/p11psk" doctor --openssl-conf "$T/nodp.cnf"
rc_is "missing default_properties" 1
has "missing default_properties: fix named" \
    "FAIL TLS13-KDF and TLS1-PRF come from p11psk with the default properties (most applications): TLS13-KDF comes from provider 'default': add \`default_properties = ?p11psk.handles=yes\` to [evp_properties] in $T/nodp.cnf"
has "missing default_properties: stunnel's query fails too" \
    'FAIL TLS13-KDF and TLS1-PRF come from p11psk with query "provider!=fips" (stunnel)'
has "missing default_properties: provider itself is loaded" "ok   p11psk provider loaded"
sed -e '/^default_properties/d' -e '/^alg_section/d' -e '/^\[evp_properties\]/d' \
    "$T/openssl.cnf" >"$T/noalg.cnf"
doc "$BIN/p11psk" doctor --openssl-conf "$T/noalg.cnf"
has "no alg_section: fix named" \
    "add \`alg_section = evp_properties\` to [openssl_init] and a section [evp_properties] with \`default_properties = ?p11psk.handles=yes\` to $T/noalg.cnf"

# --- (c) no OpenSSL configuration: a missing file, and one that configures nothing
doc env OPENSSL_CONF="$T/no-such.cnf" "$BIN/p11psk" doctor --socket "$T/p11psk.sock"
rc_is "nonexistent OPENSSL_CONF" 1
has "nonexistent OPENSSL_CONF: fix named" \
    "FAIL OpenSSL configuration: no OpenSSL configuration file found/loaded (OPENSSL_CONF $T/no-such.cnf: No such file or directory): point the application at one with OPENSSL_CONF=FILE"
has "--socket used when the configuration names none" \
    "ok   p11pskd answers PING at $T/p11psk.sock (--socket)"
doc env OPENSSL_CONF="$T/plain.cnf" "$BIN/p11psk" doctor --socket "$T/p11psk.sock"
rc_is "empty OPENSSL_CONF" 1
has "empty OPENSSL_CONF: fix named" \
    "FAIL OpenSSL configuration: no OpenSSL configuration file found/loaded (OPENSSL_CONF $T/plain.cnf has no \`openssl_conf = SECTION\` line"
has "empty OPENSSL_CONF: provider stanza named" \
    "FAIL p11psk provider loaded: $T/plain.cnf does not load it: add \`p11psk = p11psk_sect\`"

# --- --handle as another user: allowed for one key, denied for another
doc runuser -u "$U" -- env OPENSSL_CONF="$T/openssl.cnf" "$BIN/p11psk" doctor --handle "$h_mine"
rc_is "$U with its key" 0
has "$U may use its key" "ok   uid $UID_U may use the key with CKA_ID $(id_of "$h_mine")"
doc runuser -u "$U" -- env OPENSSL_CONF="$T/openssl.cnf" "$BIN/p11psk" doctor --handle "$h_root"
rc_is "$U with root's key" 1
has "$U denied root's key" \
    "FAIL uid $UID_U may use the key with CKA_ID $(id_of "$h_root"): access denied: uid $UID_U gid $(id -g "$U") may not use 'rootkey'; add an allow rule to $T/p11pskd.conf"
grep -q "uid=$UID_U .*op=tls12-prf key=rootkey result=access-denied" "$T/p11pskd.log" &&
    pass "the denied probe is in p11pskd's audit log" || fail "no access-denied line for $U"

# A PSK file (IDENTITY:HANDLE lines): an allowed key, a removed key, a raw key left behind.
raw=$(rand_hex 32)
printf '# stunnel PSKsecrets\nclient1:%s\n\nclient2:%s\nclient3:%s\n' "$h_root" "$h_gone" "$raw" \
    >"$T/psk.txt"
doc env OPENSSL_CONF="$T/openssl.cnf" "$BIN/p11psk" doctor --handle-file "$T/psk.txt"
rc_is "PSK file with a removed and a raw key" 1
has "PSK file: allowed key" \
    "ok   uid 0 may use the key with CKA_ID $(id_of "$h_root") ($T/psk.txt:2, identity 'client1')"
has "PSK file: removed key not found" \
    "FAIL uid 0 may use the key with CKA_ID $(id_of "$h_gone") ($T/psk.txt:4, identity 'client2'): key not found"
has "PSK file: raw key is not a handle" \
    "FAIL handle ($T/psk.txt:5, identity 'client3'): these 32 bytes are not a p11psk handle (they may be a raw key)"
if grep -q -i "$raw" "$T/doc.out" "$T/doc.err"; then fail "the raw key was printed"; else
    pass "the raw key is not printed"; fi
doc env OPENSSL_CONF="$T/openssl.cnf" "$BIN/p11psk" doctor --handle "$h_gone"
rc_is "removed key" 1
has "removed key: not found" "FAIL uid 0 may use the key with CKA_ID $(id_of "$h_gone"): key not found"

# --- --pid: s_server with the provider, and one started with OPENSSL_CONF=/dev/null
# (started directly, not under timeout(1), so $! is openssl itself; killed by PID below)
start_server() { # start_server CONF PORT: sets SPID
    OPENSSL_CONF=$1 openssl s_server -accept "127.0.0.1:$2" -nocert -psk "$h_root" \
        >"$T/s_server.$2.out" 2>&1 &
    SPID=$!
    PIDS+=("$SPID")
    wait_port "$2" "$SPID" || die "s_server did not listen: $(cat "$T/s_server.$2.out")"
}
port=$(free_port)
start_server "$T/openssl.cnf" "$port"
good=$SPID
port=$(free_port)
start_server /dev/null "$port"
bad=$SPID
doc env OPENSSL_CONF="$T/openssl.cnf" "$BIN/p11psk" doctor --pid "$good"
rc_is "--pid with the provider" 0
has "--pid: p11psk.so mapped" "ok   process $good has loaded p11psk.so ($PROVIDER)"
has "--pid: its OPENSSL_CONF" "ok   process $good started with OPENSSL_CONF=$T/openssl.cnf"
doc env OPENSSL_CONF="$T/openssl.cnf" "$BIN/p11psk" doctor --pid "$bad"
rc_is "--pid without the provider" 1
has "--pid: not mapped" \
    "FAIL process $bad has not loaded p11psk.so: it uses handles as raw keys: start it with OPENSSL_CONF naming a configuration that loads the provider"
has "--pid: /dev/null named" "ok   process $bad started with OPENSSL_CONF=/dev/null (not the file checked above"
kill "$good" "$bad" 2>/dev/null || true
doc "$BIN/p11psk" doctor --pid "$bad" --socket "$T/p11psk.sock"
has "--pid of a process that has gone" "FAIL process $bad has loaded p11psk.so: cannot read /proc/$bad/maps: No such file or directory"

# --- usage errors exit 2 with the reason
doc "$BIN/p11psk" doctor --pid 12x
rc_is "bad --pid" 2
grep -q -F "p11psk: --pid takes a process id, not '12x'" "$T/doc.err" && pass "bad --pid named" ||
    fail "bad --pid: $(cat "$T/doc.err")"
doc "$BIN/p11psk" doctor --handle xyz
rc_is "non-hex --handle" 2
grep -q -F "p11psk: --handle takes the handle in hex" "$T/doc.err" && pass "non-hex --handle named" ||
    fail "non-hex --handle: $(cat "$T/doc.err")"

# --- --help, and the man page documents every option it shows
doc "$BIN/p11psk" doctor --help
rc_is "doctor --help" 0
sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' "$P11PSK_SRC/keysvc/p11psk.1" |
    awk '/^\.S[SH] / { on = ($1 == ".SS" && $2 == "doctor") } on' >"$T/man.doctor"
missing=$(grep -o -E -- '--[a-z][a-z0-9-]*' "$T/doc.out" | sort -u | while read -r o; do
    grep -q -F -- "$o" "$T/man.doctor" || echo "$o"
done)
[ -s "$T/man.doctor" ] && [ -z "$missing" ] && pass "p11psk(1) documents doctor's options" ||
    fail "p11psk(1) .SS doctor lacks: ${missing:-the section}"
"$BIN/p11psk" --help | grep -q -E '^  doctor ' && pass "p11psk --help lists doctor" ||
    fail "p11psk --help does not list doctor"

# --- the provider warns once when default_properties do not select it
warning='p11psk: default_properties of this library context do not select p11psk (add default_properties = ?p11psk.handles=yes); applications may use handles as raw keys'
kdf() { # kdf CONF: one TLS1-PRF through the openssl CLI; stderr in $T/kdf.err
    OPENSSL_CONF=$1 timeout 20 openssl kdf -keylen 16 -kdfopt digest:SHA256 \
        -kdfopt secret:abc -kdfopt seed:xyz TLS1-PRF >"$T/kdf.out" 2>"$T/kdf.err"
}
kdf "$T/nodp.cnf" && pass "openssl kdf runs without default_properties" ||
    fail "openssl kdf failed: $(cat "$T/kdf.err")"
n=$(grep -c -x -F -- "$warning" "$T/kdf.err" || true)
[ "$n" = 1 ] && pass "provider warns once without default_properties" ||
    fail "warning printed $n times: $(cat "$T/kdf.err")"
# Only a warning: a non-blocking raw-key handshake in such a context still works (an error
# left on OpenSSL's queue would make SSL_get_error() fail it).
k=$(rand_hex 32)
port=$(free_port)
OPENSSL_CONF=$T/nodp.cnf timeout 20 openssl s_server -accept "127.0.0.1:$port" -nocert \
    -psk "$k" -nbio -rev -naccept 1 >"$T/nb.out" 2>&1 &
spid=$!
PIDS+=("$spid")
wait_port "$port" "$spid" || die "s_server -nbio did not listen: $(cat "$T/nb.out")"
got=$(printf 'hello\nCLOSE\n' | OPENSSL_CONF=$T/nodp.cnf timeout 20 openssl s_client \
    -connect "127.0.0.1:$port" -psk "$k" -nbio -ign_eof -quiet 2>"$T/nb.err" | head -n 1) || true
wait "$spid" 2>/dev/null || true
[ "$got" = olleh ] && pass "non-blocking raw-key handshake unharmed by the warning" ||
    fail "non-blocking raw-key handshake: got '$got': $(tail -n 3 "$T/nb.err")"
n=$(grep -c -x -F -- "$warning" "$T/nb.out" || true)
[ "$n" = 1 ] && pass "s_server warns once" || fail "s_server printed the warning $n times"
kdf "$T/openssl.cnf" || fail "openssl kdf failed with the shipped config: $(cat "$T/kdf.err")"
grep -q -F "do not select p11psk" "$T/kdf.err" && fail "warning with the shipped config" ||
    pass "no warning with the shipped config"
finish
