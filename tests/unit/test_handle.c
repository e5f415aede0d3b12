/* SPDX-License-Identifier: Apache-2.0 */
/* Handle layout (version 2): encode, decode and reject. The tag is checked in
 * test_handlekey.c, where a token holds the handle key. */
#include <check.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "p11psk/handle.h"
#include "unit.h"

#define TAG_OFF 26
#define CHECK_OFF 42

static p11psk_handle sample(void)
{
    p11psk_handle h;

    memset(&h, 0, sizeof(h));
    h.type = P11PSK_HT_PSK;
    h.idlen = 16;
    for (int i = 0; i < 16; i++) {
        h.id[i] = (uint8_t)(0xa0 + i);
        h.tag[i] = (uint8_t)(0x10 + i);
    }
    return h;
}

/* The check value as the layout defines it: SHA-256 of bytes [0..42), first 6 bytes. */
static void recompute_check(uint8_t *buf)
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    ck_assert(EVP_Digest(buf, CHECK_OFF, md, &mdlen, EVP_sha256(), NULL));
    memcpy(buf + CHECK_OFF, md, P11PSK_CHECK_LEN);
}

START_TEST(roundtrip_psk)
{
    p11psk_handle h = sample(), d;
    uint8_t buf[P11PSK_HANDLE_LEN];

    ck_assert_int_eq(P11PSK_HANDLE_LEN, 48);
    ck_assert_int_eq(P11PSK_HANDLE_HEX_LEN, 96);
    ck_assert_int_eq(p11psk_handle_encode(&h, buf, sizeof(buf)), P11PSK_HANDLE_OK);
    ck_assert(p11psk_handle_has_magic(buf, sizeof(buf)));
    ck_assert_int_eq(p11psk_handle_decode(buf, sizeof(buf), &d), P11PSK_HANDLE_OK);
    ck_assert_int_eq(d.type, P11PSK_HT_PSK);
    ck_assert_int_eq(d.idlen, 16);
    ck_assert_mem_eq(d.id, h.id, 16);
    ck_assert_mem_eq(d.tag, h.tag, P11PSK_TAG_LEN);
}
END_TEST

START_TEST(v2_layout)
{
    static const uint8_t head[] = {0xd1, 'p', '1', '1', 'p', 'k', 2, P11PSK_HT_PSK, 0, 3};
    p11psk_handle h = sample();
    uint8_t buf[P11PSK_HANDLE_LEN], want[P11PSK_CHECK_LEN];

    h.idlen = 3;
    ck_assert_int_eq(p11psk_handle_encode(&h, buf, sizeof(buf)), P11PSK_HANDLE_OK);
    ck_assert_mem_eq(buf, head, sizeof(head));
    ck_assert_mem_eq(buf + 10, h.id, 3);
    for (int i = 13; i < TAG_OFF; i++)
        ck_assert_int_eq(buf[i], 0); /* id zero padded */
    ck_assert_mem_eq(buf + TAG_OFF, h.tag, P11PSK_TAG_LEN);
    memcpy(want, buf + CHECK_OFF, sizeof(want));
    recompute_check(buf);
    ck_assert_mem_eq(buf + CHECK_OFF, want, sizeof(want));
}
END_TEST

START_TEST(roundtrip_short_id)
{
    p11psk_handle h = sample(), d;
    uint8_t buf[P11PSK_HANDLE_LEN];

    h.idlen = 1;
    ck_assert_int_eq(p11psk_handle_encode(&h, buf, sizeof(buf)), P11PSK_HANDLE_OK);
    ck_assert_int_eq(p11psk_handle_decode(buf, sizeof(buf), &d), P11PSK_HANDLE_OK);
    ck_assert_int_eq(d.idlen, 1);
    ck_assert_int_eq(d.id[0], 0xa0);
}
END_TEST

