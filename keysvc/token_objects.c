/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Key lookup: the CKA_ID table the daemon answers from, filled by whole-token scans and
 * single searches (its entries are re-validated by token_validate.c), and the label search
 * the CLI lists keys with.
 */
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "p11psk/clock.h"
#include "p11psk/wire.h"
#include "token_int.h"

#define ID_BUCKETS 16384    /* chains stay short up to ~10^4 keys */
#define RESCAN_MIN_MS 10000 /* a lookup miss rescans the whole token at most this often */
#define REVALIDATE_DEFAULT_MS 1000
#define REVALIDATE_VALUE_DEFAULT_MS 60000

struct id_ent {
    p11psk_hnode node;      /* keyed by key.id */
    p11psk_key key;         /* key.fp: the value last confirmed, kept across rescans */
    unsigned long scan;     /* the full scan that wrote it (0: a single lookup) */
    int clash;              /* that scan saw this CKA_ID twice: never answered from here */
    long long validated_ms; /* when the token last confirmed the object (vallock) */
    long long value_ms;     /* when it last confirmed key.fp, the value (vallock) */
    int validating;         /* a thread is confirming it now (vallock) */
};

static void ent_free(struct id_ent *e)
{
    OPENSSL_cleanse(e->key.fp, sizeof(e->key.fp));
    free(e);
}

static void id_hex(const uint8_t *id, size_t idlen, char *out)
{
    p11psk_hex_encode(id, idlen < P11PSK_KEY_ID_MAX ? idlen : P11PSK_KEY_ID_MAX, out);
}

/* ---- the CKA_ID table (cachelock) ---- */

int token_ids_init(p11psk_token *tok)
{
    pthread_mutex_init(&tok->vallock, NULL);
    tok->revalidate_ms = REVALIDATE_DEFAULT_MS;
    tok->revalidate_value_ms = REVALIDATE_VALUE_DEFAULT_MS;
    return p11psk_htable_init(&tok->ids, ID_BUCKETS);
}

static int unlink_all(p11psk_hnode *n, void *arg)
{
    (void)arg;
    ent_free((struct id_ent *)n); /* the node is the entry's first member */
    return 1;
}

void token_ids_clear(p11psk_token *tok)
{
    pthread_rwlock_wrlock(&tok->cachelock);
    tok->ids_gen++;
    p11psk_htable_unlink_if(&tok->ids, unlink_all, NULL);
    pthread_rwlock_unlock(&tok->cachelock);
}

void token_ids_fini(p11psk_token *tok)
{
    token_ids_clear(tok);
    p11psk_htable_fini(&tok->ids);
    pthread_mutex_destroy(&tok->vallock);
}

static struct id_ent *ids_find(p11psk_token *tok, const uint8_t *id, size_t idlen)
{
    return (struct id_ent *)p11psk_htable_find(&tok->ids, id, idlen);
}

/* A new entry for key k, linked; NULL when out of memory. */
static struct id_ent *ids_add(p11psk_token *tok, const p11psk_key *k)
{
    struct id_ent *e = calloc(1, sizeof(*e));

    if (e == NULL)
        return NULL;
    e->key = *k;
    e->node.key = e->key.id;
    e->node.keylen = e->key.idlen;
    p11psk_htable_insert(&tok->ids, &e->node);
    return e;
}

enum { LOOK_MISS, LOOK_FRESH, LOOK_EXISTS, LOOK_CHECK };

/* Copies the table's entry for id to key. LOOK_FRESH: validated less than revalidate-ms
 * ago, or another thread is validating it right now; LOOK_EXISTS: the caller checks that
 * the object is still there; LOOK_CHECK: the caller also checks its value (the entry has
 * no fingerprint yet, or its value was confirmed revalidate-value-ms ago or more). */
static int ids_lookup(p11psk_token *tok, const uint8_t *id, size_t idlen, p11psk_key *key,
                      unsigned long *gen)
{
    struct id_ent *e;
    int r = LOOK_MISS;

    pthread_rwlock_rdlock(&tok->cachelock);
    *gen = tok->ids_gen;
    if ((e = ids_find(tok, id, idlen)) != NULL) {
        *key = e->key;
        pthread_mutex_lock(&tok->vallock);
        long long now = p11psk_mono_ms();

        if (!e->key.fp_ok || tok->revalidate_ms == 0) {
            r = LOOK_CHECK;
        } else if (!e->validating && now - e->validated_ms >= tok->revalidate_ms) {
            e->validating = 1; /* one validation per key and period, not one per request */
            r = now - e->value_ms >= tok->revalidate_value_ms ? LOOK_CHECK : LOOK_EXISTS;
        } else {
            r = LOOK_FRESH;
        }
        pthread_mutex_unlock(&tok->vallock);
    }
    pthread_rwlock_unlock(&tok->cachelock);
    return r;
}

