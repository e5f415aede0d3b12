#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# p11psk migrate on PSK files, without applications: what it writes, and that every bad
# input stops it with the file and line named and nothing changed (file and token).
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
. "$(dirname "$0")/lib.sh"
setup_token
P=$BIN/p11psk
D=$T/files
mkdir "$D"

# state FILE: everything a run could change: the file's bytes, mode, owner, mtime, the
# directory's entries, and the token's keys.
state() {
    sha256sum "$1" | cut -d' ' -f1
    stat -c '%a %U:%G %Y.%y' "$1"
    ls -a "$(dirname "$1")"
    "$P" list
}

# expect_refused NAME PATTERN FILE migrate-args...: exit 1, stderr matches PATTERN, and
# nothing changed.
expect_refused() {
    local name=$1 pattern=$2 f=$3 before after
    shift 3
    before=$(state "$f")
    if "$P" migrate "$@" >"$T/out" 2>"$T/err"; then
        fail "$name: migrate succeeded"
        return
    fi
    after=$(state "$f")
    if ! grep -q -- "$pattern" "$T/err"; then
        fail "$name: error lacks '$pattern': $(cat "$T/err")"
    elif [ "$before" != "$after" ]; then
        fail "$name: something changed"
    else
        pass "$name: $(head -n 1 "$T/err")"
    fi
}

k1=$(rand_hex 32)
k2=$(rand_hex 48)
k3=$(rand_hex 16)
# stunnel: hex keys, an ASCII key, comments, a blank line, CRLF, a repeated identity, no
# final newline.
printf '# PSK secrets for the tunnels\nalpha:%s\n\nbeta:%s\r\ngamma:an ASCII key, 32 chars long!!!\nalpha:%s\n# end\ndelta:%s' \
    "$k1" "$k2" "$k1" "$k3" >"$D/stunnel.psk"
chown nobody:nogroup "$D/stunnel.psk"
chmod 0640 "$D/stunnel.psk"
cp -p "$D/stunnel.psk" "$T/stunnel.orig"

# --- refusals, nothing changed
B=$T/bad # raw-key inputs live apart from $D, which must end up with no raw key
mkdir "$B"
cp -p "$D/stunnel.psk" "$B/bad.psk"
printf '\nno colon here\n' >>"$B/bad.psk"
expect_refused "stunnel line without ':'" "bad.psk:9:" "$B/bad.psk" --stunnel "$B/bad.psk"
printf 'eps:%s\n' "$(rand_hex 15)" >"$B/short.psk"
expect_refused "stunnel key of 15 bytes" "short.psk:1:.*15 bytes" "$B/short.psk" --stunnel "$B/short.psk"
printf 'a:%s\nb:%s\na:%s\n' "$k1" "$k2" "$k2" >"$B/dup.psk"
expect_refused "identity twice with different keys" "dup.psk:3:.*first on line 1" "$B/dup.psk" \
    --stunnel "$B/dup.psk"
printf '# mqtt\nsensor1:%s\nsensor2:not-hex-at-all\n' "$k1" >"$B/mq-bad.psk"
expect_refused "mosquitto non-hex key" "mq-bad.psk:3:.*not hexadecimal" "$B/mq-bad.psk" \
    --mosquitto "$B/mq-bad.psk"
printf 'sensor1:%s0\n' "$k1" >"$B/mq-odd.psk"
expect_refused "mosquitto odd hex digits" "mq-odd.psk:1:.*odd number" "$B/mq-odd.psk" \
    --mosquitto "$B/mq-odd.psk"
h=$(add_hex taken "$(rand_hex 32)")
bad=${h:0:60}$(printf '%s' "${h:60:4}" | tr '0-9a-f' '1-9a-f0')
printf 'taken:%s\n' "$bad" >"$B/broken.psk"
expect_refused "corrupted handle in the file" "broken.psk:1:.*fails its check" "$B/broken.psk" \
    --stunnel "$B/broken.psk"
printf 'taken:%s\n' "$(rand_hex 32)" >"$B/taken.psk"
expect_refused "identity in the token with another key" "taken.psk:1:.*--replace" \
    "$B/taken.psk" --stunnel "$B/taken.psk"
touch "$T/exists.bak"
expect_refused "existing backup file" "already exists" "$D/stunnel.psk" \
    --stunnel "$D/stunnel.psk" --backup "$T/exists.bak"
expect_refused "no file given" "exactly one" "$D/stunnel.psk" --dry-run

# --- dry run: a plan, nothing changed
before=$(state "$D/stunnel.psk")
if "$P" migrate --stunnel "$D/stunnel.psk" --dry-run >"$T/out" 2>&1 &&
    grep -q 'would import 4' "$T/out" && [ "$(state "$D/stunnel.psk")" = "$before" ]; then
    pass "dry run: $(tail -n 1 "$T/out")"
else
    fail "dry run: $(cat "$T/out")"
fi

# --- the real run, with a backup
if "$P" migrate --stunnel "$D/stunnel.psk" --backup "$T/stunnel.bak" >"$T/out" 2>"$T/err"; then
    pass "stunnel file migrated: $(tail -n 1 "$T/out")"
