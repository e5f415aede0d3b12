/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A chained hash table keyed by bytes. Entries belong to the caller: each embeds a
 * p11psk_hnode pointing at its own key bytes, and the table only links them, so the
 * only allocation is the bucket array at init. Not thread-safe: callers hold their lock.
 */
#ifndef P11PSK_KEYSVC_HTABLE_H
#define P11PSK_KEYSVC_HTABLE_H

#include <stddef.h>
#include <stdint.h>

typedef struct p11psk_hnode {
    struct p11psk_hnode *next;
    const uint8_t *key; /* inside the entry; must not change while linked */
    size_t keylen;
} p11psk_hnode;

typedef struct {
    p11psk_hnode **b;
    size_t mask; /* buckets - 1 */
    size_t n;    /* linked entries */
} p11psk_htable;

/* nbuckets is rounded up to a power of two. Returns 0, or -1 when out of memory. */
int p11psk_htable_init(p11psk_htable *t, size_t nbuckets);
/* Frees the bucket array only: unlink (and free) the entries first. */
void p11psk_htable_fini(p11psk_htable *t);

p11psk_hnode *p11psk_htable_find(const p11psk_htable *t, const void *key, size_t keylen);
/* Links a node whose key is not in the table yet (set node->key and keylen first). */
void p11psk_htable_insert(p11psk_htable *t, p11psk_hnode *node);
/* Unlinks a linked node; the caller frees it. */
void p11psk_htable_remove(p11psk_htable *t, p11psk_hnode *node);

/* Calls fn on every node; a node for which fn returns nonzero is unlinked, and fn may
 * already have freed it (the table does not touch it again). Returns the unlinked count. */
size_t p11psk_htable_unlink_if(p11psk_htable *t, int (*fn)(p11psk_hnode *node, void *arg),
                               void *arg);

#endif
