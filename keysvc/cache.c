#include "cache.h"

#include <openssl/crypto.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "p11psk/handle.h"

#define BUCKETS 16384 /* power of two */
#define VAL_MAX 48

struct ent {
    struct ent *next;
    uint8_t id[P11PSK_ID_MAX];
    uint8_t idlen;
    uint8_t kind, md, len;
    CK_OBJECT_HANDLE obj;
    long long expires_ms;
    uint8_t val[VAL_MAX];
};

struct p11psk_cache {
    pthread_mutex_t lock;
    size_t max, n;
    unsigned ttl_s;
    unsigned long hits, misses;
    struct ent *b[BUCKETS];
};

static long long mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static unsigned hash(const uint8_t *id, size_t idlen, int kind, int md)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    size_t i;

    for (i = 0; i < idlen; i++)
        h = (h ^ id[i]) * 16777619u;
    h = (h ^ (uint32_t)kind) * 16777619u;
    h = (h ^ (uint32_t)md) * 16777619u;
    return h & (BUCKETS - 1);
}

p11psk_cache *p11psk_cache_new(size_t max_entries, unsigned ttl_s)
{
    p11psk_cache *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
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
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static struct ent **find(p11psk_cache *c, const uint8_t *id, size_t idlen, int kind, int md)
{
    struct ent **pp = &c->b[hash(id, idlen, kind, md)];

    for (; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->kind == kind && (*pp)->md == md && (*pp)->idlen == idlen &&
            memcmp((*pp)->id, id, idlen) == 0)
            break;
    return pp;
}

int p11psk_cache_get(p11psk_cache *c, const uint8_t *id, size_t idlen, CK_OBJECT_HANDLE obj,
                     int kind, int md, uint8_t *out, size_t len)
{
    struct ent **pp, *e;
    int hit = 0;

    if (c == NULL || c->max == 0 || idlen > P11PSK_ID_MAX)
        return 0;
    pthread_mutex_lock(&c->lock);
    pp = find(c, id, idlen, kind, md);
    if ((e = *pp) != NULL) {
        if (e->obj != obj || e->len != len || e->expires_ms <= mono_ms()) {
            *pp = e->next; /* another object (rotated) or expired */
            ent_free(e);
            c->n--;
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

void p11psk_cache_put(p11psk_cache *c, const uint8_t *id, size_t idlen, CK_OBJECT_HANDLE obj,
                      int kind, int md, const uint8_t *val, size_t len)
{
    struct ent **pp, *e;

    if (c == NULL || c->max == 0 || idlen > P11PSK_ID_MAX || len > VAL_MAX)
        return;
    pthread_mutex_lock(&c->lock);
    pp = find(c, id, idlen, kind, md);
    if ((e = *pp) == NULL) {
        /* Full: keep what is there; new keys are derived in the token, only slower. */
        if (c->n >= c->max || (e = OPENSSL_secure_zalloc(sizeof(*e))) == NULL) {
            pthread_mutex_unlock(&c->lock);
            return;
        }
        memcpy(e->id, id, idlen);
        e->idlen = (uint8_t)idlen;
        e->kind = (uint8_t)kind;
        e->md = (uint8_t)md;
        *pp = e;
        c->n++;
    }
    e->obj = obj;
    e->len = (uint8_t)len;
    memcpy(e->val, val, len);
    e->expires_ms = mono_ms() + (long long)c->ttl_s * 1000;
    pthread_mutex_unlock(&c->lock);
}

size_t p11psk_cache_flush(p11psk_cache *c, const uint8_t *id, size_t idlen)
{
    struct ent **pp, *e;
    size_t i, n = 0;

    if (c == NULL)
        return 0;
    pthread_mutex_lock(&c->lock);
    for (i = 0; i < BUCKETS; i++) {
        for (pp = &c->b[i]; (e = *pp) != NULL;) {
            if (id == NULL || (e->idlen == idlen && memcmp(e->id, id, idlen) == 0)) {
                *pp = e->next;
                ent_free(e);
                c->n--;
                n++;
            } else {
                pp = &e->next;
            }
        }
    }
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
    st->entries = c->n;
    st->max_entries = c->max;
    st->ttl_s = c->ttl_s;
    pthread_mutex_unlock(&c->lock);
}
