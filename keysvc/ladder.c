/* SPDX-License-Identifier: Apache-2.0 */
#include "ladder.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/provider.h>
#include <stdlib.h>
#include <string.h>

#include "p11psk/buf.h"
#include "p11psk/wire.h"

#define MD_MAX 48
#define BLOCK_MAX 128

struct p11psk_ladder {
    OSSL_LIB_CTX *libctx;
    OSSL_PROVIDER *prov;
    EVP_MD *md[3]; /* indexed by P11PSK_MD_* */
    EVP_KDF *tls13_kdf;
    EVP_KDF *tls1_prf;
    p11psk_cache *cache;
};

/* What cached values are keyed by; a key without a fingerprint is never cached. */
static const uint8_t *key_fp(const p11psk_key *key)
{
    return key->fp_ok ? key->fp : NULL;
}

void p11psk_ladder_set_cache(p11psk_ladder *lad, p11psk_cache *cache)
{
    lad->cache = cache;
}

p11psk_ladder *p11psk_ladder_new(void)
{
    p11psk_ladder *lad = calloc(1, sizeof(*lad));

    if (lad == NULL)
        return NULL;
    /* A fresh library context reads no openssl.cnf: only what we load here exists. */
    if ((lad->libctx = OSSL_LIB_CTX_new()) == NULL ||
        (lad->prov = OSSL_PROVIDER_load(lad->libctx, "default")) == NULL ||
        (lad->md[P11PSK_MD_SHA256] = EVP_MD_fetch(lad->libctx, "SHA256", NULL)) == NULL ||
        (lad->md[P11PSK_MD_SHA384] = EVP_MD_fetch(lad->libctx, "SHA384", NULL)) == NULL ||
        (lad->tls13_kdf = EVP_KDF_fetch(lad->libctx, "TLS13-KDF", NULL)) == NULL ||
        (lad->tls1_prf = EVP_KDF_fetch(lad->libctx, "TLS1-PRF", NULL)) == NULL) {
        p11psk_ladder_free(lad);
        return NULL;
    }
    return lad;
}

void p11psk_ladder_free(p11psk_ladder *lad)
{
    if (lad == NULL)
        return;
    EVP_KDF_free(lad->tls1_prf);
    EVP_KDF_free(lad->tls13_kdf);
    EVP_MD_free(lad->md[P11PSK_MD_SHA384]);
    EVP_MD_free(lad->md[P11PSK_MD_SHA256]);
    if (lad->prov != NULL)
        OSSL_PROVIDER_unload(lad->prov);
    OSSL_LIB_CTX_free(lad->libctx);
    free(lad);
}

const char *p11psk_ladder_step_str(int step)
{
    switch (step) {
    case P11PSK_STEP_TOKEN:
        return "token";
    case P11PSK_STEP_VALUE:
        return "value";
    case P11PSK_STEP_CACHE:
        return "cache";
    }
    return "none";
}

static int md_ok(int md, p11psk_err *err)
{
    if (p11psk_md_size(md) == 0) {
        p11psk_err_set(err, P11PSK_ST_UNSUPPORTED, "unsupported digest id %d", md);
        return 0;
    }
    return 1;
}

/* out = H(a ‖ b) in software. */
static int sw_digest(p11psk_ladder *lad, int md, const uint8_t *a, size_t alen, const uint8_t *b,
                     size_t blen, uint8_t *out, p11psk_err *err)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    int ok = c != NULL && EVP_DigestInit_ex(c, lad->md[md], NULL) && EVP_DigestUpdate(c, a, alen) &&
             EVP_DigestUpdate(c, b, blen) && EVP_DigestFinal_ex(c, out, NULL);

    EVP_MD_CTX_free(c); /* cleanses the state */
    if (!ok)
        p11psk_err_set(err, P11PSK_ST_INTERNAL, "%s digest failed", p11psk_md_name(md));
    return ok ? P11PSK_ST_OK : P11PSK_ST_INTERNAL;
}

/* The token cannot digest this key, but reading it is allowed: worth a software retry. */
static int digest_key_refused(const p11psk_err *err)
{
    return err->status == P11PSK_ST_TOKEN &&
           (err->ckr == CKR_FUNCTION_NOT_SUPPORTED || err->ckr == CKR_KEY_INDIGESTIBLE ||
            err->ckr == CKR_KEY_FUNCTION_NOT_PERMITTED || err->ckr == CKR_MECHANISM_INVALID ||
            err->ckr == CKR_KEY_TYPE_INCONSISTENT);
}

/* out = H(prefix ‖ PSK): in the token, or in software from a readable key's value. */
static int digest_prefix_key(p11psk_ladder *lad, p11psk_token *tok, const p11psk_key *key, int md,
                             const uint8_t *prefix, size_t prefixlen, uint8_t *out, int *step,
                             p11psk_err *err)
{
    uint8_t *val;
    size_t vlen;
    int st;

    st = p11psk_token_digest_key(tok, md, prefix, prefixlen, key, out, err);
    if (st == P11PSK_ST_OK) {
        *step = P11PSK_STEP_TOKEN;
        return st;
    }
    if (!key->readable || !digest_key_refused(err))
        return st;
    if ((st = p11psk_token_key_value(tok, key, &val, &vlen, err)) != P11PSK_ST_OK)
        return st;
    st = sw_digest(lad, md, prefix, prefixlen, val, vlen, out, err);
    OPENSSL_secure_clear_free(val, vlen);
    *step = P11PSK_STEP_VALUE;
    return st;
}

