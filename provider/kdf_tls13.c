/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TLS13-KDF (the HKDF variant libssl uses for TLS 1.3), with p11psk handles.
 *
 * libssl's calls that involve a PSK handle:
 *   EXTRACT_ONLY, KEY = PSK handle, no SALT      -> early secret: an early-secret (ES)
 *                                                   placeholder, made locally and mapped
 *                                                   back to the PSK handle (keymap.c)
 *   EXPAND_ONLY,  KEY = ES placeholder            -> binder/early keys: TLS13_EXPAND
 *   EXTRACT_ONLY, SALT = ES placeholder, KEY = (EC)DHE -> handshake secret: TLS13_EXTRACT
 * EXPAND and EXTRACT send p11pskd the PSK handle; placeholders never leave the process.
 * Everything without a handle goes to another provider unchanged.
 */
#include "prov.h"

#include <stdint.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#define ALG P11PSK_KDF_TLS13_NAME

static OSSL_FUNC_kdf_newctx_fn p11psk_tls13_kdf_new;
static OSSL_FUNC_kdf_derive_fn p11psk_tls13_kdf_derive;
static OSSL_FUNC_kdf_settable_ctx_params_fn p11psk_tls13_kdf_settable_ctx_params;
static OSSL_FUNC_kdf_gettable_ctx_params_fn p11psk_tls13_kdf_gettable_ctx_params;

const OSSL_PARAM p11psk_tls13_kdf_settable[] = {
    OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_MODE, NULL, 0),
    OSSL_PARAM_int(OSSL_KDF_PARAM_MODE, NULL),
    OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_PROPERTIES, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_KDF_PARAM_KEY, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SALT, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_KDF_PARAM_PREFIX, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_KDF_PARAM_LABEL, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_KDF_PARAM_DATA, NULL, 0),
    OSSL_PARAM_END};

const OSSL_PARAM p11psk_tls13_kdf_gettable[] = {
    OSSL_PARAM_size_t(OSSL_KDF_PARAM_SIZE, NULL),
    OSSL_PARAM_octet_string(OSSL_KDF_PARAM_INFO, NULL, 0), OSSL_PARAM_END};

static void *p11psk_tls13_kdf_new(void *provctx)
{
    return p11psk_kdf_new(provctx, P11PSK_KDF_TLS13);
}

static const OSSL_PARAM *p11psk_tls13_kdf_settable_ctx_params(void *vctx, void *provctx)
{
    return p11psk_tls13_kdf_settable;
}

static const OSSL_PARAM *p11psk_tls13_kdf_gettable_ctx_params(void *vctx, void *provctx)
{
    return p11psk_tls13_kdf_gettable;
}

static const char *mode_str(int mode)
{
    switch (mode) {
    case EVP_KDF_HKDF_MODE_EXTRACT_AND_EXPAND:
        return "EXTRACT_AND_EXPAND";
    case EVP_KDF_HKDF_MODE_EXTRACT_ONLY:
        return "EXTRACT_ONLY";
    case EVP_KDF_HKDF_MODE_EXPAND_ONLY:
        return "EXPAND_ONLY";
    }
    return "?";
}

static int need(const P11PSK_KDF_CTX *ctx, const p11psk_bytes *b, const char *name)
{
    if (b->p != NULL)
        return 0;
    P11PSK_RAISE(ctx->provctx, P11PSK_R_MISSING_PARAM, "%s with a p11psk handle needs %s", ALG,
                 name);
    return -1;
}

static int check_hash_outlen(const P11PSK_KDF_CTX *ctx, int md, size_t outlen)
{
    if (outlen == p11psk_md_size(md))
        return 0;
    P11PSK_RAISE(ctx->provctx, P11PSK_R_BAD_PARAM,
                 "%s extract with a p11psk handle: output length %zu is not the %s length %zu", ALG,
                 outlen, p11psk_md_name(md), p11psk_md_size(md));
    return -1;
}

/*
 * Early secret of a PSK handle: an ES placeholder stands in for it (handle.h). It is made
 * here without a round trip to p11pskd; the key, the handle's tag and the ACL are checked by
 * the expand or extract that follows, and a failure there names the cause just the same.
 */
