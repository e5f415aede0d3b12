/* SPDX-License-Identifier: Apache-2.0 */
/* What is done with keys in the token: create, destroy, digest, read a readable value, and
 * the token's random numbers. */
#include <openssl/crypto.h>
#include <string.h>

#include "p11psk/handle.h"
#include "p11psk/wire.h"
#include "token_int.h"

/* ---- create and destroy ---- */

struct create_arg {
    const p11psk_new_key *nk;
    p11psk_key *key;
};

static int op_create(p11psk_token *tok, CK_SESSION_HANDLE sess, void *varg, p11psk_call *c,
                     p11psk_err *err)
{
    struct create_arg *a = varg;
    const p11psk_new_key *nk = a->nk;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_BBOOL on_token = nk->session_only ? CK_FALSE : CK_TRUE;
    CK_ULONG vlen = nk->value_len;
    CK_MECHANISM gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &on_token, sizeof(on_token)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, nk->readable ? &no : &yes, sizeof(CK_BBOOL)},
        {CKA_EXTRACTABLE, nk->readable ? &yes : &no, sizeof(CK_BBOOL)},
        {CKA_LABEL, (void *)nk->label, strlen(nk->label)},
        {CKA_ID, (void *)nk->id, nk->idlen},
        {CKA_VALUE_LEN, &vlen, sizeof(vlen)}, /* replaced by CKA_VALUE on import */
        {CKA_END_DATE, (void *)nk->not_after, sizeof(CK_DATE)}, /* only with a date */
    };
    CK_ULONG tn = nk->not_after != NULL ? 10 : 9;
    CK_OBJECT_HANDLE obj;

    if (nk->value != NULL) {
        t[8].type = CKA_VALUE;
        t[8].pValue = (void *)nk->value;
        t[8].ulValueLen = nk->value_len;
        P11CALL(c, err, tok->fl, C_CreateObject, sess, t, tn, &obj);
    } else {
        /* C_GenerateKey takes class and type from the mechanism; pass them anyway. */
        P11CALL(c, err, tok->fl, C_GenerateKey, sess, &gen, t, tn, &obj);
    }
    if (c->rv != CKR_OK || token_key_read(tok, sess, obj, a->key, c, err) != CKR_OK)
        return P11PSK_ST_TOKEN;
    return P11PSK_ST_OK;
}

int p11psk_token_create_key(p11psk_token *tok, const p11psk_new_key *nk, p11psk_key *key,
                            p11psk_err *err)
{
    struct create_arg a = {nk, key};
    CK_SESSION_HANDLE sess;
    p11psk_call c = P11PSK_CALL_INIT;
    int st;

    if (nk->value_len < P11PSK_KEY_LEN_MIN || nk->value_len > P11PSK_KEY_LEN_MAX)
        return p11psk_err_set(err, P11PSK_ST_BAD_REQUEST, "key length %zu is outside %d..%d",
                              nk->value_len, P11PSK_KEY_LEN_MIN, P11PSK_KEY_LEN_MAX);
    /* Not retried: a create that failed late may have left an object behind. */
    if ((st = token_sess_get(tok, &sess, err)) != P11PSK_ST_OK)
        return st;
    st = op_create(tok, sess, &a, &c, err);
    token_sess_put(tok, sess, &c);
    return st;
}

static int op_destroy(p11psk_token *tok, CK_SESSION_HANDLE sess, void *varg, p11psk_call *c,
                      p11psk_err *err)
{
    const p11psk_key *key = varg;

    if (P11CALL(c, err, tok->fl, C_DestroyObject, sess, key->obj) != CKR_OK)
        return P11PSK_ST_TOKEN;
    return P11PSK_ST_OK;
}

int p11psk_token_destroy_key(p11psk_token *tok, const p11psk_key *key, p11psk_err *err)
{
    int st = token_with_session(tok, op_destroy, (void *)key, err);

    if (key->idlen <= P11PSK_KEY_ID_MAX)
        p11psk_token_forget(tok, key->id, key->idlen);
    return st;
}

/* ---- random ---- */

struct buf_arg {
    uint8_t *p;
    size_t len;
};

static int op_random(p11psk_token *tok, CK_SESSION_HANDLE sess, void *varg, p11psk_call *c,
                     p11psk_err *err)
{
    struct buf_arg *a = varg;

    if (P11CALL(c, err, tok->fl, C_GenerateRandom, sess, a->p, a->len) != CKR_OK)
        return P11PSK_ST_TOKEN;
    return P11PSK_ST_OK;
}