void token_ids_validated(p11psk_token *tok, const uint8_t *id, size_t idlen, const p11psk_key *k,
                         unsigned long gen, int value_checked)
{
    struct id_ent *e;

    pthread_rwlock_wrlock(&tok->cachelock);
    if (k != NULL && tok->ids_gen != gen)
        k = NULL;
    if ((e = ids_find(tok, id, idlen)) == NULL && k != NULL)
        e = ids_add(tok, k); /* out of memory: no entry is only slower */
    if (e != NULL) {
        if (k != NULL) {
            e->key = *k; /* same id bytes, so the node's key stays valid */
            e->validated_ms = p11psk_mono_ms();
            if (value_checked)
                e->value_ms = e->validated_ms;
        }
        e->validating = 0;
    }
    pthread_rwlock_unlock(&tok->cachelock);
}

static int unlink_any(p11psk_hnode *n, void *arg)
{
    (void)arg;
    ent_free((struct id_ent *)n);
    return 1;
}

void p11psk_token_forget(p11psk_token *tok, const uint8_t *id, size_t idlen)
{
    struct id_ent *e;

    pthread_rwlock_wrlock(&tok->cachelock);
    tok->ids_gen++;
    if (id == NULL) {
        p11psk_htable_unlink_if(&tok->ids, unlink_any, NULL);
    } else if ((e = ids_find(tok, id, idlen)) != NULL) {
        p11psk_htable_remove(&tok->ids, &e->node);
        ent_free(e);
    }
    pthread_rwlock_unlock(&tok->cachelock);
}

struct age_arg {
    long long now, oldest; /* oldest validated_ms seen, or now */
};

static int age_visit(p11psk_hnode *n, void *varg)
{
    struct id_ent *e = (struct id_ent *)n;
    struct age_arg *a = varg;

    if (e->key.fp_ok && e->validated_ms < a->oldest)
        a->oldest = e->validated_ms;
    return 0; /* look only */
}

void p11psk_token_revalidate_get(p11psk_token *tok, p11psk_token_revalidate_stats *st)
{
    struct age_arg a;

    a.now = a.oldest = p11psk_mono_ms();
    pthread_rwlock_rdlock(&tok->cachelock);
    pthread_mutex_lock(&tok->vallock);
    p11psk_htable_unlink_if(&tok->ids, age_visit, &a);
    st->revalidate_ms = tok->revalidate_ms;
    st->revalidations = tok->revalidations;
    st->changes = tok->changes;
    pthread_mutex_unlock(&tok->vallock);
    pthread_rwlock_unlock(&tok->cachelock);
    st->age_ms = (unsigned long)(a.now - a.oldest);
}

/* ---- reading objects ---- */

int token_key_type_ok(CK_KEY_TYPE t)
{
    return t == CKK_GENERIC_SECRET || t == CKK_AES;
}

/* Attributes a key may lack or hide: the read still tells us everything else. */
static int attr_rv_ok(CK_RV rv)
{
    return rv == CKR_OK || rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE;
}