START_TEST(tag_is_carried_not_judged)
{
    p11psk_handle h = sample(), d;
    uint8_t buf[P11PSK_HANDLE_LEN];

    ck_assert_int_eq(p11psk_handle_encode(&h, buf, sizeof(buf)), P11PSK_HANDLE_OK);
    /* A changed tag without a new check value is a typo... */
    buf[TAG_OFF + 5] ^= 0x40;
    ck_assert_int_eq(p11psk_handle_decode(buf, sizeof(buf), &d), P11PSK_HANDLE_BAD_CHECK);
    /* ...with one, a well-formed handle whose tag differs: only the handle key can tell. */
    recompute_check(buf);
    ck_assert_int_eq(p11psk_handle_decode(buf, sizeof(buf), &d), P11PSK_HANDLE_OK);
    ck_assert(memcmp(d.tag, h.tag, P11PSK_TAG_LEN) != 0);
    ck_assert_int_eq(d.tag[5], h.tag[5] ^ 0x40);
}
END_TEST

START_TEST(es_placeholder)
{
    static const int mds[] = {P11PSK_MD_SHA256, P11PSK_MD_SHA384};
    p11psk_handle h = sample(), d, d2;
    uint8_t psk[P11PSK_HANDLE_LEN], psk2[P11PSK_HANDLE_LEN], buf[P11PSK_HANDLE_MAX],
        buf2[P11PSK_HANDLE_MAX];
    size_t n;

    ck_assert_int_eq(p11psk_handle_encode(&h, psk, sizeof(psk)), P11PSK_HANDLE_OK);
    h.id[0] ^= 1;
    ck_assert_int_eq(p11psk_handle_encode(&h, psk2, sizeof(psk2)), P11PSK_HANDLE_OK);
    for (size_t i = 0; i < 2; i++) {
        n = p11psk_md_size(mds[i]);
        ck_assert_int_eq(p11psk_handle_es_make(psk, mds[i], buf, n), P11PSK_HANDLE_OK);
        ck_assert_int_eq(buf[6], 2);
        ck_assert_int_eq(buf[7], P11PSK_HT_TLS13_ES);
        ck_assert_int_eq(buf[8], mds[i]);
        ck_assert_int_eq(p11psk_handle_decode(buf, n, &d), P11PSK_HANDLE_OK);
        ck_assert_int_eq(d.type, P11PSK_HT_TLS13_ES);
        ck_assert_int_eq(d.digest, mds[i]);
        /* Another PSK handle, another reference. */
        ck_assert_int_eq(p11psk_handle_es_make(psk2, mds[i], buf2, n), P11PSK_HANDLE_OK);
        ck_assert_int_eq(p11psk_handle_decode(buf2, n, &d2), P11PSK_HANDLE_OK);
        ck_assert(memcmp(d.ref, d2.ref, n - P11PSK_ES_HEAD_LEN) != 0);
        /* The placeholder must keep the hash length. */
        ck_assert_int_eq(p11psk_handle_decode(buf, n == 32 ? 48 : 31, &d),
                         P11PSK_HANDLE_BAD_LENGTH);
        ck_assert_int_lt(p11psk_handle_es_make(psk, mds[i], buf, n == 32 ? 48 : 32), 0);
    }
    /* SHA-384 placeholders pad the 32-byte reference with zeros. */
    ck_assert_int_eq(p11psk_handle_es_make(psk, P11PSK_MD_SHA384, buf, 48), P11PSK_HANDLE_OK);
    buf[47] = 1;
    ck_assert_int_eq(p11psk_handle_decode(buf, 48, &d), P11PSK_HANDLE_BAD_FIELD);
}
END_TEST

START_TEST(encode_rejects)
{
    p11psk_handle h = sample();
    uint8_t buf[P11PSK_HANDLE_MAX];

    h.idlen = 0;
    ck_assert_int_lt(p11psk_handle_encode(&h, buf, 48), 0);
    h.idlen = 17;
    ck_assert_int_lt(p11psk_handle_encode(&h, buf, 48), 0);
    h = sample();
    ck_assert_int_lt(p11psk_handle_encode(&h, buf, 32), 0); /* PSK handles are 48 bytes */
    h.digest = P11PSK_MD_SHA256;
    ck_assert_int_lt(p11psk_handle_encode(&h, buf, 48), 0); /* PSK handles carry no digest */
    h.type = P11PSK_HT_TLS13_ES;
    ck_assert_int_lt(p11psk_handle_encode(&h, buf, 48), 0); /* length must be hash size */
    h.type = 9;
    ck_assert_int_lt(p11psk_handle_encode(&h, buf, 48), 0);
}
END_TEST