static int tls13_early(P11PSK_KDF_CTX *ctx, unsigned char *out, size_t outlen)
{
    P11PSK_PROV_CTX *pc = ctx->provctx;
    uint8_t psk[P11PSK_HANDLE_LEN];
    p11psk_handle h;
    int md;

    if ((md = p11psk_kdf_md(pc, ALG, ctx->digest)) == P11PSK_MD_NONE ||
        p11psk_kdf_decode(pc, ALG " key", ctx->key.p, ctx->key.len, P11PSK_HT_PSK, 0, &h) != 0 ||
        check_hash_outlen(ctx, md, outlen) != 0)
        return -1;
    /* The binary form whether the application gave binary or hex: one map entry per key. */
    if (p11psk_handle_encode(&h, psk, sizeof(psk)) != 0 ||
        p11psk_handle_es_make(psk, md, out, outlen) != 0) {
        P11PSK_RAISE(pc, P11PSK_R_INTERNAL, "cannot encode a %s early-secret handle",
                     p11psk_md_name(md));
        return -1;
    }
    p11psk_keymap_put(pc->keymap, out + P11PSK_ES_HEAD_LEN, outlen - P11PSK_ES_HEAD_LEN, psk);
    p11psk_debug("%s: early-secret handle made locally", ALG);
    return 0;
}

/* The PSK handle an ES placeholder (decoded into h, for md) was made from. */
static int es_psk(const P11PSK_KDF_CTX *ctx, const p11psk_handle *h, int md, const char *what,
                  uint8_t psk[P11PSK_HANDLE_LEN])
{
    if (p11psk_keymap_get(ctx->provctx->keymap, h->ref, p11psk_md_size(md) - P11PSK_ES_HEAD_LEN,
                          psk) == 0)
        return 0;
    P11PSK_RAISE(ctx->provctx, P11PSK_R_BAD_HANDLE,
                 "%s: early-secret handle not made by this process's p11psk provider", what);
    return -1;
}

/* HKDF-Expand-Label from an ES placeholder (binder keys, early traffic, early exporter). */
static int tls13_expand(P11PSK_KDF_CTX *ctx, unsigned char *out, size_t outlen)
{
    P11PSK_PROV_CTX *pc = ctx->provctx;
    uint8_t psk[P11PSK_HANDLE_LEN];
    p11psk_bcache_ticket bt;
    p11psk_frame fr;
    p11psk_handle h;
    int md;

    if ((md = p11psk_kdf_md(pc, ALG, ctx->digest)) == P11PSK_MD_NONE ||
        p11psk_kdf_decode(pc, ALG " key", ctx->key.p, ctx->key.len, P11PSK_HT_TLS13_ES, md, &h) !=
            0 ||
        es_psk(ctx, &h, md, ALG " key", psk) != 0 || need(ctx, &ctx->prefix, "a prefix") != 0 ||
        need(ctx, &ctx->label, "a label") != 0)
        return -1;
    if (outlen == 0 || outlen > P11PSK_WIRE_OUT_MAX) {
        P11PSK_RAISE(pc, P11PSK_R_UNSUPPORTED, "%s expand: output length %zu (1..%d supported)",
                     ALG, outlen, P11PSK_WIRE_OUT_MAX);
        return -1;
    }
    /* Binder keys only, and only after the checks above (bcache.c). */
    if (p11psk_bcache_get(pc->bcache, ctx, md, out, outlen, &bt) == 0)
        return 0;
    p11psk_frame_start(&fr, P11PSK_OP_TLS13_EXPAND);
    p11psk_frame_add_u8(&fr, P11PSK_T_DIGEST, (uint8_t)md);
    p11psk_frame_add(&fr, P11PSK_T_HANDLE, psk, sizeof(psk));
    p11psk_frame_add(&fr, P11PSK_T_PREFIX, ctx->prefix.p, ctx->prefix.len);
    p11psk_frame_add(&fr, P11PSK_T_LABEL, ctx->label.p, ctx->label.len);
    if (ctx->data.p != NULL)
        p11psk_frame_add(&fr, P11PSK_T_DATA, ctx->data.p, ctx->data.len);
    p11psk_frame_add_u16(&fr, P11PSK_T_OUTLEN, (uint16_t)outlen);
    if (p11psk_svc_call(pc, &fr, P11PSK_T_OUT, out, outlen) != 0)
        return -1;
    p11psk_bcache_put(pc->bcache, ctx, md, out, outlen, &bt);
    return 0;
}