CK_RV token_key_read(p11psk_token *tok, CK_SESSION_HANDLE sess, CK_OBJECT_HANDLE obj, p11psk_key *k,
                     p11psk_call *c, p11psk_err *err)
{
    CK_BBOOL sens = CK_TRUE, extr = CK_FALSE;
    CK_ULONG vlen = 0;
    CK_ATTRIBUTE len_t[] = {{CKA_ID, NULL, 0}, {CKA_LABEL, NULL, 0}};
    CK_ATTRIBUTE t[] = {
        {CKA_KEY_TYPE, &k->type, sizeof(k->type)},
        {CKA_VALUE_LEN, &vlen, sizeof(vlen)},
        {CKA_SENSITIVE, &sens, sizeof(sens)},
        {CKA_EXTRACTABLE, &extr, sizeof(extr)},
        {CKA_ID, k->id, 0},
        {CKA_LABEL, NULL, 0},
    };
    char *label = NULL;
    CK_ULONG n = 4;

    memset(k, 0, sizeof(*k));
    k->obj = obj;
    k->type = (CK_KEY_TYPE)-1;
    /* err only for real failures: a tolerated code must not leave a message behind */
    if (!attr_rv_ok(P11CALL(c, NULL, tok->fl, C_GetAttributeValue, sess, obj, len_t, 2))) {
        p11psk_err_ckr(err, c->rv, c->fn);
        return c->rv;
    }
    if (len_t[0].ulValueLen != CK_UNAVAILABLE_INFORMATION) {
        k->idlen = len_t[0].ulValueLen;
        if (k->idlen <= P11PSK_KEY_ID_MAX)
            t[n++].ulValueLen = len_t[0].ulValueLen;
    }
    if (len_t[1].ulValueLen != CK_UNAVAILABLE_INFORMATION && len_t[1].ulValueLen > 0) {
        if ((label = calloc(1, len_t[1].ulValueLen + 1)) == NULL)
            return p11psk_call_end(c, "C_GetAttributeValue", CKR_HOST_MEMORY, err);
        if (n == 4) /* keep the template dense */
            t[4] = t[5];
        t[n].type = CKA_LABEL;
        t[n].pValue = label;
        t[n++].ulValueLen = len_t[1].ulValueLen;
    }
    if (!attr_rv_ok(P11CALL(c, NULL, tok->fl, C_GetAttributeValue, sess, obj, t, n))) {
        free(label);
        p11psk_err_ckr(err, c->rv, c->fn);
        return c->rv;
    }
    c->rv = CKR_OK; /* a missing attribute is no failure of the session */
    if (t[0].ulValueLen == CK_UNAVAILABLE_INFORMATION)
        k->type = (CK_KEY_TYPE)-1;
    k->len = t[1].ulValueLen != CK_UNAVAILABLE_INFORMATION ? vlen : 0;
    k->readable = t[2].ulValueLen != CK_UNAVAILABLE_INFORMATION &&
                  t[3].ulValueLen != CK_UNAVAILABLE_INFORMATION && !sens && extr;
    if (label != NULL) {
        snprintf(k->label, sizeof(k->label), "%s", label);
        free(label);
    }
    token_key_read_end_date(tok, sess, k); /* validity: checked per request (handlers.c) */
    return CKR_OK;
}

/* The objects matching tmpl, and for each its attributes (keys of every type). */
struct find_arg {
    CK_ATTRIBUTE *tmpl;
    CK_ULONG tn;
    p11psk_key *keys; /* out, malloc'd */
    size_t n;
};

static int op_find(p11psk_token *tok, CK_SESSION_HANDLE sess, void *varg, p11psk_call *c,
                   p11psk_err *err)
{
    struct find_arg *a = varg;
    CK_OBJECT_HANDLE *v = NULL, *nv;
    size_t n = 0, cap = 0, i;
    CK_ULONG got;

    a->keys = NULL;
    a->n = 0;
    if (P11CALL(c, err, tok->fl, C_FindObjectsInit, sess, a->tmpl, a->tn) != CKR_OK)
        return P11PSK_ST_TOKEN;
    /* Bounded by the token's object count: each pass either gets objects or ends. */
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            if ((nv = realloc(v, cap * sizeof(*v))) == NULL) {
                p11psk_call_end(c, "C_FindObjects", CKR_HOST_MEMORY, err);
                break;
            }
            v = nv;
        }
        if (P11CALL(c, err, tok->fl, C_FindObjects, sess, v + n, cap - n, &got) != CKR_OK ||
            got == 0)
            break;
        n += got;
    }
    P11CALL_QUIET(tok->fl, C_FindObjectsFinal, sess);
    if (c->rv == CKR_OK && n > 0 && (a->keys = calloc(n, sizeof(*a->keys))) == NULL)
        p11psk_call_end(c, "C_GetAttributeValue", CKR_HOST_MEMORY, err);
    for (i = 0; c->rv == CKR_OK && i < n; i++)
        token_key_read(tok, sess, v[i], &a->keys[i], c, err);
    free(v);
    if (c->rv != CKR_OK) {
        free(a->keys);
        a->keys = NULL;
        return P11PSK_ST_TOKEN;
    }
    a->n = n;
    return P11PSK_ST_OK;
}

