/* SPDX-License-Identifier: Apache-2.0 */
/* Bounded byte buffers: every wire message is built and parsed through these. */
#ifndef P11PSK_BUF_H
#define P11PSK_BUF_H

#include <stddef.h>
#include <stdint.h>

/* Reader over caller-owned memory. Any short read sets err and sticks. */
typedef struct {
    const uint8_t *p;
    size_t len;
    size_t off;
    int err;
} p11psk_rbuf;

/* Writer into caller-owned memory of fixed capacity. Overflow sets err and sticks. */
typedef struct {
    uint8_t *p;
    size_t cap;
    size_t len;
    int err;
} p11psk_wbuf;

void p11psk_rbuf_init(p11psk_rbuf *r, const uint8_t *p, size_t len);
size_t p11psk_rbuf_left(const p11psk_rbuf *r);
uint8_t p11psk_rbuf_u8(p11psk_rbuf *r);
uint16_t p11psk_rbuf_u16(p11psk_rbuf *r);
uint32_t p11psk_rbuf_u32(p11psk_rbuf *r);
/* Returns a pointer into the buffer, or NULL (and err) if fewer than n bytes remain. */
const uint8_t *p11psk_rbuf_bytes(p11psk_rbuf *r, size_t n);

void p11psk_wbuf_init(p11psk_wbuf *w, uint8_t *p, size_t cap);
void p11psk_wbuf_u8(p11psk_wbuf *w, uint8_t v);
void p11psk_wbuf_u16(p11psk_wbuf *w, uint16_t v);
void p11psk_wbuf_u32(p11psk_wbuf *w, uint32_t v);
void p11psk_wbuf_bytes(p11psk_wbuf *w, const void *p, size_t n);

/* True if all n bytes are zero; time independent of the data (inputs may be secrets). */
int p11psk_buf_is_zero(const uint8_t *p, size_t n);

/* Big-endian helpers for fixed-offset fields. */
uint16_t p11psk_load_be16(const uint8_t *p);
uint32_t p11psk_load_be32(const uint8_t *p);
void p11psk_store_be16(uint8_t *p, uint16_t v);
void p11psk_store_be32(uint8_t *p, uint32_t v);

#endif
