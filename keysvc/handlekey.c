/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The token's handle key: find or create it, derive mk with it, make and verify handle tags.
 * Part of the token layer (it borrows sessions from the pool), shared by p11pskd and p11psk.
 */
#include "handlekey.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <string.h>

#include "token_int.h"

#define HK_FOUND_MAX 8 /* more handle keys than this: someone else is making them */

static const char mk_info[] = "p11psk handle mac v2";
static const char tag_info[] = "p11psk-handle";

struct p11psk_handlekey {
    pthread_rwlock_t lock; /* readers make and verify tags; a (re)load swaps mk */
    uint8_t *mk;           /* P11PSK_MK_LEN bytes in the secure heap, or NULL */
};

p11psk_handlekey *p11psk_handlekey_new(void)
{
    p11psk_handlekey *hk = OPENSSL_zalloc(sizeof(*hk));

    if (hk != NULL && pthread_rwlock_init(&hk->lock, NULL) != 0) {
        OPENSSL_free(hk);
        return NULL;
    }
    return hk;
}

void p11psk_handlekey_free(p11psk_handlekey *hk)
{
    if (hk == NULL)
        return;
    OPENSSL_secure_clear_free(hk->mk, P11PSK_MK_LEN);
    pthread_rwlock_destroy(&hk->lock);
    OPENSSL_free(hk);
}

int p11psk_handlekey_is_id(const uint8_t *id, size_t idlen)
{
    return id != NULL && idlen == P11PSK_HK_IDLEN && memcmp(id, P11PSK_HK_ID, idlen) == 0;
}

int p11psk_handlekey_is_key(const p11psk_key *k)
{
    return p11psk_handlekey_is_id(k->id, k->idlen) && strcmp(k->label, P11PSK_HK_LABEL) == 0;
}

/* Replaces hk's mk by mk (taken over; NULL empties it). */
static void hk_set(p11psk_handlekey *hk, uint8_t *mk)
{
    uint8_t *old;

    pthread_rwlock_wrlock(&hk->lock);
    old = hk->mk;
    hk->mk = mk;
    pthread_rwlock_unlock(&hk->lock);
    OPENSSL_secure_clear_free(old, P11PSK_MK_LEN);
}

int p11psk_handlekey_ready(p11psk_handlekey *hk)
{
    int ready;

    pthread_rwlock_rdlock(&hk->lock);
    ready = hk->mk != NULL;
    pthread_rwlock_unlock(&hk->lock);
    return ready;
}

/* ---- token side: one operation on a borrowed session ---- */

struct hk_arg {
    int create;  /* generate one when none is found */
    int reissue; /* destroy those found, then generate */
    uint8_t *mk; /* out: secure heap */
};

static int hk_find(p11psk_token *tok, CK_SESSION_HANDLE sess, CK_OBJECT_HANDLE *objs, size_t *n,
                   p11psk_call *c, p11psk_err *err)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_ID, (void *)P11PSK_HK_ID, P11PSK_HK_IDLEN},
        {CKA_LABEL, (void *)P11PSK_HK_LABEL, sizeof(P11PSK_HK_LABEL) - 1},
    };
    CK_ULONG got = 0;

    *n = 0;
    if (P11CALL(c, err, tok->fl, C_FindObjectsInit, sess, t, 3) != CKR_OK)
        return P11PSK_ST_TOKEN;
    P11CALL(c, err, tok->fl, C_FindObjects, sess, objs, HK_FOUND_MAX, &got);
    P11CALL_QUIET(tok->fl, C_FindObjectsFinal, sess);
    if (c->rv != CKR_OK)
        return P11PSK_ST_TOKEN;
    *n = got;
    return P11PSK_ST_OK;
}

/* Creating and destroying token objects needs a read/write session; p11pskd's pool is
 * read-only, so open one of our own (it shares the application's login). */
static int hk_rw_session(p11psk_token *tok, CK_SESSION_HANDLE sess, CK_SESSION_HANDLE *rw,
                         p11psk_call *c, p11psk_err *err)
{
    if (tok->rw) {
        *rw = sess;
        return P11PSK_ST_OK;
    }
    if (P11CALL(c, err, tok->fl, C_OpenSession, tok->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
                NULL, NULL, rw) != CKR_OK) {
        if (c->rv == CKR_TOKEN_WRITE_PROTECTED)
            p11psk_err_set(err, P11PSK_ST_TOKEN,
                           "token '%s' is write-protected: cannot create its handle key; run "
                           "`p11psk handle ID` where the token is writable",
                           tok->label);
        return P11PSK_ST_TOKEN;
    }
    return P11PSK_ST_OK;
}

