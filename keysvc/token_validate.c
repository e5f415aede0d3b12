/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Re-validation of the object table's keys against the token: does the object still exist
 * with its CKA_ID, and is the fingerprint of its value (SHA-256 computed in the token) the
 * one its cached values were derived from. What it finds gone or changed goes to
 * p11psk_keys_changed (keychange.c).
 */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <string.h>

#include "keychange.h"
#include "p11psk/wire.h"
#include "token_int.h"

/* The fingerprint is SHA-256 over this prefix and the value, not the bare SHA-256 of the
 * key, which other tools may show as a key check value. */
static const uint8_t FP_PREFIX[] = "p11psk key fingerprint 1";

void p11psk_token_set_revalidate(p11psk_token *tok, unsigned ms, unsigned value_ms)
{
    pthread_mutex_lock(&tok->vallock);
    tok->revalidate_ms = ms;
    tok->revalidate_value_ms = value_ms;
    pthread_mutex_unlock(&tok->vallock);
}

struct check_arg {
    const p11psk_key *key;
    int same; /* out: the object still exists and has the key's CKA_ID */
};

static int op_check(p11psk_token *tok, CK_SESSION_HANDLE sess, void *varg, p11psk_call *c,
                    p11psk_err *err)
{
    struct check_arg *a = varg;
    uint8_t id[P11PSK_KEY_ID_MAX];
    CK_ATTRIBUTE t[] = {{CKA_ID, id, sizeof(id)}};
    CK_RV rv = P11CALL(c, NULL, tok->fl, C_GetAttributeValue, sess, a->key->obj, t, 1);

    if (rv == CKR_OK) {
        a->same = t[0].ulValueLen == a->key->idlen && memcmp(id, a->key->id, a->key->idlen) == 0;
        return P11PSK_ST_OK;
    }
    /* A destroyed object, or one that no longer carries a CKA_ID we could hold. */
    if (p11psk_ckr_stale_handle(rv) || rv == CKR_BUFFER_TOO_SMALL ||
        rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE) {
        c->rv = CKR_OK; /* the session is fine */
        a->same = 0;
        return P11PSK_ST_OK;
    }
    p11psk_err_ckr(err, rv, c->fn);
    return P11PSK_ST_TOKEN;
}

/* The token cannot digest this key (some refuse C_DigestKey on secret keys). */
static int digest_refused(const p11psk_err *err)
{
    return err->status == P11PSK_ST_TOKEN &&
           (err->ckr == CKR_FUNCTION_NOT_SUPPORTED || err->ckr == CKR_KEY_INDIGESTIBLE ||
            err->ckr == CKR_KEY_FUNCTION_NOT_PERMITTED || err->ckr == CKR_MECHANISM_INVALID ||
            err->ckr == CKR_KEY_TYPE_INCONSISTENT);
}

/* The same fingerprint in software, from a readable key's value. */
static int fingerprint_sw(p11psk_token *tok, p11psk_key *key, p11psk_err *err)
{
    uint8_t *val;
    size_t vlen;
    unsigned int outlen = 0;
    EVP_MD_CTX *c;
    int st, ok;

    if ((st = p11psk_token_key_value(tok, key, &val, &vlen, err)) != P11PSK_ST_OK)
        return st;
    ok = (c = EVP_MD_CTX_new()) != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) &&
         EVP_DigestUpdate(c, FP_PREFIX, sizeof(FP_PREFIX) - 1) && EVP_DigestUpdate(c, val, vlen) &&
         EVP_DigestFinal_ex(c, key->fp, &outlen) && outlen == sizeof(key->fp);
    EVP_MD_CTX_free(c);
    OPENSSL_secure_clear_free(val, vlen);
    return ok ? P11PSK_ST_OK : p11psk_err_set(err, P11PSK_ST_INTERNAL, "SHA-256 failed");
}

int token_fingerprint(p11psk_token *tok, p11psk_key *key, p11psk_err *err)
{
    int st = p11psk_token_digest_key(tok, P11PSK_MD_SHA256, FP_PREFIX, sizeof(FP_PREFIX) - 1, key,
                                     key->fp, err);

    if (st == P11PSK_ST_TOKEN && digest_refused(err))
        st = key->readable ? fingerprint_sw(tok, key, err) : P11PSK_ST_NEED_READABLE;
    key->fp_ok = st == P11PSK_ST_OK;
    if (st == P11PSK_ST_NEED_READABLE) {
        OPENSSL_cleanse(key->fp, sizeof(key->fp));
        return P11PSK_ST_OK;
    }
    if (st == P11PSK_ST_TOKEN && p11psk_ckr_stale_handle(err->ckr))
        return P11PSK_ST_NOT_FOUND;
    return st;
}

/* The token's current key for id: the object we know if it still has this CKA_ID (with
 * value, fingerprinted again), else a fresh search and its fingerprint. *checked: the
 * fingerprint in cur was computed now. */
static int current_key(p11psk_token *tok, const p11psk_key *known, int value, p11psk_key *cur,
                       int *checked, p11psk_err *err)
{
    struct check_arg a = {known, 0};
    int st;

    *cur = *known;
    *checked = 1;
    st = token_with_session(tok, op_check, &a, err);
    if (st == P11PSK_ST_OK && a.same && !value) {
        *checked = 0; /* the object is there; its value cannot change in place (below) */
        return st;
    }
    if (st == P11PSK_ST_OK && a.same &&
        (st = token_fingerprint(tok, cur, err)) != P11PSK_ST_NOT_FOUND)
        return st;
    if (st != P11PSK_ST_OK && st != P11PSK_ST_NOT_FOUND)
        return st;
    if ((st = token_search_id(tok, known->id, known->idlen, cur, err)) != P11PSK_ST_OK)
        return st;
    return token_fingerprint(tok, cur, err);
}

int token_revalidate(p11psk_token *tok, p11psk_key *key, unsigned long gen, int value,
                     p11psk_err *err)
{
    uint8_t id[P11PSK_KEY_ID_MAX];
    size_t idlen = key->idlen;
    p11psk_key cur;
    int st, known = key->fp_ok, changed, checked;

    memcpy(id, key->id, idlen);
    st = current_key(tok, key, value, &cur, &checked, err);
    if (st == P11PSK_ST_TOKEN || st == P11PSK_ST_UNAVAILABLE || st == P11PSK_ST_INTERNAL) {
        /* the token could not say: ask next time */
        token_ids_validated(tok, id, idlen, NULL, gen, 0);
        OPENSSL_cleanse(&cur, sizeof(cur));
        return st;
    }
    changed = known && (st != P11PSK_ST_OK || !cur.fp_ok ||
                        CRYPTO_memcmp(cur.fp, key->fp, sizeof(cur.fp)) != 0);
    pthread_mutex_lock(&tok->vallock);
    tok->revalidations += known;
    tok->changes += changed;
    pthread_mutex_unlock(&tok->vallock);
    if (changed || st != P11PSK_ST_OK) {
        p11psk_err keep = *err;

        p11psk_keys_changed(tok, id, idlen,
                            st == P11PSK_ST_NOT_FOUND ? "removed from the token"
                            : st != P11PSK_ST_OK      ? "no longer usable"
                                                      : "value changed in the token");
        *err = keep;
        gen++; /* our own forget: what we found is current */
    }
    if (st == P11PSK_ST_OK)
        token_ids_validated(tok, id, idlen, &cur, gen, checked);
    *key = cur;
    OPENSSL_cleanse(&cur, sizeof(cur));
    return st;
}
