/* SPDX-License-Identifier: Apache-2.0 */
#include "p11psk/handle.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <string.h>
#include <strings.h>

static const uint8_t handle_magic[P11PSK_MAGIC_LEN] = {0xd1, 'p', '1', '1', 'p', 'k'};
static const char handle_magic_hex[] = "d1703131706b"; /* the magic as hex text */

#define PSK_ID_OFF 10
#define PSK_TAG_OFF (PSK_ID_OFF + P11PSK_ID_MAX)     /* 26 */
#define PSK_CHECK_OFF (PSK_TAG_OFF + P11PSK_TAG_LEN) /* 42 */
#define ES_REF_HASHED 32 /* ref bytes from SHA-256; longer refs are zero padded */

static int has_binary_magic(const uint8_t *buf, size_t len)
{
    return buf != NULL && len >= P11PSK_MAGIC_LEN &&
           memcmp(buf, handle_magic, P11PSK_MAGIC_LEN) == 0;
}

static int has_hex_magic(const uint8_t *buf, size_t len)
{
    return buf != NULL && len >= sizeof(handle_magic_hex) - 1 &&
           strncasecmp((const char *)buf, handle_magic_hex, sizeof(handle_magic_hex) - 1) == 0;
}

int p11psk_handle_has_magic(const uint8_t *buf, size_t len)
{
    return has_binary_magic(buf, len) || has_hex_magic(buf, len);
}

static int handle_decode_binary(const uint8_t *buf, size_t len, p11psk_handle *h);

/* The hex form: the 96 characters of a PSK handle (64 for a version 1 one, to refuse it by
 * name rather than as a wrong length). */
static int handle_decode_hex(const uint8_t *buf, size_t len, p11psk_handle *h)
{
    char text[P11PSK_HANDLE_HEX_LEN + 1];
    uint8_t bin[P11PSK_HANDLE_LEN];
    p11psk_handle tmp;
    long n;
    int rc;

    if (len != P11PSK_HANDLE_HEX_LEN && len != 2 * P11PSK_HANDLE_V1_LEN)
        return P11PSK_HANDLE_BAD_LENGTH;
    memcpy(text, buf, len);
    text[len] = '\0';
    if ((n = p11psk_hex_decode(text, bin, sizeof(bin))) != (long)len / 2)
        return P11PSK_HANDLE_BAD_FIELD;
    rc = handle_decode_binary(bin, (size_t)n, &tmp);
    if (rc == P11PSK_HANDLE_OK && tmp.type != P11PSK_HT_PSK)
        rc = P11PSK_HANDLE_BAD_FIELD;
    if (rc == P11PSK_HANDLE_OK && h != NULL)
        *h = tmp;
    OPENSSL_cleanse(&tmp, sizeof(tmp));
    return rc;
}

/* The check value of buf[0..n): 0, or -1 if the digest failed. */
static int handle_check(const uint8_t *buf, size_t n, uint8_t out[P11PSK_CHECK_LEN])
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    if (!EVP_Digest(buf, n, md, &mdlen, EVP_sha256(), NULL)) /* OpenSSL: 1 = success */
        return -1;
    memcpy(out, md, P11PSK_CHECK_LEN);
    return 0;
}

static void handle_head(uint8_t *out, int type, int digest)
{
    memcpy(out, handle_magic, P11PSK_MAGIC_LEN);
    out[6] = P11PSK_HANDLE_VERSION;
    out[7] = (uint8_t)type;
    out[8] = (uint8_t)digest;
}