static void hk_rw_done(p11psk_token *tok, CK_SESSION_HANDLE sess, CK_SESSION_HANDLE rw)
{
    if (rw != sess)
        P11CALL_QUIET(tok->fl, C_CloseSession, rw);
}

static int hk_generate(p11psk_token *tok, CK_SESSION_HANDLE rw, p11psk_call *c, p11psk_err *err)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG vlen = P11PSK_MK_LEN;
    CK_MECHANISM gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_SIGN, &yes, sizeof(yes)},
        {CKA_LABEL, (void *)P11PSK_HK_LABEL, sizeof(P11PSK_HK_LABEL) - 1},
        {CKA_ID, (void *)P11PSK_HK_ID, P11PSK_HK_IDLEN},
        {CKA_VALUE_LEN, &vlen, sizeof(vlen)},
    };
    CK_OBJECT_HANDLE obj;

    if (P11CALL(c, err, tok->fl, C_GenerateKey, rw, &gen, t, sizeof(t) / sizeof(t[0]), &obj) !=
        CKR_OK)
        return P11PSK_ST_TOKEN;
    return P11PSK_ST_OK;
}

/* mk of one handle key object: out gets P11PSK_MK_LEN bytes. */
static int hk_sign(p11psk_token *tok, CK_SESSION_HANDLE sess, CK_OBJECT_HANDLE obj, uint8_t *out,
                   p11psk_call *c, p11psk_err *err)
{
    CK_MECHANISM mech = {CKM_SHA256_HMAC, NULL, 0};
    CK_ULONG outlen = P11PSK_MK_LEN;

    if (P11CALL(c, err, tok->fl, C_SignInit, sess, &mech, obj) != CKR_OK)
        return P11PSK_ST_TOKEN;
    /* C_Sign ends the operation whatever it returns (outlen is large enough). */
    if (P11CALL(c, err, tok->fl, C_Sign, sess, (CK_BYTE_PTR)mk_info, sizeof(mk_info) - 1, out,
                &outlen) != CKR_OK)
        return P11PSK_ST_TOKEN;
    if (outlen != P11PSK_MK_LEN) {
        OPENSSL_cleanse(out, P11PSK_MK_LEN);
        return p11psk_err_set(err, P11PSK_ST_TOKEN, "C_Sign (HMAC) returned %lu bytes",
                              (unsigned long)outlen);
    }
    return P11PSK_ST_OK;
}

/*
 * Two processes may each create a handle key at once. Every process then picks, among those
 * found, the one whose mk is the smallest: object handles are numbered per process, mk is the
 * same everywhere, so all agree on one key.
 */
static int hk_pick(p11psk_token *tok, CK_SESSION_HANDLE sess, const CK_OBJECT_HANDLE *objs,
                   size_t n, uint8_t *mk, p11psk_call *c, p11psk_err *err)
{
    uint8_t *cand = OPENSSL_secure_malloc(P11PSK_MK_LEN);
    size_t i;
    int st = P11PSK_ST_OK, have = 0;

    if (cand == NULL)
        return p11psk_err_set(err, P11PSK_ST_INTERNAL, "out of memory");
    for (i = 0; i < n && st == P11PSK_ST_OK; i++) {
        if ((st = hk_sign(tok, sess, objs[i], cand, c, err)) != P11PSK_ST_OK)
            break;
        if (!have || memcmp(cand, mk, P11PSK_MK_LEN) < 0)
            memcpy(mk, cand, P11PSK_MK_LEN);
        have = 1;
    }
    OPENSSL_secure_clear_free(cand, P11PSK_MK_LEN);
    return st;
}

static int op_handlekey(p11psk_token *tok, CK_SESSION_HANDLE sess, void *varg, p11psk_call *c,
                        p11psk_err *err)
{
    struct hk_arg *a = varg;
    CK_OBJECT_HANDLE objs[HK_FOUND_MAX];
    CK_SESSION_HANDLE rw = sess;
    size_t n = 0, i;
    int st;

    if ((st = hk_find(tok, sess, objs, &n, c, err)) != P11PSK_ST_OK)
        return st;
    if ((n == 0 && a->create) || a->reissue) {
        if ((st = hk_rw_session(tok, sess, &rw, c, err)) != P11PSK_ST_OK)
            return st;
        for (i = 0; a->reissue && i < n && st == P11PSK_ST_OK; i++)
            if (P11CALL(c, err, tok->fl, C_DestroyObject, rw, objs[i]) != CKR_OK)
                st = P11PSK_ST_TOKEN;
        if (st == P11PSK_ST_OK)
            st = hk_generate(tok, rw, c, err);
        hk_rw_done(tok, sess, rw);
        if (st != P11PSK_ST_OK)
            return st;
        /* Look again: another process may have created one meanwhile. */
        if ((st = hk_find(tok, sess, objs, &n, c, err)) != P11PSK_ST_OK)
            return st;
    }
    if (n == 0)
        return p11psk_err_set(err, P11PSK_ST_NOT_FOUND,
                              "token '%s' has no handle key (%s); `p11psk handle ID` creates it",
                              tok->label, P11PSK_HK_LABEL);
    return hk_pick(tok, sess, objs, n, a->mk, c, err);
}

