/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TLS 1.0-1.2 PSK premaster secrets (RFC 4279 section 2, RFC 5489 section 2):
 *   u16 n ‖ other(n) ‖ u16 m ‖ psk(m)
 * Plain PSK has other = n zero bytes (n = m); (EC)DHE-PSK and RSA-PSK put the shared
 * secret there. Shared by the provider (TLS1-PRF) and the fuzzer.
 */
#ifndef P11PSK_PREMASTER_H
#define P11PSK_PREMASTER_H

#include <stddef.h>
#include <stdint.h>

/*
 * Splits buf (len bytes) into its two parts. Returns 0 with other, otherlen, psk and
 * psklen set (the pointers point into buf), or -1 (outputs untouched) when buf has another shape:
 * NULL, shorter than the two length fields, or lengths that do not add up to len exactly.
 * Never reads past len.
 */
int p11psk_premaster_split(const uint8_t *buf, size_t len, const uint8_t **other, size_t *otherlen,
                           const uint8_t **psk, size_t *psklen);

#endif
