#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# TLS 1.3 PSK handshakes: openssl s_client/s_server on a handle against a raw-key peer with no
# provider, in both directions and with handles on both sides; SHA-256 and SHA-384 suites;
# keys provisioned with softhsm2-util --import --aes and with `p11psk add`.
. "$(dirname "$0")/lib.sh"
setup_token
start_daemon

raw_imp=$(rand_hex_importable 32)
import_aes imported "$raw_imp"
h_imp=$(handle_of imported)
raw_add=$(rand_hex 48)
h_add=$(add_hex added "$raw_add")
[[ ${#h_imp} -eq 96 && ${#h_add} -eq 96 ]] || die "handles are not 48 bytes of hex"

for k in imp add; do
    raw=raw_$k
    h=h_$k
    suite=TLS_AES_128_GCM_SHA256
    o=(-tls1_3 -ciphersuites "$suite")
    expect_ok "tls13 $suite $k: client handle, server raw" raw "${!raw}" handle "${!h}" "${o[@]}"
    expect_ok "tls13 $suite $k: server handle, client raw" handle "${!h}" raw "${!raw}" "${o[@]}"
    expect_ok_both "tls13 $suite $k: handles on both sides" handle "${!h}" handle "${!h}" "${o[@]}"
done

# SHA-384: `-psk` always makes a SHA-256 session, so use session files written by a helper.
for k in imp add; do
    raw=raw_$k
    h=h_$k
    "$BIN/p11psk-mksess" TLS_AES_256_GCM_SHA384 "${!raw}" "$T/raw.pem"
    "$BIN/p11psk-mksess" TLS_AES_256_GCM_SHA384 "${!h}" "$T/handle.pem"
    o=(-tls1_3 -ciphersuites TLS_AES_256_GCM_SHA384)
    expect_ok "tls13 SHA384 $k: client handle, server raw" \
        raw "session:$T/raw.pem" handle "session:$T/handle.pem" "${o[@]}"
    expect_ok "tls13 SHA384 $k: server handle, client raw" \
        handle "session:$T/handle.pem" raw "session:$T/raw.pem" "${o[@]}"
    expect_ok_both "tls13 SHA384 $k: handles on both sides" \
        handle "session:$T/handle.pem" handle "session:$T/handle.pem" "${o[@]}"
done
finish
