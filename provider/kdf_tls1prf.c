/*
 * TLS1-PRF (TLS 1.0-1.2 PRF) with p11psk handles.
 *
 * For PSK suites libssl passes SECRET = premaster = u16 n ‖ other(n) ‖ u16 m ‖ psk(m). When
 * psk is a PSK handle the master secret comes from p11pskd (TLS12_PRF), which rebuilds the
 * premaster around the real key. Every other call goes to another provider unchanged.
 */
#include "prov.h"

#include <stdint.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include "p11psk/premaster.h"

#define ALG "TLS1-PRF"
#define TLS1_PRF_SEED_MAX 1024 /* as OpenSSL's TLS1_PRF_MAXBUF */

typedef struct {
    P11PSK_PROV_CTX *provctx;
    char *digest;
    char *propq;
    p11psk_bytes secret;
    p11psk_bytes seed; /* SEED params concatenate */
} P11PSK_TLS1_PRF_CTX;

static OSSL_FUNC_kdf_newctx_fn p11psk_tls1_prf_new;
static OSSL_FUNC_kdf_dupctx_fn p11psk_tls1_prf_dup;
static OSSL_FUNC_kdf_freectx_fn p11psk_tls1_prf_free;
static OSSL_FUNC_kdf_reset_fn p11psk_tls1_prf_reset;
static OSSL_FUNC_kdf_derive_fn p11psk_tls1_prf_derive;
static OSSL_FUNC_kdf_settable_ctx_params_fn p11psk_tls1_prf_settable_ctx_params;
static OSSL_FUNC_kdf_set_ctx_params_fn p11psk_tls1_prf_set_ctx_params;
static OSSL_FUNC_kdf_gettable_ctx_params_fn p11psk_tls1_prf_gettable_ctx_params;
static OSSL_FUNC_kdf_get_ctx_params_fn p11psk_tls1_prf_get_ctx_params;

static void *p11psk_tls1_prf_new(void *provctx)
{
    P11PSK_TLS1_PRF_CTX *ctx = OPENSSL_zalloc(sizeof(*ctx));

    if (ctx != NULL)
        ctx->provctx = provctx;
    return ctx;
}

static void p11psk_tls1_prf_reset(void *vctx)
{
    P11PSK_TLS1_PRF_CTX *ctx = vctx;
    P11PSK_PROV_CTX *provctx = ctx->provctx;

    OPENSSL_free(ctx->digest);
    OPENSSL_free(ctx->propq);
    p11psk_bytes_clear(&ctx->secret);
    p11psk_bytes_clear(&ctx->seed);
    memset(ctx, 0, sizeof(*ctx));
    ctx->provctx = provctx;
}

static void p11psk_tls1_prf_free(void *vctx)
{
    if (vctx == NULL)
        return;
    p11psk_tls1_prf_reset(vctx);
    OPENSSL_free(vctx);
}

static void *p11psk_tls1_prf_dup(void *vsrc)
{
    const P11PSK_TLS1_PRF_CTX *src = vsrc;
    P11PSK_TLS1_PRF_CTX *dst = p11psk_tls1_prf_new(src->provctx);

    if (dst == NULL)
        return NULL;
    if (!p11psk_str_dup(&dst->digest, src->digest) || !p11psk_str_dup(&dst->propq, src->propq) ||
        !p11psk_bytes_dup(&dst->secret, &src->secret) ||
        !p11psk_bytes_dup(&dst->seed, &src->seed)) {
        p11psk_tls1_prf_free(dst);
        return NULL;
    }
    return dst;
}

static int p11psk_tls1_prf_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    P11PSK_TLS1_PRF_CTX *ctx = vctx;
    const OSSL_PARAM *p;

    if (params == NULL)
        return 1;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_DIGEST)) != NULL &&
        !p11psk_str_set(&ctx->digest, p))
        goto bad;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_PROPERTIES)) != NULL &&
        !p11psk_str_set(&ctx->propq, p))
        goto bad;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_SECRET)) != NULL &&
        !p11psk_bytes_set(&ctx->secret, p))
        goto bad;
    /* Every SEED param appends, as in OpenSSL's TLS1-PRF. */
    for (p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_SEED); p != NULL;
         p = OSSL_PARAM_locate_const(p + 1, OSSL_KDF_PARAM_SEED))
        if (!p11psk_bytes_append(&ctx->seed, p, TLS1_PRF_SEED_MAX))
            goto bad;
    return 1;
bad:
    P11PSK_RAISE(ctx->provctx, P11PSK_R_BAD_PARAM, "%s: cannot read parameter %s", ALG, p->key);
    return 0;
}

static const OSSL_PARAM *p11psk_tls1_prf_settable_ctx_params(void *vctx, void *provctx)
{
    static const OSSL_PARAM settable[] = {
        OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_PROPERTIES, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_DIGEST, NULL, 0),
        OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SECRET, NULL, 0),
        OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SEED, NULL, 0), OSSL_PARAM_END};

    return settable;
}

static int p11psk_tls1_prf_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    OSSL_PARAM *p;

    if ((p = OSSL_PARAM_locate(params, OSSL_KDF_PARAM_SIZE)) != NULL)
        return OSSL_PARAM_set_size_t(p, SIZE_MAX);
    return 1;
}

