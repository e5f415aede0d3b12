/* SPDX-License-Identifier: Apache-2.0 */
#include "cache.h"

#include <openssl/crypto.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "htable.h"
#include "p11psk/clock.h"
#include "p11psk/handle.h"

#define BUCKETS 16384
#define VAL_MAX 48

/* Table key: kind, md, then the key's CKA_ID, so one table holds both kinds. */
enum { K_KIND, K_MD, K_ID };

struct ent {
    p11psk_hnode node;
    uint8_t k[K_ID + P11PSK_ID_MAX];
    uint8_t len;
    uint8_t fp[P11PSK_CACHE_FP_LEN]; /* the key value this entry was derived from */
    long long expires_ms;
    uint8_t val[VAL_MAX];
};

struct p11psk_cache {
    pthread_mutex_t lock;
    size_t max;
    unsigned ttl_s;
    unsigned long hits, misses;
    p11psk_htable t;
};

p11psk_cache *p11psk_cache_new(size_t max_entries, unsigned ttl_s)
{
    p11psk_cache *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    if (p11psk_htable_init(&c->t, BUCKETS) != 0) {
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->lock, NULL);
    c->max = ttl_s > 0 ? max_entries : 0;
    c->ttl_s = ttl_s;
    return c;
}

static void ent_free(struct ent *e)
{
    OPENSSL_secure_clear_free(e, sizeof(*e));
}

void p11psk_cache_free(p11psk_cache *c)
{
    if (c == NULL)
        return;
    p11psk_cache_flush(c, NULL, 0);
    p11psk_htable_fini(&c->t);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* Builds the table key in k; returns its length. */
static size_t key_make(uint8_t *k, const uint8_t *id, size_t idlen, int kind, int md)
{
    k[K_KIND] = (uint8_t)kind;
    k[K_MD] = (uint8_t)md;
    memcpy(k + K_ID, id, idlen);
    return K_ID + idlen;
}

static struct ent *find(p11psk_cache *c, const uint8_t *id, size_t idlen, int kind, int md)
{
    uint8_t k[K_ID + P11PSK_ID_MAX];
    p11psk_hnode *n = p11psk_htable_find(&c->t, k, key_make(k, id, idlen, kind, md));

    return n != NULL ? (struct ent *)n : NULL; /* node is the first member */
}

int p11psk_cache_get(p11psk_cache *c, const uint8_t *id, size_t idlen, const uint8_t *fp, int kind,
                     int md, uint8_t *out, size_t len)
{
    struct ent *e;
    int hit = 0;

    if (c == NULL || c->max == 0 || idlen > P11PSK_ID_MAX || fp == NULL)
        return 0;
    pthread_mutex_lock(&c->lock);
    if ((e = find(c, id, idlen, kind, md)) != NULL) {
        if (CRYPTO_memcmp(e->fp, fp, sizeof(e->fp)) != 0 || e->len != len ||
            e->expires_ms <= p11psk_mono_ms()) {
            p11psk_htable_remove(&c->t, &e->node); /* another key value, or expired */
            ent_free(e);
        } else {
            memcpy(out, e->val, len);
            hit = 1;
        }
    }
    if (hit)
        c->hits++;
    else
        c->misses++;
    pthread_mutex_unlock(&c->lock);
    return hit;
}

void p11psk_cache_put(p11psk_cache *c, const uint8_t *id, size_t idlen, const uint8_t *fp, int kind,
                      int md, const uint8_t *val, size_t len)
{
    struct ent *e;

    if (c == NULL || c->max == 0 || idlen > P11PSK_ID_MAX || len > VAL_MAX || fp == NULL)
        return;
    pthread_mutex_lock(&c->lock);
    if ((e = find(c, id, idlen, kind, md)) == NULL) {
        /* Full: keep what is there; new keys are derived in the token, only slower. */
        if (c->t.n >= c->max || (e = OPENSSL_secure_zalloc(sizeof(*e))) == NULL) {
            pthread_mutex_unlock(&c->lock);
            return;
        }
        e->node.key = e->k;
        e->node.keylen = key_make(e->k, id, idlen, kind, md);
        p11psk_htable_insert(&c->t, &e->node);
    }
    memcpy(e->fp, fp, sizeof(e->fp));
    e->len = (uint8_t)len;
    memcpy(e->val, val, len);
    e->expires_ms = p11psk_mono_ms() + (long long)c->ttl_s * 1000;
    pthread_mutex_unlock(&c->lock);
}

struct flush_arg {
    const uint8_t *id; /* NULL: everything */
    size_t idlen;
};

static int flush_match(p11psk_hnode *n, void *varg)
{
    const struct flush_arg *a = varg;
    struct ent *e = (struct ent *)n;

    if (a->id != NULL && (n->keylen != K_ID + a->idlen || memcmp(e->k + K_ID, a->id, a->idlen)))
        return 0;
    ent_free(e);
    return 1;
}

size_t p11psk_cache_flush(p11psk_cache *c, const uint8_t *id, size_t idlen)
{
    struct flush_arg a = {id, idlen};
    size_t n;

    if (c == NULL)
        return 0;
    pthread_mutex_lock(&c->lock);
    n = p11psk_htable_unlink_if(&c->t, flush_match, &a);
    pthread_mutex_unlock(&c->lock);
    return n;
}

void p11psk_cache_get_stats(p11psk_cache *c, p11psk_cache_stats *st)
{
    memset(st, 0, sizeof(*st));
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->lock);
    st->hits = c->hits;
    st->misses = c->misses;
    st->entries = c->t.n;
    st->max_entries = c->max;
    st->ttl_s = c->ttl_s;
    pthread_mutex_unlock(&c->lock);
}
