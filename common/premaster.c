/* SPDX-License-Identifier: Apache-2.0 */
#include "p11psk/premaster.h"

#include "p11psk/buf.h"

int p11psk_premaster_split(const uint8_t *buf, size_t len, const uint8_t **other, size_t *otherlen,
                           const uint8_t **psk, size_t *psklen)
{
    size_t n, m;

    if (buf == NULL || len < 4)
        return -1;
    n = p11psk_load_be16(buf);
    if (n > len - 4) /* room for other(n) and the second length field */
        return -1;
    m = p11psk_load_be16(buf + 2 + n);
    if (m != len - 4 - n)
        return -1;
    *other = buf + 2;
    *otherlen = n;
    *psk = buf + 4 + n;
    *psklen = m;
    return 0;
}