/* ---- the daemon's lookup by CKA_ID ---- */

/* One thread rescans when the last scan is old enough; the others search as before. */
static int rescan_due(p11psk_token *tok)
{
    long long now = p11psk_mono_ms();
    int due;

    pthread_mutex_lock(&tok->lock);
    due = now - tok->scanned_ms >= RESCAN_MIN_MS;
    if (due)
        tok->scanned_ms = now;
    pthread_mutex_unlock(&tok->lock);
    return due;
}

/* Unlinks the entries a scan marked as clashing; arg counts them. */
static int unlink_clash(p11psk_hnode *node, void *arg)
{
    struct id_ent *e = (struct id_ent *)node;

    if (!e->clash)
        return 0;
    ent_free(e);
    (*(size_t *)arg)++;
    return 1;
}

/* Adds every key the token holds to the table: one scan instead of one search per key
 * (searches grow with the object count). A CKA_ID that two keys share is left out, so its
 * lookup reports the clash. */
int p11psk_token_prefetch(p11psk_token *tok, size_t *count, p11psk_err *err)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}};
    struct find_arg a = {t, 1, NULL, 0};
    struct id_ent *e;
    unsigned long scan, gen;
    size_t i, n = 0, clashes = 0;
    int st;

    pthread_mutex_lock(&tok->lock);
    tok->scanned_ms = p11psk_mono_ms();
    pthread_mutex_unlock(&tok->lock);
    pthread_rwlock_rdlock(&tok->cachelock);
    gen = tok->ids_gen;
    pthread_rwlock_unlock(&tok->cachelock);
    if ((st = token_with_session(tok, op_find, &a, err)) != P11PSK_ST_OK)
        return st;
    pthread_rwlock_wrlock(&tok->cachelock);
    scan = ++tok->scans;
    /* Entries dropped during the scan (a FLUSH) may be in it: keep none of it. */
    for (i = 0; tok->ids_gen == gen && i < a.n; i++) {
        p11psk_key *k = &a.keys[i];

        if (!token_key_type_ok(k->type) || k->idlen == 0 || k->idlen > P11PSK_ID_MAX ||
            k->len == 0 || k->len > P11PSK_KEY_LEN_MAX)
            continue;
        if ((e = ids_find(tok, k->id, k->idlen)) == NULL) {
            if ((e = ids_add(tok, k)) == NULL)
                break;
        } else if (e->scan == scan) { /* a second key with this CKA_ID */
            e->clash = 1;
            continue;
        } else {
            /* Keep the fingerprint last served: the next lookup compares the (maybe new)
             * object's value with it. Another object is validated before it is used. */
            if (e->key.fp_ok) {
                k->fp_ok = 1;
                memcpy(k->fp, e->key.fp, sizeof(k->fp));
            }
            if (k->obj != e->key.obj)
                e->validated_ms = e->value_ms = 0;
        }
        e->key = *k; /* same id bytes, so the node's key stays valid */
        e->scan = scan;
        e->clash = 0;
        n++;
    }
    /* Clashing ids are searched one by one, which reports the clash. */
    p11psk_htable_unlink_if(&tok->ids, unlink_clash, &clashes);
    pthread_rwlock_unlock(&tok->cachelock);
    free(a.keys);
    if (count != NULL)
        *count = n - clashes;
    return P11PSK_ST_OK;
}

