/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The map from early-secret placeholders back to PSK handles. libssl keeps the early secret
 * it gets from EXTRACT and hands it back to EXPAND and EXTRACT; the placeholder must be hash
 * length, too short for a PSK handle, so it carries a reference (handle.h) and the PSK handle
 * stays here. Bounded: the oldest entry makes room, and a handshake needs its entry only for
 * the few derivations that follow its early secret.
 */
#include "prov.h"

#include <string.h>

struct keymap_ent {
    uint8_t ref[P11PSK_ES_REF_MAX];
    size_t reflen; /* 0: unused */
    uint8_t psk[P11PSK_HANDLE_LEN];
};

struct p11psk_keymap {
    pthread_mutex_t lock;
    struct keymap_ent ent[P11PSK_KEYMAP_MAX];
    size_t next; /* the slot written next: the oldest entry once all are used */
};

p11psk_keymap *p11psk_keymap_new(void)
{
    p11psk_keymap *km = OPENSSL_zalloc(sizeof(*km));

    if (km != NULL && pthread_mutex_init(&km->lock, NULL) != 0) {
        OPENSSL_free(km);
        return NULL;
    }
    return km;
}

void p11psk_keymap_free(p11psk_keymap *km)
{
    if (km == NULL)
        return;
    pthread_mutex_destroy(&km->lock);
    OPENSSL_clear_free(km, sizeof(*km)); /* handles name keys: no trace left behind */
}

/* The slot holding ref, or P11PSK_KEYMAP_MAX; newest first, as a handshake asks right after
 * its EXTRACT. Call with the lock held. */
static size_t keymap_find(const p11psk_keymap *km, const uint8_t *ref, size_t reflen)
{
    size_t i, slot;

    for (i = 1; i <= P11PSK_KEYMAP_MAX; i++) {
        slot = (km->next + P11PSK_KEYMAP_MAX - i) % P11PSK_KEYMAP_MAX;
        if (km->ent[slot].reflen == reflen && memcmp(km->ent[slot].ref, ref, reflen) == 0)
            return slot;
    }
    return P11PSK_KEYMAP_MAX;
}

void p11psk_keymap_put(p11psk_keymap *km, const uint8_t *ref, size_t reflen,
                       const uint8_t psk[P11PSK_HANDLE_LEN])
{
    struct keymap_ent *e;

    if (reflen == 0 || reflen > P11PSK_ES_REF_MAX)
        return;
    pthread_mutex_lock(&km->lock);
    if (keymap_find(km, ref, reflen) == P11PSK_KEYMAP_MAX) { /* same ref: same handle */
        e = &km->ent[km->next];
        OPENSSL_cleanse(e, sizeof(*e));
        memcpy(e->ref, ref, reflen);
        e->reflen = reflen;
        memcpy(e->psk, psk, P11PSK_HANDLE_LEN);
        km->next = (km->next + 1) % P11PSK_KEYMAP_MAX;
    }
    pthread_mutex_unlock(&km->lock);
}

int p11psk_keymap_get(p11psk_keymap *km, const uint8_t *ref, size_t reflen,
                      uint8_t psk[P11PSK_HANDLE_LEN])
{
    size_t slot;

    pthread_mutex_lock(&km->lock);
    slot = keymap_find(km, ref, reflen);
    if (slot < P11PSK_KEYMAP_MAX)
        memcpy(psk, km->ent[slot].psk, P11PSK_HANDLE_LEN);
    pthread_mutex_unlock(&km->lock);
    return slot < P11PSK_KEYMAP_MAX ? 0 : -1;
}
