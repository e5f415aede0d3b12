#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The man pages match the programs: every option a command's --help shows is in that
# command's part of p11psk(1), p11pskd's options and every p11pskd.conf key are in
# p11pskd(8), every error reason of the provider is in p11psk-provider(7), and the pages
# render without groff warnings.
# shellcheck disable=SC2015 # pass returns 0, so `check && pass || fail` fails only if check does
. "$(dirname "$0")/lib.sh"
: "${P11PSK_SRC:?run through ctest (P11PSK_SRC unset)}"
M1=$P11PSK_SRC/keysvc/p11psk.1
M8=$P11PSK_SRC/keysvc/p11pskd.8
M7=$P11PSK_SRC/provider/p11psk-provider.7

# plain FILE: the roff source with \- and font escapes removed, one string to grep.
plain() { sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' "$1"; }
# section FILE CMD: the text of ".SS CMD ..." up to the next .SS or .SH.
section() { plain "$1" | awk -v c="$2" '/^\.S[SH] / { on = ($1 == ".SS" && $2 == c) } on'; }
# opts: the long options in a usage text on stdin.
opts() { grep -o -E -- '--[a-z][a-z0-9-]*' | sort -u; }

check_opts() { # check_opts NAME HELP-TEXT-FILE SECTION-TEXT-FILE
    local missing=() o
    for o in $(opts <"$2"); do
        grep -q -F -- "$o" "$3" || missing+=("$o")
    done
    if [ "$(opts <"$2" | wc -l)" -eq 0 ]; then
        fail "$1: no options found in --help"
    elif [ "${#missing[@]}" -eq 0 ]; then
        pass "$1: every --help option is in the man page ($(opts <"$2" | tr '\n' ' '))"
    else
        fail "$1: man page lacks ${missing[*]}"
    fi
}

"$BIN/p11psk" --help >"$T/help"
plain "$M1" | awk '/^\.SH OPTIONS/ { on = 1; next } /^\.SH / { on = 0 } on' >"$T/sec"
grep -E '^ +-' "$T/help" >"$T/mainopts"
check_opts "p11psk" "$T/mainopts" "$T/sec"
for c in add handle list rotate rm migrate export status metrics; do
    "$BIN/p11psk" "$c" --help >"$T/help"
    section "$M1" "$c" >"$T/sec"
    [ -s "$T/sec" ] || { fail "p11psk(1) has no .SS $c"; continue; }
    check_opts "p11psk $c" "$T/help" "$T/sec"
done

"$BIN/p11pskd" --help >"$T/help"
plain "$M8" | awk '/^\.SH OPTIONS/ { on = 1; next } /^\.SH / { on = 0 } on' >"$T/sec"
check_opts "p11pskd" "$T/help" "$T/sec"

# (grep -q on a pipe would end it early: SIGPIPE fails the pipeline under pipefail)
plain "$M8" >"$T/m8"
plain "$M7" >"$T/m7"
# Every key the configuration parser knows (its error message lists them) is documented.
printf 'no-such-key = 1\n' >"$T/bad.conf"
"$BIN/p11pskd" --config "$T/bad.conf" --foreground >"$T/bad.out" 2>&1 || true
keys=$(sed -n 's/.*known keys: //p' "$T/bad.out" | tr -d ',' )
keys="$keys allow-status allow-admin"
missing=()
for k in $keys; do
    grep -q -E -- "^\.BI? $k( |$)" "$T/m8" || missing+=("$k")
done
[ "$(echo "$keys" | wc -w)" -gt 15 ] && [ "${#missing[@]}" -eq 0 ] &&
    pass "p11pskd(8) documents every p11pskd.conf key ($(echo "$keys" | wc -w))" ||
    fail "p11pskd(8) lacks keys: ${missing[*]} (known: $keys)"

# Every error reason the provider raises is explained.
missing=()
while IFS= read -r r; do
    grep -q -F -- "$r" "$T/m7" || missing+=("$r")
done < <(sed -n 's/^ *{P11PSK_R_[A-Z_]*, "\([^"]*\)"}.*/\1/p' "$P11PSK_SRC/provider/provider.c")
[ "${#missing[@]}" -eq 0 ] && pass "p11psk-provider(7) explains every error reason" ||
    fail "p11psk-provider(7) lacks reasons: ${missing[*]}"
for k in p11psk-socket p11psk-timeout-ms P11PSK_SOCKET P11PSK_TIMEOUT_MS '?p11psk.handles=yes'; do
    grep -q -F -- "$k" "$T/m7" && pass "p11psk-provider(7) names $k" || fail "p11psk-provider(7) lacks $k"
done

if command -v groff >/dev/null; then
    for m in "$M1" "$M8" "$M7"; do
        w=$(env -u LD_PRELOAD groff -man -Tutf8 -ww "$m" 2>&1 >/dev/null || true)
        [ -z "$w" ] && pass "$(basename "$m") renders without warnings" || fail "$(basename "$m"): $w"
    done
fi
finish
