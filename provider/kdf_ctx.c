/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The algorithm table and the one context every KDF of the provider uses: new, free, reset,
 * dup, set and get. An algorithm's settable list decides which parameters its context reads
 * and passes on to the delegate, so a KDF only brings its lists, its derive and its dispatch.
 */
#include "prov.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#define TLS1_PRF_SEED_MAX 1024 /* as OpenSSL's TLS1_PRF_MAXBUF */

static const P11PSK_KDF_ALG kdf_algs[P11PSK_KDF_COUNT] = {
    [P11PSK_KDF_TLS13] = {P11PSK_KDF_TLS13_NAME, p11psk_tls13_kdf_settable,
                          p11psk_tls13_kdf_gettable},
    [P11PSK_KDF_TLS1_PRF] = {P11PSK_KDF_TLS1_PRF_NAME, p11psk_tls1_prf_settable,
                             p11psk_tls1_prf_gettable},
};

/*
 * Byte-string parameters, in the order they are read and passed on. append > 0: every
 * occurrence appends, up to that many bytes in all (SEED, as in OpenSSL's TLS1-PRF).
 */
static const struct {
    const char *key;
    size_t off;
    size_t append;
} bytes_params[] = {
    {OSSL_KDF_PARAM_KEY, offsetof(P11PSK_KDF_CTX, key), 0},
    {OSSL_KDF_PARAM_SALT, offsetof(P11PSK_KDF_CTX, salt), 0},
    {OSSL_KDF_PARAM_PREFIX, offsetof(P11PSK_KDF_CTX, prefix), 0},
    {OSSL_KDF_PARAM_LABEL, offsetof(P11PSK_KDF_CTX, label), 0},
    {OSSL_KDF_PARAM_DATA, offsetof(P11PSK_KDF_CTX, data), 0},
    {OSSL_KDF_PARAM_SECRET, offsetof(P11PSK_KDF_CTX, secret), 0},
    {OSSL_KDF_PARAM_SEED, offsetof(P11PSK_KDF_CTX, seed), TLS1_PRF_SEED_MAX},
};

#define N_BYTES_PARAMS (sizeof(bytes_params) / sizeof(bytes_params[0]))
/* Mode, digest, properties, the byte strings and the end marker. */
_Static_assert(3 + N_BYTES_PARAMS + 1 <= P11PSK_KDF_PARAMS_MAX, "P11PSK_KDF_PARAMS_MAX too small");

static p11psk_bytes *bytes_field(P11PSK_KDF_CTX *ctx, size_t i)
{
    return (p11psk_bytes *)((char *)ctx + bytes_params[i].off);
}

static const p11psk_bytes *bytes_cfield(const P11PSK_KDF_CTX *ctx, size_t i)
{
    return (const p11psk_bytes *)((const char *)ctx + bytes_params[i].off);
}

const P11PSK_KDF_ALG *p11psk_kdf_alg(int id)
{
    return id >= 0 && id < P11PSK_KDF_COUNT ? &kdf_algs[id] : NULL;
}

int p11psk_kdf_takes(const P11PSK_KDF_CTX *ctx, const char *key)
{
    return OSSL_PARAM_locate_const(ctx->alg->settable, key) != NULL;
}

void *p11psk_kdf_new(void *provctx, int id)
{
    const P11PSK_KDF_ALG *alg = p11psk_kdf_alg(id);
    P11PSK_KDF_CTX *ctx;

    if (alg == NULL) {
        P11PSK_RAISE((P11PSK_PROV_CTX *)provctx, P11PSK_R_INTERNAL, "unknown KDF %d", id);
        return NULL;
    }
    if ((ctx = OPENSSL_zalloc(sizeof(*ctx))) == NULL)
        return NULL;
    ctx->provctx = provctx;
    ctx->id = id;
    ctx->alg = alg;
    ctx->mode = EVP_KDF_HKDF_MODE_EXTRACT_AND_EXPAND;
    return ctx;
}

