#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# TLS 1.2 PSK handshakes for the suites users named, through the token path (32-byte key,
# imported with softhsm2-util) and the read path (16-byte key added with --readable); a
# 16-byte key that is not readable is refused with an error that names the fixes.
. "$(dirname "$0")/lib.sh"
setup_token
start_daemon

raw32=$(rand_hex_importable 32)
import_aes tok32 "$raw32"
# shellcheck disable=SC2034 # h32 and h16 are read through ${!h} below
h32=$(handle_of tok32)
raw16=$(rand_hex 16)
# shellcheck disable=SC2034 # read through ${!h} below
h16=$(add_hex read16 "$raw16" --readable)
raw16s=$(rand_hex 16)
h16s=$(add_hex sens16 "$raw16s")

for suite in PSK-AES128-GCM-SHA256 PSK-AES128-CBC-SHA256 ECDHE-PSK-AES128-CBC-SHA256; do
    o=(-tls1_2 -cipher "$suite")
    for k in 32 16; do
        raw=raw$k
        h=h$k
        expect_ok "tls12 $suite ${k}B: client handle, server raw" raw "${!raw}" handle "${!h}" "${o[@]}"
        expect_ok "tls12 $suite ${k}B: server handle, client raw" handle "${!h}" raw "${!raw}" "${o[@]}"
        expect_ok_both "tls12 $suite ${k}B: handles on both sides" handle "${!h}" handle "${!h}" "${o[@]}"
    done
    expect_fail "tls12 $suite 16B not readable" "p11psk --readable\|add --readable" \
        raw "$raw16s" handle "$h16s" "${o[@]}"
done

# Which ladder step served them: the daemon logs it per request. The 32-byte key must be
# served in the token (or, for plain PSK, from the cached H(premaster) the token made),
# never from its value; the readable 16-byte key from its value.
tok_ok=$(grep -c -E 'op=tls12-prf key=tok32 result=ok step=(token|cache)' "$T/p11pskd.log" || true)
tok_other=$(grep 'key=tok32 ' "$T/p11pskd.log" | grep -vc -E 'step=(token|cache)' || true)
tok_token=$(grep -c 'op=tls12-prf key=tok32 result=ok step=token' "$T/p11pskd.log" || true)
if [ "$tok_ok" -ge 9 ] && [ "$tok_other" -eq 0 ] && [ "$tok_token" -ge 3 ]; then
    pass "32-byte key stayed in the token ($tok_ok PRF requests: $tok_token in the token, the rest cached)"
else
    fail "32-byte key: $tok_ok token/cache-step requests ($tok_token token), $tok_other others"
fi
if grep -q 'op=tls12-prf key=read16 result=ok step=value' "$T/p11pskd.log"; then
    pass "readable 16-byte key served from its value"
else
    fail "readable 16-byte key: no step=value request logged"
fi
finish