START_TEST(not_a_handle)
{
    uint8_t raw[48];

    memset(raw, 0x11, sizeof(raw));
    ck_assert(!p11psk_handle_has_magic(raw, sizeof(raw)));
    ck_assert_int_eq(p11psk_handle_decode(raw, sizeof(raw), NULL), P11PSK_HANDLE_NOT);
    ck_assert_int_eq(p11psk_handle_decode(raw, 3, NULL), P11PSK_HANDLE_NOT);
    ck_assert_int_eq(p11psk_handle_decode(NULL, 0, NULL), P11PSK_HANDLE_NOT);
}
END_TEST

START_TEST(every_bit_flip_rejected)
{
    p11psk_handle h = sample();
    uint8_t buf[P11PSK_HANDLE_LEN];

    ck_assert_int_eq(p11psk_handle_encode(&h, buf, sizeof(buf)), P11PSK_HANDLE_OK);
    for (size_t i = 0; i < sizeof(buf) * 8; i++) {
        int rc;

        buf[i / 8] ^= (uint8_t)(1u << (i % 8));
        rc = p11psk_handle_decode(buf, sizeof(buf), NULL);
        /* Flips inside the magic make it "not a handle"; everything else is an error. */
        if (i < P11PSK_MAGIC_LEN * 8)
            ck_assert_int_eq(rc, P11PSK_HANDLE_NOT);
        else
            ck_assert_int_lt(rc, 0);
        buf[i / 8] ^= (uint8_t)(1u << (i % 8));
    }
    ck_assert_int_eq(p11psk_handle_decode(buf, sizeof(buf), NULL), P11PSK_HANDLE_OK);
}
END_TEST

START_TEST(reject_version_length)
{
    p11psk_handle h = sample();
    uint8_t buf[P11PSK_HANDLE_MAX + 8];

    ck_assert_int_eq(p11psk_handle_encode(&h, buf, 48), P11PSK_HANDLE_OK);
    buf[6] = 3;
    ck_assert_int_eq(p11psk_handle_decode(buf, 48, NULL), P11PSK_HANDLE_BAD_VERSION);
    buf[6] = 2;
    ck_assert_int_eq(p11psk_handle_decode(buf, 8, NULL), P11PSK_HANDLE_BAD_LENGTH);
    ck_assert_int_eq(p11psk_handle_decode(buf, 32, NULL), P11PSK_HANDLE_BAD_LENGTH);
    ck_assert_int_eq(p11psk_handle_decode(buf, sizeof(buf), NULL), P11PSK_HANDLE_BAD_LENGTH);
    ck_assert_str_eq(p11psk_handle_strerror(P11PSK_HANDLE_BAD_CHECK),
                     "bad handle: check value mismatch (corrupted or mistyped)");
}
END_TEST

/* A version 1 handle as `p11psk handle` printed it before: id 01, unkeyed check value. */
static void v1_handle(uint8_t buf[32])
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    memset(buf, 0, 32);
    memcpy(buf, "\xd1p11pk", 6);
    buf[6] = 1;
    buf[7] = P11PSK_HT_PSK;
    buf[9] = 1;
    buf[10] = 0x01;
    ck_assert(EVP_Digest(buf, 26, md, &mdlen, EVP_sha256(), NULL));
    memcpy(buf + 26, md, 6);
}

START_TEST(v1_refused)
{
    uint8_t buf[32];
    char hex[65];

    v1_handle(buf);
    ck_assert_int_eq(p11psk_handle_decode(buf, sizeof(buf), NULL), P11PSK_HANDLE_V1);
    p11psk_hex_encode(buf, sizeof(buf), hex);
    ck_assert_int_eq(p11psk_handle_decode((uint8_t *)hex, 64, NULL), P11PSK_HANDLE_V1);
    ck_assert_str_eq(p11psk_handle_strerror(P11PSK_HANDLE_V1),
                     "handle version 1 is no longer accepted: re-issue it with `p11psk handle "
                     "ID`");
    /* A v1 early-secret handle (48 bytes, SHA-384) likewise. */
    {
        uint8_t es[48];

        memset(es, 0, sizeof(es));
        memcpy(es, buf, 10);
        es[7] = P11PSK_HT_TLS13_ES;
        es[8] = P11PSK_MD_SHA384;
        ck_assert_int_eq(p11psk_handle_decode(es, sizeof(es), NULL), P11PSK_HANDLE_V1);
    }
}
END_TEST