else
    fail "stunnel migrate: $(cat "$T/err")"
fi
grep -q 'warning: .*stunnel.bak holds the raw keys' "$T/err" && pass "backup warning printed" ||
    fail "no backup warning: $(cat "$T/err")"
[ "$(stat -c %a "$T/stunnel.bak")" = 600 ] && cmp -s "$T/stunnel.bak" "$T/stunnel.orig" &&
    pass "backup is the original, mode 0600" || fail "backup wrong: $(stat -c %a "$T/stunnel.bak")"
[ "$(stat -c '%a %U:%G' "$D/stunnel.psk")" = "640 nobody:nogroup" ] &&
    pass "mode and owner kept" || fail "mode/owner now $(stat -c '%a %U:%G' "$D/stunnel.psk")"
leak=0
for k in "$k1" "$k2" "$k3" "an ASCII key"; do
    grep -r -q -i -F -- "$k" "$D" && leak=1
done
[ "$leak" = 0 ] && pass "no raw key left anywhere in the directory" || fail "a raw key is still in $D"
[ "$(find "$D" -mindepth 1 -maxdepth 1 -name '*p11psk-*' | grep -c .)" = 0 ] &&
    pass "no temporary file left" || fail "temp file left"
# The layout is kept: same lines, comments, blank line, CRLF, no final newline.
exp=$(perl -pe 's/^(alpha|beta|gamma|delta):[^\r\n]*/$1:H/' "$T/stunnel.orig")
got=$(perl -pe 's/^(alpha|beta|gamma|delta):[0-9a-f]{96}(?=\r?$)/$1:H/' "$D/stunnel.psk")
[ "$exp" = "$got" ] && [ "$(tail -c 1 "$D/stunnel.psk" | od -An -c | tr -d ' ')" != '\n' ] &&
    pass "comments, blank line, CRLF and missing final newline kept" ||
    fail "layout changed: $(od -c "$D/stunnel.psk" | head -n 5)"
for id in alpha beta gamma delta; do
    want=$(handle_of "$id")
    n=$(grep -c -x "$id:$want" <(tr -d '\r' <"$D/stunnel.psk"))
    [ "$n" -ge 1 ] || fail "$id: file does not hold its handle"
done
[ "$(grep -c '^alpha:' "$D/stunnel.psk")" = 2 ] && pass "each line holds its identity's handle" ||
    fail "alpha lines"
"$P" list | awk '$1=="beta"{exit !($4==48 && $5=="no")}' &&
    pass "beta imported as 48 bytes, not readable" || fail "beta in token: $("$P" list)"

# --- idempotent: a second run changes nothing
before=$(state "$D/stunnel.psk")
sleep 1.1 # a rewrite would show in the mtime
if "$P" migrate --stunnel "$D/stunnel.psk" >"$T/out" 2>&1 && grep -q 'nothing to do' "$T/out" &&
    [ "$(state "$D/stunnel.psk")" = "$before" ]; then
    pass "second run changes nothing"
else
    fail "second run: $(cat "$T/out")"
fi

# --- mosquitto: hex keys with blanks around them; an identity already in the token with
# the same key is reused; --replace keeps the CKA_ID, so the old handle stays valid.
printf '# broker keys\n  sensor1 : %s  \nsensor2:%s\nalpha:%s\n' "$k2" "$k3" "$k1" >"$D/mq.psk"
printf 'taken:%s\n' "$(rand_hex 32)" >"$D/taken.psk"
if "$P" migrate --mosquitto "$D/mq.psk" >"$T/out" 2>"$T/err" &&
    grep -q 'alpha: already in the token with the same key' "$T/out" &&
    grep -q "^  sensor1 : $(handle_of sensor1)  \$" "$D/mq.psk" &&
    grep -q "^alpha:$(handle_of alpha)\$" "$D/mq.psk"; then
    pass "mosquitto file migrated, alpha reused, blanks kept"
else
    fail "mosquitto migrate: $(cat "$T/out" "$T/err" "$D/mq.psk")"
fi
grep -q 'note: 1 key(s) are shorter than 31 bytes' "$T/err" && pass "short-key note for TLS 1.2" ||
    fail "no short-key note: $(cat "$T/err")"
# No p11pskd runs here: the replacement is done, and exit 3 says it could not be told.
rc=0
"$P" migrate --stunnel "$D/taken.psk" --replace >"$T/out" 2>&1 || rc=$?
if [ "$rc" = 3 ] && grep -q 'replaced in the token .*could not be told' "$T/out" &&
    grep -q "^taken:$h\$" "$D/taken.psk" && [ "$("$P" list | grep -c '^taken ')" = 1 ]; then
    pass "--replace: one key, same handle as before"
else
    fail "--replace: $(cat "$T/out" "$D/taken.psk")"
fi
"$P" migrate --help | grep -q -- '--dry-run' && pass "migrate --help" || fail "migrate --help"
finish
