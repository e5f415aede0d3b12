/* Handle encode, decode and reject. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "p11psk/handle.h"

static p11psk_handle sample(void)
{
    p11psk_handle h;

    memset(&h, 0, sizeof(h));
    h.type = P11PSK_HT_PSK;
    h.idlen = 16;
    for (int i = 0; i < 16; i++)
        h.id[i] = (uint8_t)(0xa0 + i);
    return h;
}

START_TEST(roundtrip_psk)
{
    p11psk_handle h = sample(), d;
    uint8_t buf[P11PSK_HANDLE_LEN];

    ck_assert_int_eq(p11psk_handle_encode(&h, buf, sizeof(buf)), P11PSK_HANDLE_OK);
    ck_assert(p11psk_handle_has_magic(buf, sizeof(buf)));
    ck_assert_int_eq(p11psk_handle_decode(buf, sizeof(buf), &d), P11PSK_HANDLE_OK);
    ck_assert_int_eq(d.type, P11PSK_HT_PSK);
    ck_assert_int_eq(d.idlen, 16);
    ck_assert_mem_eq(d.id, h.id, 16);
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

START_TEST(roundtrip_es)
{
    static const int mds[] = {P11PSK_MD_SHA256, P11PSK_MD_SHA384};
    p11psk_handle h = sample(), d;
    uint8_t buf[P11PSK_HANDLE_MAX];
    size_t n;

    for (size_t i = 0; i < 2; i++) {
        h.type = P11PSK_HT_TLS13_ES;
        h.digest = (uint8_t)mds[i];
        n = p11psk_md_size(mds[i]);
        ck_assert_int_eq(p11psk_handle_encode(&h, buf, n), P11PSK_HANDLE_OK);
        ck_assert_int_eq(p11psk_handle_decode(buf, n, &d), P11PSK_HANDLE_OK);
        ck_assert_int_eq(d.type, P11PSK_HT_TLS13_ES);
        ck_assert_int_eq(d.digest, mds[i]);
        /* An ES handle presented with another length is rejected. */
        ck_assert_int_eq(p11psk_handle_decode(buf, n == 32 ? 48 : 32, &d),
                         P11PSK_HANDLE_BAD_CHECK);
    }
}
END_TEST

START_TEST(encode_rejects)
{
    p11psk_handle h = sample();
    uint8_t buf[P11PSK_HANDLE_MAX];

    h.idlen = 0;
    ck_assert_int_lt(p11psk_handle_encode(&h, buf, 32), 0);
    h.idlen = 17;
    ck_assert_int_lt(p11psk_handle_encode(&h, buf, 32), 0);
    h = sample();
    ck_assert_int_lt(p11psk_handle_encode(&h, buf, 48), 0); /* PSK handles are 32 bytes */
    h.digest = P11PSK_MD_SHA256;
    ck_assert_int_lt(p11psk_handle_encode(&h, buf, 32), 0); /* PSK handles carry no digest */
    h.type = P11PSK_HT_TLS13_ES;
    ck_assert_int_lt(p11psk_handle_encode(&h, buf, 48), 0); /* length must be hash size */
    h.type = 9;
    ck_assert_int_lt(p11psk_handle_encode(&h, buf, 32), 0);
}
END_TEST

START_TEST(not_a_handle)
{
    uint8_t raw[32];

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

    ck_assert_int_eq(p11psk_handle_encode(&h, buf, 32), P11PSK_HANDLE_OK);
    buf[6] = 2;
    ck_assert_int_eq(p11psk_handle_decode(buf, 32, NULL), P11PSK_HANDLE_BAD_VERSION);
    ck_assert_int_eq(p11psk_handle_decode(buf, 8, NULL), P11PSK_HANDLE_BAD_LENGTH);
    ck_assert_int_eq(p11psk_handle_decode(buf, sizeof(buf), NULL), P11PSK_HANDLE_BAD_LENGTH);
    ck_assert_str_eq(p11psk_handle_strerror(P11PSK_HANDLE_BAD_CHECK),
                     "bad handle: check value mismatch (corrupted or mistyped)");
}
END_TEST

START_TEST(hex_form)
{
    p11psk_handle h = sample(), d;
    uint8_t buf[P11PSK_HANDLE_LEN];
    char hex[P11PSK_HANDLE_HEX_LEN + 1];

    ck_assert_int_eq(p11psk_handle_encode(&h, buf, sizeof(buf)), P11PSK_HANDLE_OK);
    p11psk_hex_encode(buf, sizeof(buf), hex);
    /* As stunnel hands it over: the 64 hex characters themselves. */
    ck_assert(p11psk_handle_has_magic((uint8_t *)hex, 64));
    ck_assert_int_eq(p11psk_handle_decode((uint8_t *)hex, 64, &d), P11PSK_HANDLE_OK);
    ck_assert_mem_eq(d.id, h.id, 16);
    for (int i = 0; i < 64; i++)
        if (hex[i] >= 'a' && hex[i] <= 'f')
            hex[i] = (char)(hex[i] - 'a' + 'A');
    ck_assert_int_eq(p11psk_handle_decode((uint8_t *)hex, 64, NULL), P11PSK_HANDLE_OK);
    ck_assert_int_eq(p11psk_handle_decode((uint8_t *)hex, 63, NULL), P11PSK_HANDLE_BAD_LENGTH);
    hex[40] = hex[40] == '0' ? '1' : '0';
    ck_assert_int_eq(p11psk_handle_decode((uint8_t *)hex, 64, NULL), P11PSK_HANDLE_BAD_CHECK);
    hex[40] = 'x';
    ck_assert_int_eq(p11psk_handle_decode((uint8_t *)hex, 64, NULL), P11PSK_HANDLE_BAD_FIELD);
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
    SRunner *sr;
    int failed;

    tcase_add_test(tc, roundtrip_psk);
    tcase_add_test(tc, roundtrip_short_id);
    tcase_add_test(tc, roundtrip_es);
    tcase_add_test(tc, encode_rejects);
    tcase_add_test(tc, not_a_handle);
    tcase_add_test(tc, every_bit_flip_rejected);
    tcase_add_test(tc, reject_version_length);
    tcase_add_test(tc, hex_form);
    tcase_add_test(tc, md_and_hex);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
