/* SPDX-License-Identifier: Apache-2.0 */
/* Wire protocol encode, decode and reject, including truncated and oversized frames. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "p11psk/ops.h"
#include "p11psk/wire.h"
#include "unit.h"

static size_t build_request(p11psk_frame *fr)
{
    static const uint8_t handle[32] = {1, 2, 3};

    p11psk_frame_start(fr, P11PSK_OP_TLS12_PRF);
    p11psk_frame_add_u8(fr, P11PSK_T_DIGEST, 1);
    p11psk_frame_add(fr, P11PSK_T_HANDLE, handle, sizeof(handle));
    p11psk_frame_add(fr, P11PSK_T_OTHER, NULL, 0);
    p11psk_frame_add_str(fr, P11PSK_T_SEED, "master secret");
    p11psk_frame_add_u16(fr, P11PSK_T_OUTLEN, 48);
    return p11psk_frame_finish(fr);
}

START_TEST(roundtrip)
{
    p11psk_frame fr;
    p11psk_msg m;
    size_t n = build_request(&fr), body;
    uint8_t d;
    uint16_t outlen;

    ck_assert_uint_gt(n, P11PSK_WIRE_HDR);
    ck_assert_int_eq(p11psk_wire_header(fr.buf, &body), P11PSK_WIRE_OK);
    ck_assert_uint_eq(body, n - P11PSK_WIRE_HDR);
    ck_assert_int_eq(p11psk_msg_parse(fr.buf + P11PSK_WIRE_HDR, body, &m), P11PSK_WIRE_OK);
    ck_assert_int_eq(m.code, P11PSK_OP_TLS12_PRF);
    ck_assert_int_eq(p11psk_msg_u8(&m, P11PSK_T_DIGEST, &d), P11PSK_WIRE_OK);
    ck_assert_int_eq(d, 1);
    ck_assert_int_eq(p11psk_msg_u16(&m, P11PSK_T_OUTLEN, &outlen), P11PSK_WIRE_OK);
    ck_assert_int_eq(outlen, 48);
    ck_assert_int_eq(m.f[P11PSK_T_HANDLE].len, 32);
    ck_assert(m.f[P11PSK_T_OTHER].present);
    ck_assert_int_eq(m.f[P11PSK_T_OTHER].len, 0);
    ck_assert(!m.f[P11PSK_T_DATA].present);
    /* Wrong-size typed reads fail. */
    ck_assert_int_eq(p11psk_msg_u16(&m, P11PSK_T_DIGEST, &outlen), P11PSK_WIRE_NO_FIELD);
    p11psk_frame_cleanse(&fr);
}
END_TEST

START_TEST(every_truncation_rejected)
{
    p11psk_frame fr;
    p11psk_msg m;
    size_t n = build_request(&fr), body = n - P11PSK_WIRE_HDR;

    for (size_t cut = 0; cut < body; cut++) {
        int rc = p11psk_msg_parse(fr.buf + P11PSK_WIRE_HDR, cut, &m);

        /* Cuts on a field boundary parse as a shorter message; all others must fail. */
        if (rc == P11PSK_WIRE_OK)
            ck_assert(!m.f[P11PSK_T_OUTLEN].present);
        else
            ck_assert_int_eq(rc, P11PSK_WIRE_TRUNCATED);
    }
}
END_TEST

START_TEST(oversized)
{
    p11psk_frame fr;
    uint8_t hdr[4], big[P11PSK_WIRE_MAX + 1];
    size_t body;
    p11psk_msg m;

    p11psk_store_be32(hdr, P11PSK_WIRE_MAX + 1);
    ck_assert_int_eq(p11psk_wire_header(hdr, &body), P11PSK_WIRE_TOO_LARGE);
    p11psk_store_be32(hdr, 0xffffffffu);
    ck_assert_int_eq(p11psk_wire_header(hdr, &body), P11PSK_WIRE_TOO_LARGE);
    p11psk_store_be32(hdr, 1);
    ck_assert_int_eq(p11psk_wire_header(hdr, &body), P11PSK_WIRE_TRUNCATED);
    memset(big, 0, sizeof(big));
    ck_assert_int_eq(p11psk_msg_parse(big, sizeof(big), &m), P11PSK_WIRE_TOO_LARGE);

    /* The builder refuses to exceed the maximum rather than writing past it. */
    p11psk_frame_start(&fr, P11PSK_OP_PING);
    p11psk_frame_add(&fr, P11PSK_T_DATA, big, 60000);
    ck_assert_uint_eq(p11psk_frame_finish(&fr), 0);
    p11psk_frame_start(&fr, P11PSK_OP_PING);
    p11psk_frame_add(&fr, P11PSK_T_DATA, big, P11PSK_WIRE_MAX - 2 - 3);
    ck_assert_uint_eq(p11psk_frame_finish(&fr), P11PSK_WIRE_HDR + P11PSK_WIRE_MAX);
    p11psk_frame_add_u8(&fr, P11PSK_T_DIGEST, 1);
    ck_assert_uint_eq(p11psk_frame_finish(&fr), 0);
}
END_TEST