int p11psk_ladder_tls13_early(p11psk_ladder *lad, p11psk_token *tok, const p11psk_key *key, int md,
                              uint8_t *es_out, int *step, p11psk_err *err)
{
    uint8_t pad[BLOCK_MAX], inner[MD_MAX];
    size_t bs = p11psk_md_block(md), hs = p11psk_md_size(md);
    int st, dummy;

    if (step == NULL)
        step = &dummy;
    *step = P11PSK_STEP_NONE;
    if (!md_ok(md, err))
        return err->status;
    if (p11psk_cache_get(lad->cache, key->id, key->idlen, key_fp(key), P11PSK_CACHE_ES, md, es_out,
                         hs)) {
        *step = P11PSK_STEP_CACHE;
        return P11PSK_ST_OK;
    }
    /* HMAC with an all-zero salt: the key block is zero, so the pads are the bare constants. */
    memset(pad, 0x36, bs);
    st = digest_prefix_key(lad, tok, key, md, pad, bs, inner, step, err);
    if (st == P11PSK_ST_OK) {
        memset(pad, 0x5c, bs);
        st = sw_digest(lad, md, pad, bs, inner, hs, es_out, err);
    }
    OPENSSL_cleanse(inner, sizeof(inner));
    if (st == P11PSK_ST_OK)
        p11psk_cache_put(lad->cache, key->id, key->idlen, key_fp(key), P11PSK_CACHE_ES, md, es_out,
                         hs);
    return st;
}

static int kdf_run(EVP_KDF *alg, OSSL_PARAM *params, uint8_t *out, size_t outlen, p11psk_err *err)
{
    EVP_KDF_CTX *kc = EVP_KDF_CTX_new(alg);
    int ok = kc != NULL && EVP_KDF_derive(kc, out, outlen, params) > 0;

    EVP_KDF_CTX_free(kc);
    if (!ok) {
        OPENSSL_cleanse(out, outlen);
        return p11psk_err_set(err, P11PSK_ST_INTERNAL, "%s derivation failed",
                              EVP_KDF_get0_name(alg));
    }
    return P11PSK_ST_OK;
}

static int label_is_derived(const uint8_t *label, size_t labellen)
{
    return labellen == 7 && memcmp(label, "derived", 7) == 0;
}

int p11psk_ladder_tls13_expand(p11psk_ladder *lad, p11psk_token *tok, const p11psk_key *key, int md,
                               const uint8_t *prefix, size_t prefixlen, const uint8_t *label,
                               size_t labellen, const uint8_t *data, size_t datalen, uint8_t *out,
                               size_t outlen, int *step, p11psk_err *err)
{
    uint8_t es[MD_MAX];
    int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY, st;
    OSSL_PARAM params[7], *p = params;

    /* Derive-Secret(ES, "derived") leads to the handshake secret: never hand it out. */
    if (label_is_derived(label, labellen))
        return p11psk_err_set(err, P11PSK_ST_UNSUPPORTED,
                              "expanding the early secret with label \"derived\" is refused");
    st = p11psk_ladder_tls13_early(lad, tok, key, md, es, step, err);
    if (st != P11PSK_ST_OK)
        return st;
    *p++ = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
    *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)p11psk_md_name(md), 0);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, es, p11psk_md_size(md));
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PREFIX, (void *)prefix, prefixlen);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_LABEL, (void *)label, labellen);
    if (data != NULL)
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_DATA, (void *)data, datalen);
    *p = OSSL_PARAM_construct_end();
    st = kdf_run(lad->tls13_kdf, params, out, outlen, err);
    OPENSSL_cleanse(es, sizeof(es));
    return st;
}

int p11psk_ladder_tls13_extract(p11psk_ladder *lad, p11psk_token *tok, const p11psk_key *key,
                                int md, const uint8_t *prefix, size_t prefixlen,
                                const uint8_t *label, size_t labellen, const uint8_t *ikm,
                                size_t ikmlen, uint8_t *out, int *step, p11psk_err *err)
{
    uint8_t es[MD_MAX];
    int mode = EVP_KDF_HKDF_MODE_EXTRACT_ONLY, st;
    OSSL_PARAM params[7], *p = params;

    st = p11psk_ladder_tls13_early(lad, tok, key, md, es, step, err);
    if (st != P11PSK_ST_OK)
        return st;
    *p++ = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
    *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)p11psk_md_name(md), 0);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, es, p11psk_md_size(md));
    if (ikm != NULL) /* absent: OpenSSL uses hash-length zeros (psk_ke) */
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikmlen);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PREFIX, (void *)prefix, prefixlen);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_LABEL, (void *)label, labellen);
    *p = OSSL_PARAM_construct_end();
    st = kdf_run(lad->tls13_kdf, params, out, p11psk_md_size(md), err);
    OPENSSL_cleanse(es, sizeof(es));
    return st;
}

