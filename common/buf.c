/* SPDX-License-Identifier: Apache-2.0 */
#include "p11psk/buf.h"

#include <string.h>

uint16_t p11psk_load_be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

uint32_t p11psk_load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

void p11psk_store_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

void p11psk_store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

void p11psk_rbuf_init(p11psk_rbuf *r, const uint8_t *p, size_t len)
{
    r->p = p;
    r->len = p != NULL ? len : 0;
    r->off = 0;
    r->err = 0;
}

size_t p11psk_rbuf_left(const p11psk_rbuf *r)
{
    return r->err ? 0 : r->len - r->off;
}

const uint8_t *p11psk_rbuf_bytes(p11psk_rbuf *r, size_t n)
{
    const uint8_t *p;

    if (r->err || n > r->len - r->off) {
        r->err = 1;
        return NULL;
    }
    p = r->p + r->off;
    r->off += n;
    return p;
}

uint8_t p11psk_rbuf_u8(p11psk_rbuf *r)
{
    const uint8_t *p = p11psk_rbuf_bytes(r, 1);

    return p != NULL ? p[0] : 0;
}

uint16_t p11psk_rbuf_u16(p11psk_rbuf *r)
{
    const uint8_t *p = p11psk_rbuf_bytes(r, 2);

    return p != NULL ? p11psk_load_be16(p) : 0;
}

uint32_t p11psk_rbuf_u32(p11psk_rbuf *r)
{
    const uint8_t *p = p11psk_rbuf_bytes(r, 4);

    return p != NULL ? p11psk_load_be32(p) : 0;
}

void p11psk_wbuf_init(p11psk_wbuf *w, uint8_t *p, size_t cap)
{
    w->p = p;
    w->cap = p != NULL ? cap : 0;
    w->len = 0;
    w->err = 0;
}

void p11psk_wbuf_bytes(p11psk_wbuf *w, const void *p, size_t n)
{
    if (w->err || n > w->cap - w->len) {
        w->err = 1;
        return;
    }
    if (n > 0)
        memcpy(w->p + w->len, p, n);
    w->len += n;
}

void p11psk_wbuf_u8(p11psk_wbuf *w, uint8_t v)
{
    p11psk_wbuf_bytes(w, &v, 1);
}

void p11psk_wbuf_u16(p11psk_wbuf *w, uint16_t v)
{
    uint8_t b[2];

    p11psk_store_be16(b, v);
    p11psk_wbuf_bytes(w, b, 2);
}

void p11psk_wbuf_u32(p11psk_wbuf *w, uint32_t v)
{
    uint8_t b[4];

    p11psk_store_be32(b, v);
    p11psk_wbuf_bytes(w, b, 4);
}

int p11psk_buf_is_zero(const uint8_t *p, size_t n)
{
    uint8_t acc = 0;

    while (n-- > 0)
        acc |= *p++;
    return acc == 0;
}
