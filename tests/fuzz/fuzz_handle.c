/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness: the handle decoder (binary and 96-character hex forms) and the hex
 * decoder. Handles carry a SHA-256 check value a fuzzer will not guess, so when the first
 * input byte is odd the rest is decoded as given, and when it is even the check value is
 * recomputed first so that the field checks behind it are reached too.
 */
#include <ctype.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "p11psk/handle.h"

#define CHECK(c) ((c) ? (void)0 : abort())

static int is_hex_form(const uint8_t *buf, size_t len)
{
    size_t i;

    if (len != P11PSK_HANDLE_HEX_LEN)
        return 0;
    for (i = 0; i < len; i++)
        if (!isxdigit(buf[i]))
            return 0;
    return 1;
}

static void decode_checked(const uint8_t *buf, size_t len)
{
    uint8_t enc[P11PSK_HANDLE_MAX];
    char hex[2 * P11PSK_HANDLE_MAX + 1];
    p11psk_handle h;
    size_t enclen;
    int rc = p11psk_handle_decode(buf, len, &h);

    (void)p11psk_handle_strerror(rc);
    CHECK(rc >= P11PSK_HANDLE_V1 && rc <= P11PSK_HANDLE_NOT && rc != P11PSK_HANDLE_INTERNAL);
    CHECK(p11psk_handle_decode(buf, len, NULL) == rc);
    CHECK((rc == P11PSK_HANDLE_NOT) == !p11psk_handle_has_magic(buf, len));
    if (rc != P11PSK_HANDLE_OK)
        return;
    CHECK(h.type != P11PSK_HT_PSK || (h.idlen >= 1 && h.idlen <= P11PSK_ID_MAX));
    CHECK(h.type == P11PSK_HT_PSK ? h.digest == P11PSK_MD_NONE
                                  : h.type == P11PSK_HT_TLS13_ES && p11psk_md_size(h.digest));
    /* A valid handle is exactly what encode makes of the decoded fields. */
    enclen = h.type == P11PSK_HT_PSK ? P11PSK_HANDLE_LEN : p11psk_md_size(h.digest);
    CHECK(p11psk_handle_encode(&h, enc, enclen) == P11PSK_HANDLE_OK);
    if (len == enclen && memcmp(buf, enc, len) == 0)
        return;
    CHECK(h.type == P11PSK_HT_PSK && is_hex_form(buf, len));
    p11psk_hex_encode(enc, enclen, hex);
    CHECK(strncasecmp(hex, (const char *)buf, len) == 0);
}

/* Recomputes the check value of a would-be binary handle of len bytes. */
static void fix_check(uint8_t *buf, size_t len)
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    if (len < P11PSK_CHECK_LEN + 1)
        return;
    CHECK(EVP_Digest(buf, len - P11PSK_CHECK_LEN, md, &mdlen, EVP_sha256(), NULL));
    memcpy(buf + len - P11PSK_CHECK_LEN, md, P11PSK_CHECK_LEN);
}

static void hex_checked(const uint8_t *data, size_t size)
{
    uint8_t out[64];
    char *text = malloc(size + 1);
    size_t cap;
    long n;

    CHECK(text != NULL);
    memcpy(text, data, size);
    text[size] = '\0';
    for (cap = 0; cap <= sizeof(out); cap += 16) {
        uint8_t *o = malloc(cap ? cap : 1);

        CHECK(o != NULL);
        n = p11psk_hex_decode(text, o, cap);
        CHECK(n >= -1 && (n < 0 || (size_t)n <= cap));
        if (n >= 0)
            CHECK((size_t)n * 2 == strlen(text));
        free(o);
    }
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf;
    size_t len;

    if (size < 1)
        return 0;
    len = size - 1;
    buf = malloc(len ? len : 1); /* exact size: ASan catches any overread */
    CHECK(buf != NULL);
    memcpy(buf, data + 1, len);
    if ((data[0] & 1) == 0) {
        /* Steer towards binary handles: magic in place, check value right. */
        static const uint8_t magic[P11PSK_MAGIC_LEN] = {0xd1, 'p', '1', '1', 'p', 'k'};

        if ((data[0] & 2) == 0 && len >= P11PSK_MAGIC_LEN)
            memcpy(buf, magic, P11PSK_MAGIC_LEN);
        fix_check(buf, len);
    }
    decode_checked(buf, len);
    free(buf);
    hex_checked(data + 1, len);
    return 0;
}