int p11psk_token_random(p11psk_token *tok, uint8_t *out, size_t len, p11psk_err *err)
{
    struct buf_arg a = {out, len};

    return token_with_session(tok, op_random, &a, err);
}

/* ---- token-side math ---- */

struct digest_arg {
    int md;
    const uint8_t *prefix;
    size_t prefixlen;
    const p11psk_key *key;
    uint8_t *out;
};

static int op_digest(p11psk_token *tok, CK_SESSION_HANDLE sess, void *varg, p11psk_call *c,
                     p11psk_err *err)
{
    struct digest_arg *a = varg;
    CK_MECHANISM mech = {a->md == P11PSK_MD_SHA384 ? CKM_SHA384 : CKM_SHA256, NULL, 0};
    CK_ULONG outlen = p11psk_md_size(a->md);
    uint8_t junk[64];
    CK_ULONG junklen = sizeof(junk);

    if (P11CALL(c, err, tok->fl, C_DigestInit, sess, &mech) != CKR_OK)
        return P11PSK_ST_TOKEN;
    if (a->prefixlen > 0)
        P11CALL(c, err, tok->fl, C_DigestUpdate, sess, (CK_BYTE_PTR)a->prefix, a->prefixlen);
    if (c->rv == CKR_OK)
        P11CALL(c, err, tok->fl, C_DigestKey, sess, a->key->obj);
    if (c->rv == CKR_OK) {
        P11CALL(c, err, tok->fl, C_DigestFinal, sess, a->out, &outlen);
        if (c->rv == CKR_OK && outlen != p11psk_md_size(a->md)) {
            OPENSSL_cleanse(a->out, outlen);
            return p11psk_err_set(err, P11PSK_ST_TOKEN, "C_DigestFinal returned %lu bytes",
                                  (unsigned long)outlen);
        }
        if (c->rv == CKR_OK)
            return P11PSK_ST_OK;
    }
    /* No digest operation may stay active on a session that goes back to the pool. */
    P11CALL_QUIET(tok->fl, C_DigestFinal, sess, junk, &junklen);
    OPENSSL_cleanse(junk, sizeof(junk));
    return P11PSK_ST_TOKEN;
}

int p11psk_token_digest_key(p11psk_token *tok, int md, const uint8_t *prefix, size_t prefixlen,
                            const p11psk_key *key, uint8_t *out, p11psk_err *err)
{
    struct digest_arg a = {md, prefix, prefixlen, key, out};

    if (p11psk_md_size(md) == 0)
        return p11psk_err_set(err, P11PSK_ST_UNSUPPORTED, "unsupported digest %d", md);
    return token_with_session(tok, op_digest, &a, err);
}

/* ---- readable values ---- */

struct value_arg {
    const p11psk_key *key;
    uint8_t *buf;
    CK_ULONG len;
};

static int op_value(p11psk_token *tok, CK_SESSION_HANDLE sess, void *varg, p11psk_call *c,
                    p11psk_err *err)
{
    struct value_arg *a = varg;
    CK_ATTRIBUTE t = {CKA_VALUE, a->buf, a->key->len};

    if (P11CALL_NOTE(c, err, "(CKA_VALUE)", tok->fl, C_GetAttributeValue, sess, a->key->obj, &t,
                     1) != CKR_OK)
        return P11PSK_ST_TOKEN;
    if (t.ulValueLen == CK_UNAVAILABLE_INFORMATION || t.ulValueLen > a->key->len)
        /* The session is fine (c->rv stays CKR_OK); the token answered nonsense. */
        return p11psk_err_ckr(err, CKR_GENERAL_ERROR, c->fn);
    a->len = t.ulValueLen;
    return P11PSK_ST_OK;
}

int p11psk_token_key_value(p11psk_token *tok, const p11psk_key *key, uint8_t **val, size_t *len,
                           p11psk_err *err)
{
    struct value_arg a = {key, NULL, 0};
    int st;

    *val = NULL;
    *len = 0;
    if (!key->readable)
        return p11psk_err_set(err, P11PSK_ST_NEED_READABLE, "key '%s' is not readable", key->label);
    if (key->len == 0 || (a.buf = OPENSSL_secure_malloc(key->len)) == NULL)
        return p11psk_err_set(err, P11PSK_ST_INTERNAL, "out of memory");
    if ((st = token_with_session(tok, op_value, &a, err)) != P11PSK_ST_OK) {
        OPENSSL_secure_clear_free(a.buf, key->len);
        return st;
    }
    *val = a.buf;
    *len = a.len;
    return P11PSK_ST_OK;
}
