/* SPDX-License-Identifier: Apache-2.0 */
/* p11pskd's per-key request counters (key_usage.h). */
#include "key_usage.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "htable.h"

#define KEY_USAGE_BUCKETS 1024

struct ku_ent {
    p11psk_hnode node; /* keyed by label */
    key_usage_row row;
};

struct key_usage {
    pthread_mutex_t lock;
    p11psk_htable t;
    unsigned long untracked;
};

key_usage *key_usage_new(void)
{
    key_usage *ku = calloc(1, sizeof(*ku));

    if (ku == NULL)
        return NULL;
    if (p11psk_htable_init(&ku->t, KEY_USAGE_BUCKETS) != 0) {
        free(ku);
        return NULL;
    }
    pthread_mutex_init(&ku->lock, NULL);
    return ku;
}

static int drop(p11psk_hnode *n, void *arg)
{
    (void)arg;
    free(n); /* the node is the entry's first member */
    return 1;
}

void key_usage_free(key_usage *ku)
{
    if (ku == NULL)
        return;
    p11psk_htable_unlink_if(&ku->t, drop, NULL);
    p11psk_htable_fini(&ku->t);
    pthread_mutex_destroy(&ku->lock);
    free(ku);
}

void key_usage_note(key_usage *ku, const char *label, long long now)
{
    size_t len = strlen(label);
    struct ku_ent *e;

    if (ku == NULL)
        return;
    pthread_mutex_lock(&ku->lock);
    e = (struct ku_ent *)p11psk_htable_find(&ku->t, label, len);
    if (e == NULL && ku->t.n < KEY_USAGE_MAX && (e = calloc(1, sizeof(*e))) != NULL) {
        memcpy(e->row.label, label, len < sizeof(e->row.label) ? len : sizeof(e->row.label) - 1);
        e->node.key = (const uint8_t *)e->row.label;
        e->node.keylen = strlen(e->row.label);
        p11psk_htable_insert(&ku->t, &e->node);
    }
    if (e != NULL) {
        e->row.requests++;
        e->row.last_use = now;
    } else {
        ku->untracked++;
    }
    pthread_mutex_unlock(&ku->lock);
}

struct top_arg {
    key_usage_row *rows;
    size_t cap, n;
};

/* Keeps rows sorted by requests (then label): insertion into at most cap rows. */
static int keep_top(p11psk_hnode *node, void *varg)
{
    const key_usage_row *r = &((const struct ku_ent *)node)->row;
    struct top_arg *a = varg;
    size_t i = a->n;

    while (i > 0 &&
           (a->rows[i - 1].requests < r->requests ||
            (a->rows[i - 1].requests == r->requests && strcmp(a->rows[i - 1].label, r->label) > 0)))
        i--;
    if (i >= a->cap)
        return 0;
    memmove(&a->rows[i + 1], &a->rows[i],
            ((a->n < a->cap ? a->n : a->cap - 1) - i) * sizeof(*a->rows));
    a->rows[i] = *r;
    if (a->n < a->cap)
        a->n++;
    return 0; /* a visit, not an unlink */
}

size_t key_usage_top(key_usage *ku, key_usage_row *rows, size_t n, unsigned long *untracked)
{
    struct top_arg a = {rows, n, 0};

    *untracked = 0;
    if (ku == NULL || n == 0)
        return 0;
    pthread_mutex_lock(&ku->lock);
    p11psk_htable_unlink_if(&ku->t, keep_top, &a);
    *untracked = ku->untracked;
    pthread_mutex_unlock(&ku->lock);
    return a.n;
}
