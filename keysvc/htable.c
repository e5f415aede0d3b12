/* SPDX-License-Identifier: Apache-2.0 */
#include "htable.h"

#include <stdlib.h>
#include <string.h>

static size_t bucket(const p11psk_htable *t, const uint8_t *key, size_t keylen)
{
    uint32_t h = 2166136261u; /* FNV-1a: short keys, no adversary-chosen collisions matter */
    size_t i;

    for (i = 0; i < keylen; i++)
        h = (h ^ key[i]) * 16777619u;
    return h & t->mask;
}

int p11psk_htable_init(p11psk_htable *t, size_t nbuckets)
{
    size_t n = 1;

    while (n < nbuckets && n < ((size_t)1 << 30))
        n <<= 1;
    memset(t, 0, sizeof(*t));
    if ((t->b = calloc(n, sizeof(*t->b))) == NULL)
        return -1;
    t->mask = n - 1;
    return 0;
}

void p11psk_htable_fini(p11psk_htable *t)
{
    free(t->b);
    memset(t, 0, sizeof(*t));
}

/* The link that points at the node with this key, or the bucket's terminating NULL. */
static p11psk_hnode **slot(const p11psk_htable *t, const void *key, size_t keylen)
{
    p11psk_hnode **pp = &t->b[bucket(t, key, keylen)];

    for (; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->keylen == keylen && memcmp((*pp)->key, key, keylen) == 0)
            break;
    return pp;
}

p11psk_hnode *p11psk_htable_find(const p11psk_htable *t, const void *key, size_t keylen)
{
    if (t->b == NULL)
        return NULL;
    return *slot(t, key, keylen);
}

void p11psk_htable_insert(p11psk_htable *t, p11psk_hnode *node)
{
    p11psk_hnode **head = &t->b[bucket(t, node->key, node->keylen)];

    node->next = *head;
    *head = node;
    t->n++;
}

void p11psk_htable_remove(p11psk_htable *t, p11psk_hnode *node)
{
    p11psk_hnode **pp = &t->b[bucket(t, node->key, node->keylen)];

    for (; *pp != NULL; pp = &(*pp)->next)
        if (*pp == node) {
            *pp = node->next;
            node->next = NULL;
            t->n--;
            return;
        }
}

size_t p11psk_htable_unlink_if(p11psk_htable *t, int (*fn)(p11psk_hnode *node, void *arg),
                               void *arg)
{
    p11psk_hnode **pp, *e, *next;
    size_t i, n = 0;

    if (t->b == NULL)
        return 0;
    for (i = 0; i <= t->mask; i++)
        for (pp = &t->b[i]; (e = *pp) != NULL;) {
            next = e->next; /* fn may free e */
            if (fn(e, arg)) {
                *pp = next;
                t->n--;
                n++;
            } else {
                pp = &e->next;
            }
        }
    return n;
}
