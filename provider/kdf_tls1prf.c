/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TLS1-PRF (TLS 1.0-1.2 PRF) with p11psk handles.
 *
 * For PSK suites libssl passes SECRET = premaster = u16 n ‖ other(n) ‖ u16 m ‖ psk(m). When
 * psk is a PSK handle the master secret comes from p11pskd (TLS12_PRF), which rebuilds the
 * premaster around the real key. Every other call goes to another provider unchanged.
 */
#include "prov.h"

#include <stdint.h>

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include "p11psk/premaster.h"

#define ALG P11PSK_KDF_TLS1_PRF_NAME

static OSSL_FUNC_kdf_newctx_fn p11psk_tls1_prf_new;
static OSSL_FUNC_kdf_derive_fn p11psk_tls1_prf_derive;
static OSSL_FUNC_kdf_settable_ctx_params_fn p11psk_tls1_prf_settable_ctx_params;
static OSSL_FUNC_kdf_gettable_ctx_params_fn p11psk_tls1_prf_gettable_ctx_params;

const OSSL_PARAM p11psk_tls1_prf_settable[] = {
    OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_PROPERTIES, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SECRET, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SEED, NULL, 0), OSSL_PARAM_END};

const OSSL_PARAM p11psk_tls1_prf_gettable[] = {OSSL_PARAM_size_t(OSSL_KDF_PARAM_SIZE, NULL),
                                               OSSL_PARAM_END};

static void *p11psk_tls1_prf_new(void *provctx)
{
    return p11psk_kdf_new(provctx, P11PSK_KDF_TLS1_PRF);
}

static const OSSL_PARAM *p11psk_tls1_prf_settable_ctx_params(void *vctx, void *provctx)
{
    return p11psk_tls1_prf_settable;
}

static const OSSL_PARAM *p11psk_tls1_prf_gettable_ctx_params(void *vctx, void *provctx)
{
    return p11psk_tls1_prf_gettable;
}

static int p11psk_tls1_prf_derive(void *vctx, unsigned char *key, size_t keylen,
                                  const OSSL_PARAM params[])
{
    P11PSK_KDF_CTX *ctx = vctx;
    P11PSK_PROV_CTX *pc = ctx->provctx;
    const uint8_t *other = NULL, *psk = NULL;
    size_t otherlen = 0, psklen = 0;
    p11psk_frame fr;
    p11psk_handle h;
    int md;

    if (!p11psk_kdf_set_ctx_params(ctx, params))
        return 0;
    if (p11psk_bytes_has_magic(&ctx->secret)) {
        /* Never a raw secret; a valid handle belongs inside a PSK premaster, not here. */
        if (p11psk_kdf_decode(pc, ALG " secret", ctx->secret.p, ctx->secret.len, P11PSK_HT_PSK, 0,
                              &h) == 0)
            P11PSK_RAISE(pc, P11PSK_R_BAD_HANDLE,
                         "%s secret is a bare handle, not a PSK premaster secret", ALG);
        return 0;
    }
    if (p11psk_premaster_split(ctx->secret.p, ctx->secret.len, &other, &otherlen, &psk, &psklen) !=
            0 ||
        !p11psk_handle_has_magic(psk, psklen))
        return p11psk_kdf_delegate(ctx, key, keylen) == 0;

    p11psk_debug("%s: handle in premaster (other %zu bytes)", ALG, otherlen);
    if (p11psk_kdf_decode(pc, ALG " premaster PSK", psk, psklen, P11PSK_HT_PSK, 0, &h) != 0 ||
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
    return p11psk_svc_call(pc, &fr, P11PSK_T_OUT, key, keylen) == 0;
}

const OSSL_DISPATCH p11psk_tls1_prf_functions[] = {
    {OSSL_FUNC_KDF_NEWCTX, (void (*)(void))p11psk_tls1_prf_new},
    {OSSL_FUNC_KDF_DUPCTX, (void (*)(void))p11psk_kdf_dup},
    {OSSL_FUNC_KDF_FREECTX, (void (*)(void))p11psk_kdf_free},
    {OSSL_FUNC_KDF_RESET, (void (*)(void))p11psk_kdf_reset},
    {OSSL_FUNC_KDF_DERIVE, (void (*)(void))p11psk_tls1_prf_derive},
    {OSSL_FUNC_KDF_SETTABLE_CTX_PARAMS, (void (*)(void))p11psk_tls1_prf_settable_ctx_params},
    {OSSL_FUNC_KDF_SET_CTX_PARAMS, (void (*)(void))p11psk_kdf_set_ctx_params},
    {OSSL_FUNC_KDF_GETTABLE_CTX_PARAMS, (void (*)(void))p11psk_tls1_prf_gettable_ctx_params},
    {OSSL_FUNC_KDF_GET_CTX_PARAMS, (void (*)(void))p11psk_kdf_get_ctx_params},
    {0, NULL}};
