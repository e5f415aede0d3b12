/* SPDX-License-Identifier: Apache-2.0 */
/* What every KDF shares: parameter storage, handle checks, delegation to other providers. */
#include "prov.h"

#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/provider.h>

void p11psk_bytes_clear(p11psk_bytes *b)
{
    /* Keys, salts and secrets pass through here: always cleanse. */
    OPENSSL_clear_free(b->p, b->len);
    b->p = NULL;
    b->len = 0;
}

int p11psk_bytes_set(p11psk_bytes *b, const OSSL_PARAM *p)
{
    void *v = NULL;
    size_t len = 0;

    p11psk_bytes_clear(b);
    if (p->data_type != OSSL_PARAM_OCTET_STRING)
        return -1;
    if (p->data == NULL || p->data_size == 0) {
        /* Present but empty: keep a non-NULL pointer so "set" stays distinguishable. */
        b->p = OPENSSL_zalloc(1);
        return b->p != NULL ? 0 : -1;
    }
    if (!OSSL_PARAM_get_octet_string(p, &v, 0, &len))
        return -1;
    b->p = v;
    b->len = len;
    return 0;
}

int p11psk_bytes_append(p11psk_bytes *b, const OSSL_PARAM *p, size_t max)
{
    const void *v = NULL;
    unsigned char *n;
    size_t len = 0;

    if (p->data == NULL || p->data_size == 0)
        return p->data_type == OSSL_PARAM_OCTET_STRING ? 0 : -1;
    if (!OSSL_PARAM_get_octet_string_ptr(p, &v, &len) || len > max - b->len)
        return -1;
    n = OPENSSL_malloc(b->len + len + 1);
    if (n == NULL)
        return -1;
    if (b->len > 0)
        memcpy(n, b->p, b->len);
    memcpy(n + b->len, v, len);
    len += b->len;
    p11psk_bytes_clear(b);
    b->p = n;
    b->len = len;
    return 0;
}

int p11psk_bytes_dup(p11psk_bytes *dst, const p11psk_bytes *src)
{
    dst->p = NULL;
    dst->len = 0;
    if (src->p == NULL)
        return 0;
    dst->p = OPENSSL_malloc(src->len + 1);
    if (dst->p == NULL)
        return -1;
    memcpy(dst->p, src->p, src->len);
    dst->len = src->len;
    return 0;
}

int p11psk_bytes_has_magic(const p11psk_bytes *b)
{
    return b->p != NULL && p11psk_handle_has_magic(b->p, b->len);
}

int p11psk_str_set(char **s, const OSSL_PARAM *p)
{
    char *v = NULL;

    if (!OSSL_PARAM_get_utf8_string(p, &v, 0))
        return -1;
    OPENSSL_free(*s);
    *s = v;
    return 0;
}

int p11psk_str_dup(char **dst, const char *src)
{
    *dst = NULL;
    if (src == NULL)
        return 0;
    *dst = OPENSSL_strdup(src);
    return *dst != NULL ? 0 : -1;
}

int p11psk_kdf_md(const P11PSK_PROV_CTX *pc, const char *alg, const char *digest)
{
    int md;

    if (digest == NULL) {
        P11PSK_RAISE(pc, P11PSK_R_MISSING_PARAM, "%s with a p11psk handle needs a digest", alg);
        return P11PSK_MD_NONE;
    }
    md = p11psk_md_from_name(digest);
    if (md == P11PSK_MD_NONE)
        P11PSK_RAISE(
            pc, P11PSK_R_UNSUPPORTED,
            "digest \"%s\" is not supported with p11psk handles (%s needs SHA256 or SHA384)",
            digest, alg);
    return md;
}

static const char *type_str(int type)
{
    return type == P11PSK_HT_PSK        ? "PSK"
           : type == P11PSK_HT_TLS13_ES ? "TLS 1.3 early-secret"
                                        : "unknown";
}

int p11psk_kdf_decode(const P11PSK_PROV_CTX *pc, const char *what, const uint8_t *buf, size_t len,
                      int type, int md, p11psk_handle *h)
{
    static const char prefix[] = "bad handle: ";
    int rc = p11psk_handle_decode(buf, len, h);

    if (rc != P11PSK_HANDLE_OK) {
        const char *why = p11psk_handle_strerror(rc);

        /* The reason already says "bad handle". */
        if (strncmp(why, prefix, sizeof(prefix) - 1) == 0)
            why += sizeof(prefix) - 1;
        P11PSK_RAISE(pc, P11PSK_R_BAD_HANDLE, "%s in %s", why, what);
        return -1;
    }
    if (h->type != type) {
        P11PSK_RAISE(pc, P11PSK_R_BAD_HANDLE, "%s is a %s handle, expected a %s handle", what,
                     type_str(h->type), type_str(type));
        return -1;
    }
    if (type == P11PSK_HT_TLS13_ES && h->digest != md) {
        P11PSK_RAISE(pc, P11PSK_R_BAD_HANDLE, "%s is an early-secret handle for %s, not %s", what,
                     p11psk_md_name(h->digest), p11psk_md_name(md));
        return -1;
    }
    return 0;
}

int p11psk_kdf_delegate(const P11PSK_KDF_CTX *ctx, unsigned char *out, size_t outlen)
{
    P11PSK_PROV_CTX *pc = ctx->provctx; /* the delegate cache is its only mutable part here */
    const P11PSK_KDF_ALG *alg = p11psk_kdf_alg(ctx->id);
    OSSL_PARAM params[P11PSK_KDF_PARAMS_MAX];
    EVP_KDF *kdf;
    EVP_KDF_CTX *kctx = NULL;
    int ret = -1;

    /* Never a default slot: another algorithm's delegate would derive something else. */
    if (alg == NULL) {
        P11PSK_RAISE(pc, P11PSK_R_INTERNAL, "no delegate for unknown KDF %d", ctx->id);
        return -1;
    }
    if ((kdf = __atomic_load_n(&pc->delegate[ctx->id], __ATOMIC_ACQUIRE)) == NULL) {
        pthread_mutex_lock(&pc->delegate_lock);
        if ((kdf = pc->delegate[ctx->id]) == NULL &&
            (kdf = EVP_KDF_fetch(pc->libctx, alg->name, P11PSK_DELEGATE_PROPQ)) != NULL)
            __atomic_store_n(&pc->delegate[ctx->id], kdf, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&pc->delegate_lock);
    }
    if (kdf == NULL) {
        P11PSK_RAISE(pc, P11PSK_R_DELEGATE_FAILED,
                     "no other provider offers %s (is the default provider active?)", alg->name);
        return -1;
    }
    p11psk_debug("%s: no handle, delegating to provider %s", alg->name,
                 OSSL_PROVIDER_get0_name(EVP_KDF_get0_provider(kdf)));
    p11psk_kdf_ctx_params(ctx, params);
    kctx = EVP_KDF_CTX_new(kdf);
    /* The delegate raises its own errors (they land in the same thread's queue). */
    if (kctx != NULL && EVP_KDF_derive(kctx, out, outlen, params) > 0)
        ret = 0;
    EVP_KDF_CTX_free(kctx);
    return ret;
}