void p11psk_kdf_reset(void *vctx)
{
    P11PSK_KDF_CTX *ctx = vctx;
    P11PSK_PROV_CTX *provctx = ctx->provctx;
    int id = ctx->id;
    size_t i;

    OPENSSL_free(ctx->digest);
    OPENSSL_free(ctx->propq);
    /* Keys, secrets and the early-secret handles: cleansed by p11psk_bytes_clear. */
    for (i = 0; i < N_BYTES_PARAMS; i++)
        p11psk_bytes_clear(bytes_field(ctx, i));
    memset(ctx, 0, sizeof(*ctx));
    ctx->provctx = provctx;
    ctx->id = id;
    ctx->alg = &kdf_algs[id];
    ctx->mode = EVP_KDF_HKDF_MODE_EXTRACT_AND_EXPAND;
}

void p11psk_kdf_free(void *vctx)
{
    if (vctx == NULL)
        return;
    p11psk_kdf_reset(vctx);
    OPENSSL_free(vctx);
}

void *p11psk_kdf_dup(void *vsrc)
{
    const P11PSK_KDF_CTX *src = vsrc;
    P11PSK_KDF_CTX *dst = p11psk_kdf_new(src->provctx, src->id);
    size_t i;

    if (dst == NULL)
        return NULL;
    dst->mode = src->mode;
    if (p11psk_str_dup(&dst->digest, src->digest) != 0 ||
        p11psk_str_dup(&dst->propq, src->propq) != 0)
        goto err;
    for (i = 0; i < N_BYTES_PARAMS; i++)
        if (p11psk_bytes_dup(bytes_field(dst, i), bytes_cfield(src, i)) != 0)
            goto err;
    return dst;
err:
    p11psk_kdf_free(dst);
    return NULL;
}

/* Mode as an int or as OpenSSL's mode names, like the built-in KDF. */
static int set_mode(P11PSK_KDF_CTX *ctx, const OSSL_PARAM *p)
{
    int mode;

    if (p->data_type == OSSL_PARAM_UTF8_STRING) {
        if (p->data == NULL)
            return -1;
        if (strcasecmp(p->data, "EXTRACT_AND_EXPAND") == 0)
            mode = EVP_KDF_HKDF_MODE_EXTRACT_AND_EXPAND;
        else if (strcasecmp(p->data, "EXTRACT_ONLY") == 0)
            mode = EVP_KDF_HKDF_MODE_EXTRACT_ONLY;
        else if (strcasecmp(p->data, "EXPAND_ONLY") == 0)
            mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
        else
            return -1;
    } else if (!OSSL_PARAM_get_int(p, &mode)) {
        return -1;
    }
    if (mode < EVP_KDF_HKDF_MODE_EXTRACT_AND_EXPAND || mode > EVP_KDF_HKDF_MODE_EXPAND_ONLY)
        return -1;
    ctx->mode = mode;
    return 0;
}

/* params' entry for key, or NULL also when ctx's algorithm does not take key. */
static const OSSL_PARAM *locate(const P11PSK_KDF_CTX *ctx, const OSSL_PARAM params[],
                                const char *key)
{
    return p11psk_kdf_takes(ctx, key) ? OSSL_PARAM_locate_const(params, key) : NULL;
}