START_TEST(hex_form)
{
    p11psk_handle h = sample(), d;
    uint8_t buf[P11PSK_HANDLE_LEN];
    char hex[P11PSK_HANDLE_HEX_LEN + 1];

    ck_assert_int_eq(p11psk_handle_encode(&h, buf, sizeof(buf)), P11PSK_HANDLE_OK);
    p11psk_hex_encode(buf, sizeof(buf), hex);
    /* As stunnel hands it over: the 96 hex characters themselves. */
    ck_assert(p11psk_handle_has_magic((uint8_t *)hex, 96));
    ck_assert_int_eq(p11psk_handle_decode((uint8_t *)hex, 96, &d), P11PSK_HANDLE_OK);
    ck_assert_mem_eq(d.id, h.id, 16);
    ck_assert_mem_eq(d.tag, h.tag, P11PSK_TAG_LEN);
    for (int i = 0; i < 96; i++)
        if (hex[i] >= 'a' && hex[i] <= 'f')
            hex[i] = (char)(hex[i] - 'a' + 'A');
    ck_assert_int_eq(p11psk_handle_decode((uint8_t *)hex, 96, NULL), P11PSK_HANDLE_OK);
    ck_assert_int_eq(p11psk_handle_decode((uint8_t *)hex, 95, NULL), P11PSK_HANDLE_BAD_LENGTH);
    ck_assert_int_eq(p11psk_handle_decode((uint8_t *)hex, 64, NULL), P11PSK_HANDLE_BAD_LENGTH);
    hex[60] = hex[60] == '0' ? '1' : '0';
    ck_assert_int_eq(p11psk_handle_decode((uint8_t *)hex, 96, NULL), P11PSK_HANDLE_BAD_CHECK);
    hex[60] = 'x';
    ck_assert_int_eq(p11psk_handle_decode((uint8_t *)hex, 96, NULL), P11PSK_HANDLE_BAD_FIELD);
}
END_TEST

START_TEST(md_and_hex)
{
    uint8_t b[4];
    char s[9];

    ck_assert_int_eq(p11psk_md_from_name("SHA2-256"), P11PSK_MD_SHA256);
    ck_assert_int_eq(p11psk_md_from_name("sha384"), P11PSK_MD_SHA384);
    ck_assert_int_eq(p11psk_md_from_name("SHA1"), P11PSK_MD_NONE);
    ck_assert_int_eq(p11psk_md_block(P11PSK_MD_SHA384), 128);
    ck_assert_int_eq(p11psk_hex_decode("A0b1c2D3", b, sizeof(b)), 4);
    p11psk_hex_encode(b, 4, s);
    ck_assert_str_eq(s, "a0b1c2d3");
    ck_assert_int_eq(p11psk_hex_decode("a0b", b, sizeof(b)), -1);
    ck_assert_int_eq(p11psk_hex_decode("zz", b, sizeof(b)), -1);
    ck_assert_int_eq(p11psk_hex_decode("0011223344", b, sizeof(b)), -1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("handle");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, roundtrip_psk);
    tcase_add_test(tc, v2_layout);
    tcase_add_test(tc, roundtrip_short_id);
    tcase_add_test(tc, tag_is_carried_not_judged);
    tcase_add_test(tc, es_placeholder);
    tcase_add_test(tc, encode_rejects);
    tcase_add_test(tc, not_a_handle);
    tcase_add_test(tc, every_bit_flip_rejected);
    tcase_add_test(tc, reject_version_length);
    tcase_add_test(tc, v1_refused);
    tcase_add_test(tc, hex_form);
    tcase_add_test(tc, md_and_hex);
    suite_add_tcase(s, tc);
    return p11psk_unit_run(s);
}
