/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness: the TLS 1.2 PSK premaster parser the provider runs on libssl's
 * TLS1-PRF secret (u16 n ‖ other ‖ u16 m ‖ psk), then the handle check it does on psk.
 * Also builds a premaster from two pieces of the input and checks it splits back.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "p11psk/buf.h"
#include "p11psk/handle.h"
#include "p11psk/premaster.h"

#define CHECK(c) ((c) ? (void)0 : abort())

static void split_checked(const uint8_t *buf, size_t len)
{
    static const uint8_t sentinel = 0;
    const uint8_t *other = &sentinel, *psk = &sentinel;
    size_t otherlen = 77, psklen = 77;
    p11psk_handle h;

    if (p11psk_premaster_split(buf, len, &other, &otherlen, &psk, &psklen) != 0) {
        CHECK(other == &sentinel && psk == &sentinel && otherlen == 77 && psklen == 77);
        return;
    }
    CHECK(len >= 4 && otherlen + psklen + 4 == len);
    CHECK(other == buf + 2 && psk == buf + 4 + otherlen);
    CHECK(p11psk_load_be16(buf) == otherlen && p11psk_load_be16(buf + 2 + otherlen) == psklen);
    /* What the provider does next with psk. */
    if (p11psk_handle_has_magic(psk, psklen))
        (void)p11psk_handle_decode(psk, psklen, &h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf;
    size_t cut, n, m;

    /* As given, in an exact-size heap copy so ASan sees any overread. */
    buf = malloc(size ? size : 1);
    CHECK(buf != NULL);
    if (size)
        memcpy(buf, data, size);
    split_checked(size ? buf : NULL, size);
    free(buf);

    /* other = data[1..1+cut), psk = the rest: must split back into exactly those. */
    if (size < 1)
        return 0;
    cut = data[0] % size;
    n = cut;
    m = size - 1 - cut > UINT16_MAX ? UINT16_MAX : size - 1 - cut;
    buf = malloc(4 + n + m);
    CHECK(buf != NULL);
    p11psk_store_be16(buf, (uint16_t)n);
    memcpy(buf + 2, data + 1, n);
    p11psk_store_be16(buf + 2 + n, (uint16_t)m);
    memcpy(buf + 4 + n, data + 1 + n, m);
    {
        const uint8_t *o, *p;
        size_t ol, pl;

        CHECK(p11psk_premaster_split(buf, 4 + n + m, &o, &ol, &p, &pl) == 0);
        CHECK(ol == n && pl == m && memcmp(o, data + 1, n) == 0 && memcmp(p, data + 1 + n, m) == 0);
        /* One byte more or less is another shape. */
        CHECK(p11psk_premaster_split(buf, 3 + n + m, &o, &ol, &p, &pl) < 0);
    }
    free(buf);
    return 0;
}