int p11psk_kdf_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    P11PSK_KDF_CTX *ctx = vctx;
    const OSSL_PARAM *p;
    size_t i;

    if (params == NULL)
        return 1;
    if ((p = locate(ctx, params, OSSL_KDF_PARAM_MODE)) != NULL && set_mode(ctx, p) != 0) {
        P11PSK_RAISE(ctx->provctx, P11PSK_R_BAD_PARAM, "%s: invalid mode", ctx->alg->name);
        return 0;
    }
    if ((p = locate(ctx, params, OSSL_KDF_PARAM_DIGEST)) != NULL &&
        p11psk_str_set(&ctx->digest, p) != 0)
        goto bad;
    if ((p = locate(ctx, params, OSSL_KDF_PARAM_PROPERTIES)) != NULL &&
        p11psk_str_set(&ctx->propq, p) != 0)
        goto bad;
    for (i = 0; i < N_BYTES_PARAMS; i++) {
        const char *key = bytes_params[i].key;
        p11psk_bytes *b = bytes_field(ctx, i);

        if ((p = locate(ctx, params, key)) == NULL)
            continue;
        if (bytes_params[i].append == 0) {
            if (p11psk_bytes_set(b, p) != 0)
                goto bad;
            continue;
        }
        for (; p != NULL; p = OSSL_PARAM_locate_const(p + 1, key))
            if (p11psk_bytes_append(b, p, bytes_params[i].append) != 0)
                goto bad;
    }
    return 1;
bad:
    P11PSK_RAISE(ctx->provctx, P11PSK_R_BAD_PARAM, "%s: cannot read parameter %s", ctx->alg->name,
                 p->key);
    return 0;
}

/* Output size: the hash length for extraction, unbounded otherwise (as OpenSSL's HKDF). */
static size_t kdf_size(const P11PSK_KDF_CTX *ctx)
{
    EVP_MD *md;
    size_t sz;
    int s;

    if (ctx->mode != EVP_KDF_HKDF_MODE_EXTRACT_ONLY)
        return SIZE_MAX;
    if (ctx->digest == NULL) {
        P11PSK_RAISE(ctx->provctx, P11PSK_R_MISSING_PARAM, "%s: size needs a digest",
                     ctx->alg->name);
        return 0;
    }
    if ((sz = p11psk_md_size(p11psk_md_from_name(ctx->digest))) != 0)
        return sz;
    md = EVP_MD_fetch(ctx->provctx->libctx, ctx->digest, ctx->propq);
    s = md != NULL ? EVP_MD_get_size(md) : 0;
    EVP_MD_free(md);
    return s > 0 ? (size_t)s : 0;
}

int p11psk_kdf_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    const P11PSK_KDF_CTX *ctx = vctx;
    const OSSL_PARAM *gettable = ctx->alg->gettable;
    OSSL_PARAM *p;

    if (OSSL_PARAM_locate_const(gettable, OSSL_KDF_PARAM_SIZE) != NULL &&
        (p = OSSL_PARAM_locate(params, OSSL_KDF_PARAM_SIZE)) != NULL) {
        size_t sz = kdf_size(ctx);

        if (sz == 0 || !OSSL_PARAM_set_size_t(p, sz))
            return 0;
    }
    /* Gettable in OpenSSL's HKDF family; TLS13-KDF never takes an info, so it is empty. */
    if (OSSL_PARAM_locate_const(gettable, OSSL_KDF_PARAM_INFO) != NULL &&
        (p = OSSL_PARAM_locate(params, OSSL_KDF_PARAM_INFO)) != NULL)
        p->return_size = 0;
    return 1;
}

void p11psk_kdf_ctx_params(const P11PSK_KDF_CTX *ctx, OSSL_PARAM params[])
{
    OSSL_PARAM *p = params;
    size_t i;

    /* The delegate reads the int; the cast only satisfies the OSSL_PARAM type. */
    if (p11psk_kdf_takes(ctx, OSSL_KDF_PARAM_MODE))
        *p++ = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, (int *)&ctx->mode);
    if (ctx->digest != NULL)
        *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, ctx->digest, 0);
    if (ctx->propq != NULL)
        *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_PROPERTIES, ctx->propq, 0);
    for (i = 0; i < N_BYTES_PARAMS; i++) {
        const p11psk_bytes *b = bytes_cfield(ctx, i);

        if (b->p != NULL)
            *p++ = OSSL_PARAM_construct_octet_string(bytes_params[i].key, b->p, b->len);
    }
    *p = OSSL_PARAM_construct_end();
}