/* Handshake secret: salt = ES placeholder, key = (EC)DHE secret or absent (zeros). */
static int tls13_extract(P11PSK_KDF_CTX *ctx, unsigned char *out, size_t outlen)
{
    P11PSK_PROV_CTX *pc = ctx->provctx;
    uint8_t psk[P11PSK_HANDLE_LEN];
    p11psk_frame fr;
    p11psk_handle h;
    int md;

    if (p11psk_bytes_has_magic(&ctx->key)) {
        P11PSK_RAISE(pc, P11PSK_R_HANDLE_MODE,
                     "%s extract: a handle as key together with an early-secret handle as salt",
                     ALG);
        return -1;
    }
    if ((md = p11psk_kdf_md(pc, ALG, ctx->digest)) == P11PSK_MD_NONE ||
        p11psk_kdf_decode(pc, ALG " salt", ctx->salt.p, ctx->salt.len, P11PSK_HT_TLS13_ES, md,
                          &h) != 0 ||
        es_psk(ctx, &h, md, ALG " salt", psk) != 0 || need(ctx, &ctx->prefix, "a prefix") != 0 ||
        need(ctx, &ctx->label, "a label") != 0 || check_hash_outlen(ctx, md, outlen) != 0)
        return -1;
    p11psk_frame_start(&fr, P11PSK_OP_TLS13_EXTRACT);
    p11psk_frame_add_u8(&fr, P11PSK_T_DIGEST, (uint8_t)md);
    p11psk_frame_add(&fr, P11PSK_T_HANDLE, psk, sizeof(psk));
    p11psk_frame_add(&fr, P11PSK_T_PREFIX, ctx->prefix.p, ctx->prefix.len);
    p11psk_frame_add(&fr, P11PSK_T_LABEL, ctx->label.p, ctx->label.len);
    if (ctx->key.p != NULL)
        p11psk_frame_add(&fr, P11PSK_T_IKM, ctx->key.p, ctx->key.len);
    return p11psk_svc_call(pc, &fr, P11PSK_T_OUT, out, outlen);
}

static int p11psk_tls13_kdf_derive(void *vctx, unsigned char *key, size_t keylen,
                                   const OSSL_PARAM params[])
{
    P11PSK_KDF_CTX *ctx = vctx;
    int key_h, salt_h, data_h;

    if (!p11psk_kdf_set_ctx_params(ctx, params))
        return 0;
    key_h = p11psk_bytes_has_magic(&ctx->key);
    salt_h = p11psk_bytes_has_magic(&ctx->salt);
    data_h = p11psk_bytes_has_magic(&ctx->data);
    if (!key_h && !salt_h && !data_h)
        return p11psk_kdf_delegate(ctx, key, keylen) == 0;

    p11psk_debug("%s: handle in %s, mode %s", ALG,
                 key_h    ? "key"
                 : salt_h ? "salt"
                          : "data",
                 mode_str(ctx->mode));
    if (!data_h && ctx->mode == EVP_KDF_HKDF_MODE_EXTRACT_ONLY) {
        if (salt_h)
            return tls13_extract(ctx, key, keylen) == 0;
        if (ctx->salt.p == NULL)
            return tls13_early(ctx, key, keylen) == 0;
    }
    if (!data_h && !salt_h && ctx->mode == EVP_KDF_HKDF_MODE_EXPAND_ONLY)
        return tls13_expand(ctx, key, keylen) == 0;
    /* A handle is never raw key material, so no fallback to software here. */
    P11PSK_RAISE(ctx->provctx, P11PSK_R_HANDLE_MODE, "%s %s with a handle in %s%s", ALG,
                 mode_str(ctx->mode),
                 data_h            ? "data"
                 : key_h && salt_h ? "key and salt"
                 : key_h           ? "key"
                                   : "salt",
                 key_h && !salt_h && ctx->salt.p != NULL ? " (with a salt)" : "");
    return 0;
}

const OSSL_DISPATCH p11psk_tls13_kdf_functions[] = {
    {OSSL_FUNC_KDF_NEWCTX, (void (*)(void))p11psk_tls13_kdf_new},
    {OSSL_FUNC_KDF_DUPCTX, (void (*)(void))p11psk_kdf_dup},
    {OSSL_FUNC_KDF_FREECTX, (void (*)(void))p11psk_kdf_free},
    {OSSL_FUNC_KDF_RESET, (void (*)(void))p11psk_kdf_reset},
    {OSSL_FUNC_KDF_DERIVE, (void (*)(void))p11psk_tls13_kdf_derive},
    {OSSL_FUNC_KDF_SETTABLE_CTX_PARAMS, (void (*)(void))p11psk_tls13_kdf_settable_ctx_params},
    {OSSL_FUNC_KDF_SET_CTX_PARAMS, (void (*)(void))p11psk_kdf_set_ctx_params},
    {OSSL_FUNC_KDF_GETTABLE_CTX_PARAMS, (void (*)(void))p11psk_tls13_kdf_gettable_ctx_params},
    {OSSL_FUNC_KDF_GET_CTX_PARAMS, (void (*)(void))p11psk_kdf_get_ctx_params},
    {0, NULL}};