int p11psk_handle_encode(const p11psk_handle *h, uint8_t *out, size_t outlen)
{
    size_t reflen;

    if (h == NULL || out == NULL)
        return P11PSK_HANDLE_BAD_FIELD;
    if (h->type == P11PSK_HT_PSK) {
        if (h->digest != P11PSK_MD_NONE || h->idlen == 0 || h->idlen > P11PSK_ID_MAX)
            return P11PSK_HANDLE_BAD_FIELD;
        if (outlen != P11PSK_HANDLE_LEN)
            return P11PSK_HANDLE_BAD_LENGTH;
        memset(out, 0, outlen);
        handle_head(out, h->type, h->digest);
        out[9] = h->idlen;
        memcpy(out + PSK_ID_OFF, h->id, h->idlen);
        memcpy(out + PSK_TAG_OFF, h->tag, P11PSK_TAG_LEN);
        if (handle_check(out, PSK_CHECK_OFF, out + PSK_CHECK_OFF) != 0)
            return P11PSK_HANDLE_INTERNAL;
        return P11PSK_HANDLE_OK;
    }
    if (h->type != P11PSK_HT_TLS13_ES || p11psk_md_size(h->digest) == 0)
        return P11PSK_HANDLE_BAD_FIELD;
    if (outlen != p11psk_md_size(h->digest))
        return P11PSK_HANDLE_BAD_LENGTH;
    reflen = outlen - P11PSK_ES_HEAD_LEN;
    handle_head(out, h->type, h->digest);
    memcpy(out + P11PSK_ES_HEAD_LEN, h->ref, reflen);
    if (reflen > ES_REF_HASHED)
        memset(out + P11PSK_ES_HEAD_LEN + ES_REF_HASHED, 0, reflen - ES_REF_HASHED);
    return P11PSK_HANDLE_OK;
}

int p11psk_handle_es_make(const uint8_t psk[P11PSK_HANDLE_LEN], int md, uint8_t *out, size_t outlen)
{
    uint8_t in[P11PSK_HANDLE_LEN + 1], ref[EVP_MAX_MD_SIZE];
    unsigned int reflen = 0;
    p11psk_handle h;
    size_t n;
    int rc;

    if (psk == NULL || p11psk_md_size(md) == 0 || outlen != p11psk_md_size(md))
        return P11PSK_HANDLE_BAD_FIELD;
    memcpy(in, psk, P11PSK_HANDLE_LEN);
    in[P11PSK_HANDLE_LEN] = (uint8_t)md;
    if (!EVP_Digest(in, sizeof(in), ref, &reflen, EVP_sha256(), NULL))
        return P11PSK_HANDLE_INTERNAL;
    memset(&h, 0, sizeof(h));
    h.type = P11PSK_HT_TLS13_ES;
    h.digest = (uint8_t)md;
    n = outlen - P11PSK_ES_HEAD_LEN;
    memcpy(h.ref, ref, n < ES_REF_HASHED ? n : ES_REF_HASHED);
    rc = p11psk_handle_encode(&h, out, outlen);
    OPENSSL_cleanse(in, sizeof(in));
    return rc;
}

int p11psk_handle_decode(const uint8_t *buf, size_t len, p11psk_handle *h)
{
    if (has_binary_magic(buf, len))
        return handle_decode_binary(buf, len, h);
    if (has_hex_magic(buf, len))
        return handle_decode_hex(buf, len, h);
    return P11PSK_HANDLE_NOT;
}

static int decode_psk(const uint8_t *buf, size_t len, p11psk_handle *h)
{
    uint8_t check[P11PSK_CHECK_LEN];
    size_t i;

    if (len != P11PSK_HANDLE_LEN)
        return P11PSK_HANDLE_BAD_LENGTH;
    if (handle_check(buf, PSK_CHECK_OFF, check) != 0 ||
        memcmp(check, buf + PSK_CHECK_OFF, P11PSK_CHECK_LEN) != 0)
        return P11PSK_HANDLE_BAD_CHECK;
    if (buf[8] != P11PSK_MD_NONE || buf[9] == 0 || buf[9] > P11PSK_ID_MAX)
        return P11PSK_HANDLE_BAD_FIELD;
    for (i = PSK_ID_OFF + buf[9]; i < PSK_TAG_OFF; i++)
        if (buf[i] != 0)
            return P11PSK_HANDLE_BAD_FIELD;
    h->idlen = buf[9];
    memcpy(h->id, buf + PSK_ID_OFF, h->idlen);
    memcpy(h->tag, buf + PSK_TAG_OFF, P11PSK_TAG_LEN);
    return P11PSK_HANDLE_OK;
}

static int decode_es(const uint8_t *buf, size_t len, p11psk_handle *h)
{
    size_t i;

    if (p11psk_md_size(buf[8]) == 0)
        return P11PSK_HANDLE_BAD_FIELD;
    if (len != p11psk_md_size(buf[8]))
        return P11PSK_HANDLE_BAD_LENGTH;
    for (i = P11PSK_ES_HEAD_LEN + ES_REF_HASHED; i < len; i++)
        if (buf[i] != 0)
            return P11PSK_HANDLE_BAD_FIELD;
    memcpy(h->ref, buf + P11PSK_ES_HEAD_LEN, len - P11PSK_ES_HEAD_LEN);
    return P11PSK_HANDLE_OK;
}