START_TEST(bad_version_tag_duplicate)
{
    uint8_t body[16];
    p11psk_msg m;

    body[0] = 2;
    body[1] = P11PSK_OP_PING;
    ck_assert_int_eq(p11psk_msg_parse(body, 2, &m), P11PSK_WIRE_BAD_VERSION);
    body[0] = P11PSK_WIRE_VERSION;
    ck_assert_int_eq(p11psk_msg_parse(body, 1, &m), P11PSK_WIRE_TRUNCATED);
    ck_assert_int_eq(p11psk_msg_parse(body, 2, &m), P11PSK_WIRE_OK);
    /* Unknown tag. */
    body[2] = 200;
    body[3] = 0;
    body[4] = 0;
    ck_assert_int_eq(p11psk_msg_parse(body, 5, &m), P11PSK_WIRE_BAD_TAG);
    body[2] = 0;
    ck_assert_int_eq(p11psk_msg_parse(body, 5, &m), P11PSK_WIRE_BAD_TAG);
    /* Duplicate tag. */
    body[2] = P11PSK_T_DIGEST;
    body[3] = 0;
    body[4] = 1;
    body[5] = 1;
    memcpy(body + 6, body + 2, 4);
    ck_assert_int_eq(p11psk_msg_parse(body, 10, &m), P11PSK_WIRE_DUPLICATE);
    /* Field length running past the end. */
    body[4] = 9;
    ck_assert_int_eq(p11psk_msg_parse(body, 6, &m), P11PSK_WIRE_TRUNCATED);
}
END_TEST

START_TEST(text_field_sanitised)
{
    p11psk_frame fr;
    p11psk_msg m;
    char out[8];
    size_t n;

    p11psk_frame_start(&fr, P11PSK_ST_NOT_FOUND);
    p11psk_frame_add(&fr, P11PSK_T_MSG, "a\nb\x01longer", 11);
    n = p11psk_frame_finish(&fr);
    ck_assert_int_eq(p11psk_msg_parse(fr.buf + 4, n - 4, &m), P11PSK_WIRE_OK);
    p11psk_msg_str(&m, P11PSK_T_MSG, out, sizeof(out));
    ck_assert_str_eq(out, "a?b?lon");
    p11psk_msg_str(&m, P11PSK_T_INFO, out, sizeof(out));
    ck_assert_str_eq(out, "");
    ck_assert_str_eq(p11psk_status_str(P11PSK_ST_ACCESS_DENIED), "access denied");
}
END_TEST

/* Parses a finished frame into m (the frame must stay alive while m is used). */
static void parse_frame(p11psk_frame *fr, p11psk_msg *m)
{
    size_t n = p11psk_frame_finish(fr);

    ck_assert_uint_gt(n, P11PSK_WIRE_HDR);
    ck_assert_int_eq(p11psk_msg_parse(fr->buf + P11PSK_WIRE_HDR, n - P11PSK_WIRE_HDR, m),
                     P11PSK_WIRE_OK);
}

START_TEST(op_table_consistent)
{
    size_t i, j, k;

    for (i = 0; i < p11psk_ops_n; i++) {
        const p11psk_op_info *op = &p11psk_ops[i];

        ck_assert_ptr_nonnull(op->name);
        ck_assert_ptr_nonnull(op->what);
        ck_assert_uint_eq(p11psk_op_index(op->code), i);
        ck_assert_ptr_eq(p11psk_op_find(op->code), op);
        ck_assert_str_eq(p11psk_op_str(op->code), op->name);
        ck_assert_str_eq(p11psk_op_slot_name(i), op->name);
        ck_assert(op->answer > 0 && op->answer < P11PSK_T_MAX_);
        for (j = i + 1; j < p11psk_ops_n; j++) {
            ck_assert_uint_ne(op->code, p11psk_ops[j].code);
            ck_assert_str_ne(op->name, p11psk_ops[j].name);
        }
        for (j = 0; j < P11PSK_OP_FIELDS_MAX && op->fields[j].tag != 0; j++) {
            ck_assert(op->fields[j].tag < P11PSK_T_MAX_);
            ck_assert_uint_le(op->fields[j].minlen, op->fields[j].maxlen);
            ck_assert_str_ne(p11psk_tag_str(op->fields[j].tag), "unknown");
            for (k = j + 1; k < P11PSK_OP_FIELDS_MAX && op->fields[k].tag != 0; k++)
                ck_assert_uint_ne(op->fields[j].tag, op->fields[k].tag);
        }
    }
    ck_assert_uint_eq(p11psk_op_index(0x7f), p11psk_ops_n);
    ck_assert_ptr_null(p11psk_op_find(0x7f));
    ck_assert_str_eq(p11psk_op_str(0x7f), "unknown");
    ck_assert_str_eq(p11psk_op_slot_name(p11psk_ops_n), "other");
    ck_assert_str_eq(p11psk_tag_str(P11PSK_T_PREFIX), "PREFIX");
    ck_assert_str_eq(p11psk_tag_str(0), "unknown");
}
END_TEST

