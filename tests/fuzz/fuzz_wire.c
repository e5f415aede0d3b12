/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness: the wire decoder as p11pskd and the clients run it on untrusted bytes.
 * The input is a frame (4-byte header ‖ body); the header is decoded as conn_read does,
 * the body parsed, every getter called, the body checked against its operation's row of the
 * table (ops.h) as the daemon does, and a parsed body re-encoded and parsed again.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "p11psk/ops.h"
#include "p11psk/wire.h"

#define CHECK(c) ((c) ? (void)0 : abort())

static void getters(const p11psk_msg *m)
{
    char s[64];
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    int tag;

    /* Out-of-range tags included: the getters must refuse them without reading. */
    for (tag = -1; tag <= P11PSK_T_MAX_ + 1; tag++) {
        int ok8 = p11psk_msg_u8(m, tag, &u8) == P11PSK_WIRE_OK,
            ok16 = p11psk_msg_u16(m, tag, &u16) == P11PSK_WIRE_OK,
            ok32 = p11psk_msg_u32(m, tag, &u32) == P11PSK_WIRE_OK;

        if (tag <= 0 || tag >= P11PSK_T_MAX_) {
            CHECK(!ok8 && !ok16 && !ok32);
            p11psk_msg_str(m, tag, s, sizeof(s));
            CHECK(s[0] == '\0');
            continue;
        }
        CHECK(ok8 == (m->f[tag].present && m->f[tag].len == 1));
        CHECK(ok16 == (m->f[tag].present && m->f[tag].len == 2));
        CHECK(ok32 == (m->f[tag].present && m->f[tag].len == 4));
        p11psk_msg_str(m, tag, s, sizeof(s));
        CHECK(strlen(s) == (m->f[tag].len < sizeof(s) - 1 ? m->f[tag].len : sizeof(s) - 1));
        p11psk_msg_str(m, tag, s, 1);
        CHECK(s[0] == '\0');
        p11psk_msg_str(m, tag, s, 0); /* must not write */
    }
    (void)p11psk_status_str(m->code);
    (void)p11psk_op_str(m->code);
}

/* The validator against the row of m's code: a result in range, a reason when it refuses,
 * and an accepted body holds every required field and no field the row does not list. */
static void validate(const p11psk_msg *m)
{
    const p11psk_op_info *op = p11psk_op_find(m->code);
    uint8_t listed[P11PSK_T_MAX_] = {0};
    char why[128] = "";
    size_t i;
    int rc, tag;

    CHECK((op == NULL) == (p11psk_op_index(m->code) == p11psk_ops_n));
    if (op == NULL)
        return;
    rc = p11psk_op_validate(op, m, why, sizeof(why));
    CHECK(rc <= P11PSK_FIELD_OK && rc >= P11PSK_FIELD_FORBIDDEN);
    CHECK((rc == P11PSK_FIELD_OK) == (why[0] == '\0'));
    if (rc != P11PSK_FIELD_OK)
        return;
    for (i = 0; i < P11PSK_OP_FIELDS_MAX && op->fields[i].tag != 0; i++) {
        listed[op->fields[i].tag] = 1;
        if (op->fields[i].required)
            CHECK(m->f[op->fields[i].tag].present);
    }
    for (tag = 1; tag < P11PSK_T_MAX_; tag++)
        CHECK(!m->f[tag].present || listed[tag]);
}

/* A successful parse re-encodes (fields in tag order) to a body of the same size that
 * parses to the same fields. */
static void roundtrip(const uint8_t *body, size_t len, const p11psk_msg *m)
{
    static p11psk_frame fr;
    p11psk_msg m2;
    size_t n, blen;
    int tag;

    for (tag = 1; tag < P11PSK_T_MAX_; tag++)
        if (m->f[tag].present)
            CHECK(m->f[tag].p >= body + 2 && m->f[tag].p + m->f[tag].len <= body + len);
    p11psk_frame_start(&fr, m->code);
    for (tag = 1; tag < P11PSK_T_MAX_; tag++)
        if (m->f[tag].present)
            p11psk_frame_add(&fr, (uint8_t)tag, m->f[tag].p, m->f[tag].len);
    n = p11psk_frame_finish(&fr);
    CHECK(n == P11PSK_WIRE_HDR + len);
    CHECK(p11psk_wire_header(fr.buf, &blen) == P11PSK_WIRE_OK && blen == len);
    CHECK(p11psk_msg_parse(fr.buf + P11PSK_WIRE_HDR, blen, &m2) == P11PSK_WIRE_OK);
    CHECK(m2.version == m->version && m2.code == m->code);
    for (tag = 1; tag < P11PSK_T_MAX_; tag++) {
        CHECK(m2.f[tag].present == m->f[tag].present && m2.f[tag].len == m->f[tag].len);
        if (m->f[tag].present && m->f[tag].len > 0)
            CHECK(memcmp(m2.f[tag].p, m->f[tag].p, m->f[tag].len) == 0);
    }
    p11psk_frame_cleanse(&fr);
}

static void parse_body(const uint8_t *body, size_t len)
{
    p11psk_msg m;
    int rc = p11psk_msg_parse(body, len, &m);

    (void)p11psk_wire_strerror(rc);
    CHECK(rc <= P11PSK_WIRE_OK && rc >= P11PSK_WIRE_DUPLICATE);
    if (len > P11PSK_WIRE_MAX)
        CHECK(rc == P11PSK_WIRE_TOO_LARGE);
    if (rc != P11PSK_WIRE_OK)
        return;
    CHECK(len >= 2 && m.version == P11PSK_WIRE_VERSION);
    getters(&m);
    validate(&m);
    roundtrip(body, len, &m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t bodylen = 0;
    uint8_t *body;
    int rc;

    if (size < P11PSK_WIRE_HDR) {
        parse_body(data, size);
        return 0;
    }
    rc = p11psk_wire_header(data, &bodylen);
    CHECK(rc == P11PSK_WIRE_OK || rc == P11PSK_WIRE_TOO_LARGE || rc == P11PSK_WIRE_TRUNCATED);
    if (rc == P11PSK_WIRE_OK) {
        CHECK(bodylen >= 2 && bodylen <= P11PSK_WIRE_MAX);
        /* As the daemon does: exactly bodylen bytes, in a heap copy so ASan sees overreads. */
        if (bodylen <= size - P11PSK_WIRE_HDR) {
            body = malloc(bodylen);
            CHECK(body != NULL);
            memcpy(body, data + P11PSK_WIRE_HDR, bodylen);
            parse_body(body, bodylen);
            free(body);
        }
    }
    /* And the rest of the input as a body of whatever length it has. */
    body = malloc(size - P11PSK_WIRE_HDR + 1);
    CHECK(body != NULL);
    memcpy(body, data + P11PSK_WIRE_HDR, size - P11PSK_WIRE_HDR);
    parse_body(body, size - P11PSK_WIRE_HDR);
    free(body);
    return 0;
}
