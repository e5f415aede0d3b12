#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# allow-psk-ke = no must refuse TLS 1.3 psk_ke however the client spells "no (EC)DHE": an
# EXTRACT without IKM, and one whose IKM is all zero bytes (what OpenSSL passes for psk_ke).
# A non-zero IKM on the same handle is the control that the key is served.
. "$(dirname "$0")/lib.sh"
setup_token
BASE=$(cat "$T/p11pskd.conf")
PROBE=$BIN/p11psk-wireprobe
SOCK=$T/p11psk.sock
REFUSAL='TLS 1.3 psk_ke (PSK without (EC)DHE) is refused by allow-psk-ke = no'

with_policy() {
    stop_daemon
    { printf '%s\n' "$BASE"; printf '%s\n' "$@"; } >"$T/p11pskd.conf"
    start_daemon
}

# field TAG-HEX VALUE-HEX: tag, u16 length, value.
field() { printf '%s%04x%s' "$1" $((${#2} / 2)) "$2"; }
# frame BODY-HEX: u32 length header and body.
frame() { printf '%08x%s' $((${#1} / 2)) "$1"; }
# zeros N: N zero bytes as hex (N may be 0).
zeros() { [ "$1" -gt 0 ] && printf '00%.0s' $(seq "$1"); true; }

import_aes k32 "$(rand_hex_importable 32)"
psk=$(handle_of k32)
[ ${#psk} = 96 ] || die "handle_of printed '$psk'"

# Since handles v2 the provider keeps early-secret placeholders to itself and sends p11pskd
# the PSK handle with the digest, so EXTRACT takes the PSK handle (binary) for both digests.
es256=$psk
es384=$psk

# extract MD-ID PSK-HANDLE [IKM-HEX]: a TLS13_EXTRACT frame ("tls13 " "derived").
extract() {
    local body
    body=0112$(field 01 "$(printf '%02x' "$1")")$(field 02 "$2")$(field 03 746c73313320)
    body+=$(field 04 64657269766564)
    [ $# -ge 3 ] && body+=$(field 06 "$3")
    frame "$body"
}

# probe NAME WANT-STATUS WANT-MSG-SUBSTRING FRAME
probe() {
    local name=$1 want=$2 text=$3 got
    got=$(timeout 20 "$PROBE" "$SOCK" "$4" | head -n 1)
    case $got in
    "status=$want msg="*"$text"*) pass "$name: $got" ;;
    *) fail "$name: got '$got', want status=$want with '$text'" ;;
    esac
}

with_policy # default: allow-psk-ke = no
probe "SHA256, IKM = 32 non-zero bytes: served" ok "" "$(extract 1 "$es256" "$(printf '01%.0s' $(seq 32))")"
probe "SHA384, IKM = 48 non-zero bytes: served" ok "" "$(extract 2 "$es384" "$(printf 'a5%.0s' $(seq 48))")"
probe "IKM absent: refused" "refused by policy" "$REFUSAL" "$(extract 1 "$es256")"
probe "SHA256, IKM = 32 zero bytes: refused" "refused by policy" "$REFUSAL" \
    "$(extract 1 "$es256" "$(zeros 32)")"
probe "SHA384, IKM = 48 zero bytes: refused" "refused by policy" "$REFUSAL" \
    "$(extract 2 "$es384" "$(zeros 48)")"
probe "IKM zero but for its last byte: served" ok "" "$(extract 1 "$es256" "$(zeros 31)01")"
if grep 'op=tls13-extract' "$T/p11pskd.log" | grep -q 'result=refused-by-policy reason="TLS 1.3 psk_ke'; then
    pass "refusal logged as refused-by-policy with the reason"
else
    fail "refusal not logged: $(grep 'op=tls13-extract' "$T/p11pskd.log" | tail -n 2)"
fi

with_policy "allow-psk-ke = yes"
probe "allow-psk-ke = yes: IKM = 32 zero bytes served" ok "" "$(extract 1 "$es256" "$(zeros 32)")"
finish