START_TEST(op_validate)
{
    const p11psk_op_info *prf = p11psk_op_find(P11PSK_OP_TLS12_PRF);
    const p11psk_op_info *expand = p11psk_op_find(P11PSK_OP_TLS13_EXPAND);
    const p11psk_op_info *flush = p11psk_op_find(P11PSK_OP_FLUSH);
    p11psk_frame fr;
    p11psk_msg m;
    char why[128];

    ck_assert_ptr_nonnull(prf);
    ck_assert_ptr_nonnull(expand);
    ck_assert_ptr_nonnull(flush);
    build_request(&fr);
    parse_frame(&fr, &m);
    ck_assert_int_eq(p11psk_op_validate(prf, &m, why, sizeof(why)), P11PSK_FIELD_OK);
    /* The same fields are not an expand request: PREFIX comes first in its row. */
    ck_assert_int_eq(p11psk_op_validate(expand, &m, why, sizeof(why)), P11PSK_FIELD_MISSING);
    ck_assert_str_eq(why, "missing PREFIX field");
    /* Fixed-size fields: absent and wrong size read alike, as p11pskd always said. */
    p11psk_frame_start(&fr, P11PSK_OP_TLS12_PRF);
    p11psk_frame_add(&fr, P11PSK_T_OTHER, NULL, 0);
    p11psk_frame_add(&fr, P11PSK_T_SEED, "s", 1);
    p11psk_frame_add_u8(&fr, P11PSK_T_OUTLEN, 48);
    parse_frame(&fr, &m);
    ck_assert_int_eq(p11psk_op_validate(prf, &m, why, sizeof(why)), P11PSK_FIELD_BAD_SIZE);
    ck_assert_str_eq(why, "missing or malformed OUTLEN field");
    p11psk_frame_start(&fr, P11PSK_OP_TLS12_PRF);
    p11psk_frame_add(&fr, P11PSK_T_OTHER, NULL, 0);
    p11psk_frame_add(&fr, P11PSK_T_SEED, "s", 1);
    p11psk_frame_add_u16(&fr, P11PSK_T_OUTLEN, P11PSK_WIRE_OUT_MAX + 1);
    parse_frame(&fr, &m);
    ck_assert_int_eq(p11psk_op_validate(prf, &m, why, sizeof(why)), P11PSK_FIELD_BAD_VALUE);
    ck_assert_str_eq(why, "OUTLEN 1025 outside 1..1024");
    p11psk_frame_start(&fr, P11PSK_OP_TLS12_PRF);
    p11psk_frame_add(&fr, P11PSK_T_OTHER, NULL, 0);
    p11psk_frame_add(&fr, P11PSK_T_SEED, "s", 1);
    p11psk_frame_add_u16(&fr, P11PSK_T_OUTLEN, 48);
    parse_frame(&fr, &m);
    ck_assert_int_eq(p11psk_op_validate(prf, &m, why, sizeof(why)), P11PSK_FIELD_MISSING);
    ck_assert_str_eq(why, "missing or malformed DIGEST field");
    /* Optional fields may be absent; fields a row does not list are refused. */
    p11psk_frame_start(&fr, P11PSK_OP_FLUSH);
    p11psk_frame_add(&fr, P11PSK_T_CKR, "\0\0\0\0", 4);
    parse_frame(&fr, &m);
    ck_assert_int_eq(p11psk_op_validate(flush, &m, why, sizeof(why)), P11PSK_FIELD_FORBIDDEN);
    ck_assert_str_eq(why, "CKR field not allowed in a flush request");
    p11psk_frame_start(&fr, P11PSK_OP_FLUSH);
    p11psk_frame_add_u8(&fr, P11PSK_T_DIGEST, 1);
    p11psk_frame_finish(&fr);
    fr.w.len = P11PSK_WIRE_HDR + 2; /* no fields at all */
    parse_frame(&fr, &m);
    ck_assert_int_eq(p11psk_op_validate(flush, &m, why, sizeof(why)), P11PSK_FIELD_OK);
    p11psk_frame_cleanse(&fr);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("wire");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, roundtrip);
    tcase_add_test(tc, every_truncation_rejected);
    tcase_add_test(tc, oversized);
    tcase_add_test(tc, bad_version_tag_duplicate);
    tcase_add_test(tc, text_field_sanitised);
    tcase_add_test(tc, op_table_consistent);
    tcase_add_test(tc, op_validate);
    suite_add_tcase(s, tc);
    return p11psk_unit_run(s);
}