static int hk_run(p11psk_handlekey *hk, p11psk_token *tok, int create, int reissue, p11psk_err *err)
{
    struct hk_arg a = {create, reissue, OPENSSL_secure_zalloc(P11PSK_MK_LEN)};
    int st;

    if (a.mk == NULL)
        return p11psk_err_set(err, P11PSK_ST_INTERNAL, "out of memory");
    st = token_with_session(tok, op_handlekey, &a, err);
    if (st != P11PSK_ST_OK) {
        OPENSSL_secure_clear_free(a.mk, P11PSK_MK_LEN);
        if (st == P11PSK_ST_NOT_FOUND || reissue)
            hk_set(hk, NULL); /* no handle key, or a half-done re-issue: nothing is valid */
        return st;
    }
    hk_set(hk, a.mk);
    return P11PSK_ST_OK;
}

int p11psk_handlekey_load(p11psk_handlekey *hk, p11psk_token *tok, int create, p11psk_err *err)
{
    return hk_run(hk, tok, create, 0, err);
}

int p11psk_handlekey_reissue(p11psk_handlekey *hk, p11psk_token *tok, p11psk_err *err)
{
    return hk_run(hk, tok, 1, 1, err);
}

/* ---- tags, in-process ---- */

/* tag = HMAC-SHA256(mk, "p11psk-handle" || idlen || id), first P11PSK_TAG_LEN bytes. Call with
 * hk->lock held and hk->mk set. */
static int tag_of(const p11psk_handlekey *hk, const uint8_t *id, size_t idlen,
                  uint8_t tag[P11PSK_TAG_LEN])
{
    uint8_t in[sizeof(tag_info) - 1 + 1 + P11PSK_ID_MAX], md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    size_t n = sizeof(tag_info) - 1;

    memcpy(in, tag_info, n);
    in[n++] = (uint8_t)idlen;
    memcpy(in + n, id, idlen);
    n += idlen;
    if (HMAC(EVP_sha256(), hk->mk, P11PSK_MK_LEN, in, n, md, &mdlen) == NULL || mdlen < 16)
        return -1;
    memcpy(tag, md, P11PSK_TAG_LEN);
    OPENSSL_cleanse(md, sizeof(md));
    return 0;
}

int p11psk_handlekey_make(p11psk_handlekey *hk, const uint8_t *id, size_t idlen,
                          uint8_t out[P11PSK_HANDLE_LEN])
{
    p11psk_handle h;
    int rc = -1;

    if (idlen == 0 || idlen > P11PSK_ID_MAX || p11psk_handlekey_is_id(id, idlen))
        return -1;
    memset(&h, 0, sizeof(h));
    h.type = P11PSK_HT_PSK;
    h.idlen = (uint8_t)idlen;
    memcpy(h.id, id, idlen);
    pthread_rwlock_rdlock(&hk->lock);
    if (hk->mk != NULL && tag_of(hk, id, idlen, h.tag) == 0)
        rc = 0;
    pthread_rwlock_unlock(&hk->lock);
    if (rc == 0 && p11psk_handle_encode(&h, out, P11PSK_HANDLE_LEN) != P11PSK_HANDLE_OK)
        rc = -1;
    return rc;
}

int p11psk_handlekey_verify(p11psk_handlekey *hk, const p11psk_handle *h)
{
    uint8_t tag[P11PSK_TAG_LEN];
    int ok = 0;

    if (h->type != P11PSK_HT_PSK || h->idlen == 0 || h->idlen > P11PSK_ID_MAX ||
        p11psk_handlekey_is_id(h->id, h->idlen))
        return -1;
    pthread_rwlock_rdlock(&hk->lock);
    if (hk->mk != NULL && tag_of(hk, h->id, h->idlen, tag) == 0)
        ok = CRYPTO_memcmp(tag, h->tag, P11PSK_TAG_LEN) == 0;
    pthread_rwlock_unlock(&hk->lock);
    OPENSSL_cleanse(tag, sizeof(tag));
    return ok ? 0 : -1;
}
