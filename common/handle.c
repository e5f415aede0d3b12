#include "p11psk/handle.h"

#include <openssl/evp.h>
#include <string.h>
#include <strings.h>

static const uint8_t handle_magic[P11PSK_MAGIC_LEN] = {0xd1, 'p', '1', '1', 'p', 'k'};
static const char handle_magic_hex[] = "d1703131706b"; /* the magic as hex text */

#define HANDLE_FIXED_LEN (10 + P11PSK_ID_MAX) /* header and id area */

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

/* The hex form: exactly the 64 characters of a PSK handle. */
static int handle_decode_hex(const uint8_t *buf, size_t len, p11psk_handle *h)
{
    char text[P11PSK_HANDLE_HEX_LEN + 1];
    uint8_t bin[P11PSK_HANDLE_LEN];
    p11psk_handle tmp;
    int rc;

    if (len != P11PSK_HANDLE_HEX_LEN)
        return P11PSK_HANDLE_BAD_LENGTH;
    memcpy(text, buf, len);
    text[len] = '\0';
    if (p11psk_hex_decode(text, bin, sizeof(bin)) != P11PSK_HANDLE_LEN)
        return P11PSK_HANDLE_BAD_FIELD;
    rc = handle_decode_binary(bin, sizeof(bin), &tmp);
    if (rc == P11PSK_HANDLE_OK && tmp.type != P11PSK_HT_PSK)
        rc = P11PSK_HANDLE_BAD_FIELD;
    if (rc == P11PSK_HANDLE_OK && h != NULL)
        *h = tmp;
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

static int handle_len_is_valid(size_t len)
{
    return len >= HANDLE_FIXED_LEN + P11PSK_CHECK_LEN && len <= P11PSK_HANDLE_MAX;
}

int p11psk_handle_encode(const p11psk_handle *h, uint8_t *out, size_t outlen)
{
    if (h == NULL || out == NULL || h->idlen == 0 || h->idlen > P11PSK_ID_MAX)
        return P11PSK_HANDLE_BAD_FIELD;
    if (h->type == P11PSK_HT_PSK
            ? h->digest != P11PSK_MD_NONE
            : (h->type != P11PSK_HT_TLS13_ES || p11psk_md_size(h->digest) == 0))
        return P11PSK_HANDLE_BAD_FIELD;
    if (!handle_len_is_valid(outlen) ||
        outlen != (h->type == P11PSK_HT_PSK ? P11PSK_HANDLE_LEN : p11psk_md_size(h->digest)))
        return P11PSK_HANDLE_BAD_LENGTH;
    memset(out, 0, outlen);
    memcpy(out, handle_magic, P11PSK_MAGIC_LEN);
    out[6] = P11PSK_HANDLE_VERSION;
    out[7] = h->type;
    out[8] = h->digest;
    out[9] = h->idlen;
    memcpy(out + 10, h->id, h->idlen);
    if (handle_check(out, outlen - P11PSK_CHECK_LEN, out + outlen - P11PSK_CHECK_LEN) != 0)
        return P11PSK_HANDLE_INTERNAL;
    return P11PSK_HANDLE_OK;
}

int p11psk_handle_decode(const uint8_t *buf, size_t len, p11psk_handle *h)
{
    if (has_binary_magic(buf, len))
        return handle_decode_binary(buf, len, h);
    if (has_hex_magic(buf, len))
        return handle_decode_hex(buf, len, h);
    return P11PSK_HANDLE_NOT;
}

static int handle_decode_binary(const uint8_t *buf, size_t len, p11psk_handle *h)
{
    uint8_t check[P11PSK_CHECK_LEN];
    size_t i;

    if (!handle_len_is_valid(len))
        return P11PSK_HANDLE_BAD_LENGTH;
    if (buf[6] != P11PSK_HANDLE_VERSION)
        return P11PSK_HANDLE_BAD_VERSION;
    if (handle_check(buf, len - P11PSK_CHECK_LEN, check) != 0 ||
        memcmp(check, buf + len - P11PSK_CHECK_LEN, P11PSK_CHECK_LEN) != 0)
        return P11PSK_HANDLE_BAD_CHECK;
    if (buf[9] == 0 || buf[9] > P11PSK_ID_MAX)
        return P11PSK_HANDLE_BAD_FIELD;
    for (i = 10 + buf[9]; i < len - P11PSK_CHECK_LEN; i++)
        if (buf[i] != 0)
            return P11PSK_HANDLE_BAD_FIELD;
    switch (buf[7]) {
    case P11PSK_HT_PSK:
        if (buf[8] != P11PSK_MD_NONE)
            return P11PSK_HANDLE_BAD_FIELD;
        if (len != P11PSK_HANDLE_LEN)
            return P11PSK_HANDLE_BAD_LENGTH;
        break;
    case P11PSK_HT_TLS13_ES:
        if (p11psk_md_size(buf[8]) == 0)
            return P11PSK_HANDLE_BAD_FIELD;
        if (len != p11psk_md_size(buf[8]))
            return P11PSK_HANDLE_BAD_LENGTH;
        break;
    default:
        return P11PSK_HANDLE_BAD_FIELD;
    }
    if (h != NULL) {
        memset(h, 0, sizeof(*h));
        h->type = buf[7];
        h->digest = buf[8];
        h->idlen = buf[9];
        memcpy(h->id, buf + 10, h->idlen);
    }
    return P11PSK_HANDLE_OK;
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