static const OSSL_PARAM *p11psk_tls1_prf_gettable_ctx_params(void *vctx, void *provctx)
{
    static const OSSL_PARAM gettable[] = {OSSL_PARAM_size_t(OSSL_KDF_PARAM_SIZE, NULL),
                                          OSSL_PARAM_END};

    return gettable;
}

static int tls1_prf_delegate(P11PSK_TLS1_PRF_CTX *ctx, unsigned char *out, size_t outlen)
{
    OSSL_PARAM params[5], *p = params;

    if (ctx->digest != NULL)
        *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, ctx->digest, 0);
    if (ctx->propq != NULL)
        *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_PROPERTIES, ctx->propq, 0);
    if (ctx->secret.p != NULL)
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, ctx->secret.p,
                                                 ctx->secret.len);
    if (ctx->seed.p != NULL)
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, ctx->seed.p, ctx->seed.len);
    *p = OSSL_PARAM_construct_end();
    return p11psk_kdf_delegate(ctx->provctx, ALG, params, out, outlen);
}

static int p11psk_tls1_prf_derive(void *vctx, unsigned char *key, size_t keylen,
                                  const OSSL_PARAM params[])
{
    P11PSK_TLS1_PRF_CTX *ctx = vctx;
    P11PSK_PROV_CTX *pc = ctx->provctx;
    const uint8_t *other = NULL, *psk = NULL;
    size_t otherlen = 0, psklen = 0;
    p11psk_frame fr;
    p11psk_handle h;
    int md;

    if (!p11psk_tls1_prf_set_ctx_params(ctx, params))
        return 0;
    if (p11psk_bytes_has_magic(&ctx->secret)) {
        /* Never a raw secret; a valid handle belongs inside a PSK premaster, not here. */
        if (p11psk_kdf_decode(pc, ALG " secret", ctx->secret.p, ctx->secret.len, P11PSK_HT_PSK, 0,
                              &h))
            P11PSK_RAISE(pc, P11PSK_R_BAD_HANDLE,
                         "%s secret is a bare handle, not a PSK premaster secret", ALG);
        return 0;
    }
    if (p11psk_premaster_split(ctx->secret.p, ctx->secret.len, &other, &otherlen, &psk,
                                &psklen) != 0 ||
        !p11psk_handle_has_magic(psk, psklen))
        return tls1_prf_delegate(ctx, key, keylen);

    p11psk_debug("%s: handle in premaster (other %zu bytes)", ALG, otherlen);
    if (!p11psk_kdf_decode(pc, ALG " premaster PSK", psk, psklen, P11PSK_HT_PSK, 0, &h) ||
        (md = p11psk_kdf_md(pc, ALG, ctx->digest)) == P11PSK_MD_NONE)
        return 0;
    if (ctx->seed.p == NULL || ctx->seed.len == 0) {
        P11PSK_RAISE(pc, P11PSK_R_MISSING_PARAM, "%s with a p11psk handle needs a seed", ALG);
        return 0;
    }
    if (keylen == 0 || keylen > P11PSK_WIRE_OUT_MAX) {
        P11PSK_RAISE(pc, P11PSK_R_UNSUPPORTED, "%s: output length %zu (1..%d supported)", ALG,
                     keylen, P11PSK_WIRE_OUT_MAX);
        return 0;
    }
    p11psk_frame_start(&fr, P11PSK_OP_TLS12_PRF);
    p11psk_frame_add_u8(&fr, P11PSK_T_DIGEST, (uint8_t)md);
    p11psk_frame_add(&fr, P11PSK_T_HANDLE, psk, psklen);
    p11psk_frame_add(&fr, P11PSK_T_OTHER, other, otherlen);
    p11psk_frame_add(&fr, P11PSK_T_SEED, ctx->seed.p, ctx->seed.len);
    p11psk_frame_add_u16(&fr, P11PSK_T_OUTLEN, (uint16_t)keylen);
    return p11psk_svc_call(pc, &fr, P11PSK_T_OUT, key, keylen);
}

const OSSL_DISPATCH p11psk_tls1_prf_functions[] = {
    {OSSL_FUNC_KDF_NEWCTX, (void (*)(void))p11psk_tls1_prf_new},
    {OSSL_FUNC_KDF_DUPCTX, (void (*)(void))p11psk_tls1_prf_dup},
    {OSSL_FUNC_KDF_FREECTX, (void (*)(void))p11psk_tls1_prf_free},
    {OSSL_FUNC_KDF_RESET, (void (*)(void))p11psk_tls1_prf_reset},
    {OSSL_FUNC_KDF_DERIVE, (void (*)(void))p11psk_tls1_prf_derive},
    {OSSL_FUNC_KDF_SETTABLE_CTX_PARAMS, (void (*)(void))p11psk_tls1_prf_settable_ctx_params},
    {OSSL_FUNC_KDF_SET_CTX_PARAMS, (void (*)(void))p11psk_tls1_prf_set_ctx_params},
    {OSSL_FUNC_KDF_GETTABLE_CTX_PARAMS, (void (*)(void))p11psk_tls1_prf_gettable_ctx_params},
    {OSSL_FUNC_KDF_GET_CTX_PARAMS, (void (*)(void))p11psk_tls1_prf_get_ctx_params},
    {0, NULL}};