static int handle_decode_binary(const uint8_t *buf, size_t len, p11psk_handle *h)
{
    p11psk_handle tmp;
    int rc;

    if (len < P11PSK_ES_HEAD_LEN)
        return P11PSK_HANDLE_BAD_LENGTH;
    if (buf[6] == 1)
        return P11PSK_HANDLE_V1;
    if (buf[6] != P11PSK_HANDLE_VERSION)
        return P11PSK_HANDLE_BAD_VERSION;
    memset(&tmp, 0, sizeof(tmp));
    tmp.type = buf[7];
    tmp.digest = buf[8];
    switch (buf[7]) {
    case P11PSK_HT_PSK:
        rc = decode_psk(buf, len, &tmp);
        break;
    case P11PSK_HT_TLS13_ES:
        rc = decode_es(buf, len, &tmp);
        break;
    default:
        rc = P11PSK_HANDLE_BAD_FIELD;
    }
    if (rc == P11PSK_HANDLE_OK && h != NULL)
        *h = tmp;
    return rc;
}

const char *p11psk_handle_strerror(int rc)
{
    switch (rc) {
    case P11PSK_HANDLE_OK:
        return "valid handle";
    case P11PSK_HANDLE_NOT:
        return "not a p11psk handle";
    case P11PSK_HANDLE_BAD_LENGTH:
        return "bad handle: wrong length";
    case P11PSK_HANDLE_BAD_VERSION:
        return "bad handle: unsupported version";
    case P11PSK_HANDLE_BAD_CHECK:
        return "bad handle: check value mismatch (corrupted or mistyped)";
    case P11PSK_HANDLE_BAD_FIELD:
        return "bad handle: malformed field";
    case P11PSK_HANDLE_INTERNAL:
        return "bad handle: check value could not be computed";
    case P11PSK_HANDLE_V1:
        return "handle version 1 is no longer accepted: re-issue it with `p11psk handle ID`";
    }
    return "bad handle";
}

static const struct {
    const char *name;
    int md;
} md_names[] = {
    {"SHA256", P11PSK_MD_SHA256},  {"SHA2-256", P11PSK_MD_SHA256},
    {"SHA-256", P11PSK_MD_SHA256}, {"2.16.840.1.101.3.4.2.1", P11PSK_MD_SHA256},
    {"SHA384", P11PSK_MD_SHA384},  {"SHA2-384", P11PSK_MD_SHA384},
    {"SHA-384", P11PSK_MD_SHA384}, {"2.16.840.1.101.3.4.2.2", P11PSK_MD_SHA384},
};

int p11psk_md_from_name(const char *name)
{
    size_t i;

    if (name == NULL)
        return P11PSK_MD_NONE;
    for (i = 0; i < sizeof(md_names) / sizeof(md_names[0]); i++)
        if (strcasecmp(name, md_names[i].name) == 0)
            return md_names[i].md;
    return P11PSK_MD_NONE;
}

const char *p11psk_md_name(int md)
{
    return md == P11PSK_MD_SHA256 ? "SHA256" : md == P11PSK_MD_SHA384 ? "SHA384" : NULL;
}

size_t p11psk_md_size(int md)
{
    return md == P11PSK_MD_SHA256 ? 32 : md == P11PSK_MD_SHA384 ? 48 : 0;
}

size_t p11psk_md_block(int md)
{
    return md == P11PSK_MD_SHA256 ? 64 : md == P11PSK_MD_SHA384 ? 128 : 0;
}

void p11psk_hex_encode(const uint8_t *in, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0xf];
    }
    out[2 * len] = '\0';
}

static int hex_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

long p11psk_hex_decode(const char *in, uint8_t *out, size_t outcap)
{
    size_t n = strlen(in), i;

    if (n % 2 != 0 || n / 2 > outcap)
        return -1;
    for (i = 0; i < n / 2; i++) {
        int hi = hex_nibble(in[2 * i]), lo = hex_nibble(in[2 * i + 1]);

        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return (long)(n / 2);
}