int token_search_id(p11psk_token *tok, const uint8_t *id, size_t idlen, p11psk_key *key,
                    p11psk_err *err)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)id, idlen}};
    struct find_arg a = {t, 2, NULL, 0};
    char hex[2 * P11PSK_KEY_ID_MAX + 1];
    int st;

    id_hex(id, idlen, hex);
    if ((st = token_with_session(tok, op_find, &a, err)) != P11PSK_ST_OK)
        return st;
    /* Nothing found may mean the token forgot our login (private objects vanish then);
     * two objects, a rotation between its create and destroy. Look once more. */
    if (a.n == 0 && token_login_lost(tok)) {
        p11psk_err why;

        p11psk_err_set(&why, P11PSK_ST_NOT_FOUND, "CKA_ID %s not found while logged out", hex);
        token_relogin(tok, &why);
        if ((st = token_with_session(tok, op_find, &a, err)) != P11PSK_ST_OK)
            return st;
    } else if (a.n > 1) {
        struct timespec pause = {0, 20 * 1000 * 1000};

        free(a.keys);
        nanosleep(&pause, NULL);
        if ((st = token_with_session(tok, op_find, &a, err)) != P11PSK_ST_OK)
            return st;
    }
    if (a.n > 0)
        *key = a.keys[0];
    free(a.keys);
    if (a.n == 0)
        return p11psk_err_set(err, P11PSK_ST_NOT_FOUND, "no key with CKA_ID %s in token %s", hex,
                              tok->label);
    if (a.n > 1)
        return p11psk_err_set(err, P11PSK_ST_UNSUPPORTED,
                              "%zu keys share CKA_ID %s in token %s; remove the extra ones", a.n,
                              hex, tok->label);
    if (!token_key_type_ok(key->type))
        return p11psk_err_set(err, P11PSK_ST_UNSUPPORTED,
                              "key '%s' (CKA_ID %s) is not a generic secret or AES key", key->label,
                              hex);
    if (key->len == 0 || key->len > P11PSK_KEY_LEN_MAX)
        return p11psk_err_set(err, P11PSK_ST_UNSUPPORTED,
                              "key '%s' (CKA_ID %s) has an unsupported length %zu", key->label, hex,
                              key->len);
    return P11PSK_ST_OK;
}

int p11psk_token_find_id(p11psk_token *tok, const uint8_t *id, size_t idlen, p11psk_key *key,
                         p11psk_err *err)
{
    unsigned long gen;
    int r, st;

    if (idlen == 0 || idlen > P11PSK_ID_MAX)
        return p11psk_err_set(err, P11PSK_ST_BAD_HANDLE, "bad key id length %zu", idlen);
    r = ids_lookup(tok, id, idlen, key, &gen);
    if (r == LOOK_MISS && rescan_due(tok) && p11psk_token_prefetch(tok, NULL, err) == P11PSK_ST_OK)
        r = ids_lookup(tok, id, idlen, key, &gen);
    if (r == LOOK_FRESH)
        return P11PSK_ST_OK;
    if (r == LOOK_EXISTS || r == LOOK_CHECK)
        return token_revalidate(tok, key, gen, r == LOOK_CHECK, err);
    if ((st = token_search_id(tok, id, idlen, key, err)) != P11PSK_ST_OK)
        return st;
    if ((st = token_fingerprint(tok, key, err)) != P11PSK_ST_OK)
        return st;
    /* Another thread may have added it meanwhile: then this validation refreshes it. */
    token_ids_validated(tok, id, idlen, key, gen, 1);
    return P11PSK_ST_OK;
}

struct expiry_count {
    long long now, soon_end;
    size_t expired, soon;
};

static int count_expiry(p11psk_hnode *node, void *arg)
{
    const struct id_ent *e = (const struct id_ent *)node;
    struct expiry_count *c = arg;

    if (p11psk_key_expired(&e->key, c->now))
        c->expired++;
    else if (e->key.expires_at != 0 && e->key.expires_at <= c->soon_end)
        c->soon++;
    return 0; /* a visit, not an unlink */
}

void p11psk_token_expiry_counts(p11psk_token *tok, long long now, long long within_s,
                                size_t *expired, size_t *soon)
{
    struct expiry_count c = {now, now + within_s, 0, 0};

    pthread_rwlock_wrlock(&tok->cachelock);
    p11psk_htable_unlink_if(&tok->ids, count_expiry, &c);
    pthread_rwlock_unlock(&tok->cachelock);
    *expired = c.expired;
    *soon = c.soon;
}

/* ---- the CLI's search by label ---- */

int p11psk_token_list(p11psk_token *tok, const char *label, p11psk_key **keys, size_t *n,
                      p11psk_err *err)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_LABEL, (void *)label, label ? strlen(label) : 0}};
    struct find_arg a = {t, label ? 2 : 1, NULL, 0};
    size_t i, kept = 0;
    int st;

    *keys = NULL;
    *n = 0;
    if ((st = token_with_session(tok, op_find, &a, err)) != P11PSK_ST_OK)
        return st;
    for (i = 0; i < a.n; i++) /* keys of unsupported types are skipped */
        if (token_key_type_ok(a.keys[i].type))
            a.keys[kept++] = a.keys[i];
    if (kept == 0) {
        free(a.keys);
        a.keys = NULL;
    }
    *keys = a.keys;
    *n = kept;
    return P11PSK_ST_OK;
}
