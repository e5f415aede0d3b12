/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11pskd's cache of values that depend on the PSK alone: the TLS 1.3 early secret and,
 * for TLS 1.2 plain PSK, the HMAC key H(premaster). Lives in the daemon only, in the
 * locked secure heap, bounded, with a TTL; `cache = off` disables it (strict mode).
 * Entries are keyed by the fingerprint of the key's value as the token computed it (see
 * token.h), so a value replaced under the same CKA_ID and label is never answered from
 * here; p11psk_keys_changed (keychange.h) also flushes the key's entries.
 */
#ifndef P11PSK_KEYSVC_CACHE_H
#define P11PSK_KEYSVC_CACHE_H

#include <stddef.h>
#include <stdint.h>

enum p11psk_cache_kind {
    P11PSK_CACHE_ES = 1,  /* HKDF-Extract(0, PSK) */
    P11PSK_CACHE_PMH = 2, /* H(premaster) for plain PSK */
};

typedef struct p11psk_cache p11psk_cache;

/* max_entries 0 or ttl_s 0: a cache that stores nothing. NULL on allocation failure. */
p11psk_cache *p11psk_cache_new(size_t max_entries, unsigned ttl_s);
void p11psk_cache_free(p11psk_cache *c);

#define P11PSK_CACHE_FP_LEN 32 /* P11PSK_KEY_FP_LEN */

/* Copies a fresh entry's value (len bytes) to out: 1 on a hit. fp: the key's current value
 * fingerprint (P11PSK_CACHE_FP_LEN bytes); an entry stored under another one is dropped.
 * fp NULL (no fingerprint known): always a miss, and put stores nothing. */
int p11psk_cache_get(p11psk_cache *c, const uint8_t *id, size_t idlen, const uint8_t *fp, int kind,
                     int md, uint8_t *out, size_t len);
void p11psk_cache_put(p11psk_cache *c, const uint8_t *id, size_t idlen, const uint8_t *fp, int kind,
                      int md, const uint8_t *val, size_t len);
/* Drops every entry of one key (idlen > 0) or all entries (id NULL). Returns the count. */
size_t p11psk_cache_flush(p11psk_cache *c, const uint8_t *id, size_t idlen);

typedef struct {
    unsigned long hits, misses, entries, max_entries, ttl_s;
} p11psk_cache_stats;
void p11psk_cache_get_stats(p11psk_cache *c, p11psk_cache_stats *st);

#endif
