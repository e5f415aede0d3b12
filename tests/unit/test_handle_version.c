/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A handle whose version byte is wrong is refused for its version even when its check value
 * was recomputed to match: the check value catches typos, not a different format.
 */
#include <check.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "p11psk/handle.h"
#include "unit.h"

/* p11psk_handle_encode's success value; 0 = success, the project convention. */
#define ENCODE_OK(rc) ((rc) == 0)

#define VERSION_OFF 6 /* magic (6 bytes), then the version byte */

/* The check value as common/handle.c computes it for PSK handles: SHA-256 of all but the
 * last 6 bytes. Early-secret placeholders carry none: nothing to recompute. */
static void recompute_check(uint8_t *buf, size_t len)
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    if (buf[7] != P11PSK_HT_PSK)
        return;
    ck_assert(EVP_Digest(buf, len - P11PSK_CHECK_LEN, md, &mdlen, EVP_sha256(), NULL));
    memcpy(buf + len - P11PSK_CHECK_LEN, md, P11PSK_CHECK_LEN);
}

static size_t encode(int type, int md, uint8_t *buf)
{
    p11psk_handle h;
    size_t n = type == P11PSK_HT_PSK ? P11PSK_HANDLE_LEN : p11psk_md_size(md);

    memset(&h, 0, sizeof(h));
    h.type = (uint8_t)type;
    h.digest = (uint8_t)md;
    h.idlen = 8;
    for (int i = 0; i < 8; i++)
        h.id[i] = (uint8_t)(0x30 + i);
    ck_assert(ENCODE_OK(p11psk_handle_encode(&h, buf, n)));
    return n;
}

static const struct {
    int type, md;
} kinds[] = {
    {P11PSK_HT_PSK, P11PSK_MD_NONE},
    {P11PSK_HT_TLS13_ES, P11PSK_MD_SHA256},
    {P11PSK_HT_TLS13_ES, P11PSK_MD_SHA384},
};

START_TEST(recomputed_check_still_valid)
{
    uint8_t buf[P11PSK_HANDLE_MAX];
    size_t n = encode(kinds[_i].type, kinds[_i].md, buf);
    p11psk_handle d;

    /* Recomputing over an unchanged handle must reproduce it: the helper matches handle.c. */
    recompute_check(buf, n);
    ck_assert_int_eq(p11psk_handle_decode(buf, n, &d), P11PSK_HANDLE_OK);
    ck_assert_int_eq(buf[VERSION_OFF], P11PSK_HANDLE_VERSION);
}
END_TEST

START_TEST(wrong_version_refused)
{
    static const uint8_t versions[] = {0, 3, 0x7f, 0x80, 0xff}; /* 1: refused by name */
    uint8_t buf[P11PSK_HANDLE_MAX];
    size_t n, i;

    for (i = 0; i < sizeof(versions); i++) {
        n = encode(kinds[_i].type, kinds[_i].md, buf);
        buf[VERSION_OFF] = versions[i];
        recompute_check(buf, n);
        ck_assert_msg(p11psk_handle_decode(buf, n, NULL) == P11PSK_HANDLE_BAD_VERSION,
                      "version %u accepted or refused for another reason (rc %d)", versions[i],
                      p11psk_handle_decode(buf, n, NULL));
    }
    ck_assert_str_eq(p11psk_handle_strerror(P11PSK_HANDLE_BAD_VERSION),
                     "bad handle: unsupported version");
}
END_TEST

START_TEST(wrong_version_refused_in_hex)
{
    uint8_t buf[P11PSK_HANDLE_LEN];
    char hex[P11PSK_HANDLE_HEX_LEN + 1];

    encode(P11PSK_HT_PSK, P11PSK_MD_NONE, buf);
    buf[VERSION_OFF] = 3;
    recompute_check(buf, sizeof(buf));
    p11psk_hex_encode(buf, sizeof(buf), hex);
    ck_assert_int_eq(p11psk_handle_decode((const uint8_t *)hex, strlen(hex), NULL),
                     P11PSK_HANDLE_BAD_VERSION);
    /* Version 1, whatever else the bytes say, is refused with its own reason. */
    buf[VERSION_OFF] = 1;
    recompute_check(buf, sizeof(buf));
    p11psk_hex_encode(buf, sizeof(buf), hex);
    ck_assert_int_eq(p11psk_handle_decode((const uint8_t *)hex, strlen(hex), NULL),
                     P11PSK_HANDLE_V1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("handle_version");
    TCase *tc = tcase_create("core");

    tcase_add_loop_test(tc, recomputed_check_still_valid, 0, 3);
    tcase_add_loop_test(tc, wrong_version_refused, 0, 3);
    tcase_add_test(tc, wrong_version_refused_in_hex);
    suite_add_tcase(s, tc);
    return p11psk_unit_run(s);
}