size_t p11psk_ladder_premaster_head(const uint8_t *other, size_t otherlen, size_t keylen,
                                    uint8_t *out, size_t cap)
{
    /* Plain PSK: the client sized the zero block for the handle, the real key decides. */
    size_t n = p11psk_buf_is_zero(other, otherlen) ? keylen : otherlen;

    if (n > UINT16_MAX || keylen > UINT16_MAX || cap < 4 + n)
        return 0;
    p11psk_store_be16(out, (uint16_t)n);
    if (n == keylen && p11psk_buf_is_zero(other, otherlen))
        memset(out + 2, 0, n);
    else
        memcpy(out + 2, other, n);
    p11psk_store_be16(out + 2 + n, (uint16_t)keylen);
    return 4 + n;
}

size_t p11psk_ladder_tls12_min_len(int md, const uint8_t *other, size_t otherlen)
{
    size_t bs = p11psk_md_block(md);

    if (p11psk_buf_is_zero(other, otherlen)) /* 4 + 2L > bs */
        return (bs - 4) / 2 + 1;
    return otherlen + 4 >= bs ? 1 : bs - 4 - otherlen + 1; /* 4 + n + L > bs */
}

int p11psk_ladder_tls12_prf(p11psk_ladder *lad, p11psk_token *tok, const p11psk_key *key, int md,
                            const uint8_t *other, size_t otherlen, const uint8_t *seed,
                            size_t seedlen, uint8_t *out, size_t outlen, int *step, p11psk_err *err)
{
    size_t cap = 4 + (otherlen > key->len ? otherlen : key->len), headlen, seclen = 0;
    uint8_t hsec[MD_MAX], *head = NULL, *pm = NULL, *val = NULL, *secret = NULL;
    size_t vlen = 0, pmlen = 0;
    OSSL_PARAM params[4];
    int st, dummy;

    if (step == NULL)
        step = &dummy;
    *step = P11PSK_STEP_NONE;
    if (!md_ok(md, err))
        return err->status;
    if ((head = OPENSSL_malloc(cap)) == NULL)
        return p11psk_err_set(err, P11PSK_ST_INTERNAL, "out of memory");
    headlen = p11psk_ladder_premaster_head(other, otherlen, key->len, head, cap);
    if (headlen == 0) {
        st = p11psk_err_set(err, P11PSK_ST_BAD_REQUEST, "OTHER too long");
        goto out;
    }
    st = P11PSK_ST_NEED_READABLE;
    if (headlen + key->len > p11psk_md_block(md)) {
        /* HMAC keys with H(premaster) here, and the PSK is the premaster's tail. For plain
         * PSK the premaster depends on the PSK alone: cacheable. */
        int plain = p11psk_buf_is_zero(other, otherlen);

        if (plain && p11psk_cache_get(lad->cache, key->id, key->idlen, key_fp(key),
                                      P11PSK_CACHE_PMH, md, hsec, p11psk_md_size(md))) {
            *step = P11PSK_STEP_CACHE;
        } else {
            st = digest_prefix_key(lad, tok, key, md, head, headlen, hsec, step, err);
            if (st != P11PSK_ST_OK)
                goto out;
            if (plain)
                p11psk_cache_put(lad->cache, key->id, key->idlen, key_fp(key), P11PSK_CACHE_PMH, md,
                                 hsec, p11psk_md_size(md));
        }
        secret = hsec;
        seclen = p11psk_md_size(md);
    } else if (key->readable) {
        if ((st = p11psk_token_key_value(tok, key, &val, &vlen, err)) != P11PSK_ST_OK)
            goto out;
        pmlen = headlen + vlen;
        if ((pm = OPENSSL_secure_malloc(pmlen)) == NULL) {
            st = p11psk_err_set(err, P11PSK_ST_INTERNAL, "out of memory");
            goto out;
        }
        memcpy(pm, head, headlen);
        memcpy(pm + headlen, val, vlen);
        secret = pm;
        seclen = pmlen;
        *step = P11PSK_STEP_VALUE;
    } else {
        st = p11psk_err_set(err, P11PSK_ST_NEED_READABLE,
                            "TLS 1.2 PRF with %s needs the key value for a %zu-byte PSK ('%s'); "
                            "use a PSK of at least %zu bytes, use TLS 1.3, or provision the key "
                            "with `p11psk add --readable`",
                            p11psk_md_name(md), key->len, key->label,
                            p11psk_ladder_tls12_min_len(md, other, otherlen));
        goto out;
    }
    params[0] =
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)p11psk_md_name(md), 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, secret, seclen);
    params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, (void *)seed, seedlen);
    params[3] = OSSL_PARAM_construct_end();
    st = kdf_run(lad->tls1_prf, params, out, outlen, err);
out:
    OPENSSL_cleanse(hsec, sizeof(hsec));
    OPENSSL_clear_free(head, cap);
    if (pm != NULL)
        OPENSSL_secure_clear_free(pm, pmlen);
    if (val != NULL)
        OPENSSL_secure_clear_free(val, vlen);
    return st;
}
