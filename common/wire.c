/* SPDX-License-Identifier: Apache-2.0 */
#include "p11psk/wire.h"

#include <openssl/crypto.h>
#include <string.h>

void p11psk_frame_start(p11psk_frame *fr, uint8_t code)
{
    p11psk_wbuf_init(&fr->w, fr->buf, sizeof(fr->buf));
    p11psk_wbuf_u32(&fr->w, 0); /* length, filled in by finish */
    p11psk_wbuf_u8(&fr->w, P11PSK_WIRE_VERSION);
    p11psk_wbuf_u8(&fr->w, code);
}

void p11psk_frame_add(p11psk_frame *fr, uint8_t tag, const void *p, size_t len)
{
    if (len > UINT16_MAX) {
        fr->w.err = 1;
        return;
    }
    p11psk_wbuf_u8(&fr->w, tag);
    p11psk_wbuf_u16(&fr->w, (uint16_t)len);
    p11psk_wbuf_bytes(&fr->w, p, len);
}

void p11psk_frame_add_u8(p11psk_frame *fr, uint8_t tag, uint8_t v)
{
    p11psk_frame_add(fr, tag, &v, 1);
}

void p11psk_frame_add_u16(p11psk_frame *fr, uint8_t tag, uint16_t v)
{
    uint8_t b[2];

    p11psk_store_be16(b, v);
    p11psk_frame_add(fr, tag, b, 2);
}

void p11psk_frame_add_u32(p11psk_frame *fr, uint8_t tag, uint32_t v)
{
    uint8_t b[4];

    p11psk_store_be32(b, v);
    p11psk_frame_add(fr, tag, b, 4);
}

void p11psk_frame_add_str(p11psk_frame *fr, uint8_t tag, const char *s)
{
    p11psk_frame_add(fr, tag, s, s != NULL ? strlen(s) : 0);
}

size_t p11psk_frame_finish(p11psk_frame *fr)
{
    if (fr->w.err || fr->w.len - P11PSK_WIRE_HDR > P11PSK_WIRE_MAX)
        return 0;
    p11psk_store_be32(fr->buf, (uint32_t)(fr->w.len - P11PSK_WIRE_HDR));
    return fr->w.len;
}

void p11psk_frame_cleanse(p11psk_frame *fr)
{
    /* Only what was written can hold secrets; an overflowed frame may have written it all. */
    OPENSSL_cleanse(fr->buf,
                    fr->w.err || fr->w.len > sizeof(fr->buf) ? sizeof(fr->buf) : fr->w.len);
    fr->w.len = 0;
}

int p11psk_wire_header(const uint8_t *hdr, size_t *bodylen)
{
    uint32_t n = p11psk_load_be32(hdr);

    if (n > P11PSK_WIRE_MAX)
        return P11PSK_WIRE_TOO_LARGE;
    if (n < 2)
        return P11PSK_WIRE_TRUNCATED;
    *bodylen = n;
    return P11PSK_WIRE_OK;
}

int p11psk_msg_parse(const uint8_t *body, size_t len, p11psk_msg *m)
{
    p11psk_rbuf r;

    memset(m, 0, sizeof(*m));
    if (len > P11PSK_WIRE_MAX)
        return P11PSK_WIRE_TOO_LARGE;
    p11psk_rbuf_init(&r, body, len);
    m->version = p11psk_rbuf_u8(&r);
    m->code = p11psk_rbuf_u8(&r);
    if (r.err)
        return P11PSK_WIRE_TRUNCATED;
    if (m->version != P11PSK_WIRE_VERSION)
        return P11PSK_WIRE_BAD_VERSION;
    while (p11psk_rbuf_left(&r) > 0) {
        uint8_t tag = p11psk_rbuf_u8(&r);
        uint16_t flen = p11psk_rbuf_u16(&r);
        const uint8_t *p = p11psk_rbuf_bytes(&r, flen);

        if (r.err)
            return P11PSK_WIRE_TRUNCATED;
        if (tag == 0 || tag >= P11PSK_T_MAX_)
            return P11PSK_WIRE_BAD_TAG;
        if (m->f[tag].present)
            return P11PSK_WIRE_DUPLICATE;
        m->f[tag].p = p;
        m->f[tag].len = flen;
        m->f[tag].present = 1;
    }
    return P11PSK_WIRE_OK;
}

const char *p11psk_wire_strerror(int rc)
{
    switch (rc) {
    case P11PSK_WIRE_OK:
        return "ok";
    case P11PSK_WIRE_TRUNCATED:
        return "truncated message";
    case P11PSK_WIRE_TOO_LARGE:
        return "message too large";
    case P11PSK_WIRE_BAD_VERSION:
        return "unsupported protocol version";
    case P11PSK_WIRE_BAD_TAG:
        return "unknown field";
    case P11PSK_WIRE_DUPLICATE:
        return "duplicate field";
    case P11PSK_WIRE_NO_FIELD:
        return "field absent or of another size";
    }
    return "malformed message";
}

int p11psk_msg_u8(const p11psk_msg *m, int tag, uint8_t *v)
{
    if (tag <= 0 || tag >= P11PSK_T_MAX_ || !m->f[tag].present || m->f[tag].len != 1)
        return P11PSK_WIRE_NO_FIELD;
    *v = m->f[tag].p[0];
    return P11PSK_WIRE_OK;
}

int p11psk_msg_u16(const p11psk_msg *m, int tag, uint16_t *v)
{
    if (tag <= 0 || tag >= P11PSK_T_MAX_ || !m->f[tag].present || m->f[tag].len != 2)
        return P11PSK_WIRE_NO_FIELD;
    *v = p11psk_load_be16(m->f[tag].p);
    return P11PSK_WIRE_OK;
}

int p11psk_msg_u32(const p11psk_msg *m, int tag, uint32_t *v)
{
    if (tag <= 0 || tag >= P11PSK_T_MAX_ || !m->f[tag].present || m->f[tag].len != 4)
        return P11PSK_WIRE_NO_FIELD;
    *v = p11psk_load_be32(m->f[tag].p);
    return P11PSK_WIRE_OK;
}

void p11psk_msg_str(const p11psk_msg *m, int tag, char *out, size_t cap)
{
    size_t i, n = 0;

    if (cap == 0)
        return;
    if (tag > 0 && tag < P11PSK_T_MAX_ && m->f[tag].present) {
        n = m->f[tag].len < cap - 1 ? m->f[tag].len : cap - 1;
        for (i = 0; i < n; i++) {
            uint8_t c = m->f[tag].p[i];

            out[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
        }
    }
    out[n] = '\0';
}

const char *p11psk_status_str(int st)
{
    switch (st) {
    case P11PSK_ST_OK:
        return "ok";
    case P11PSK_ST_BAD_REQUEST:
        return "bad request";
    case P11PSK_ST_BAD_HANDLE:
        return "bad handle";
    case P11PSK_ST_NOT_FOUND:
        return "key not found";
    case P11PSK_ST_ACCESS_DENIED:
        return "access denied";
    case P11PSK_ST_TOKEN:
        return "token error";
    case P11PSK_ST_NEED_READABLE:
        return "key value needed but key is not readable";
    case P11PSK_ST_UNSUPPORTED:
        return "unsupported";
    case P11PSK_ST_POLICY:
        return "refused by policy";
    case P11PSK_ST_UNAVAILABLE:
        return "token unavailable";
    case P11PSK_ST_INTERNAL:
        return "internal error";
    }
    return "unknown status";
}
