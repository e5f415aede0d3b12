/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one place p11pskd reacts to a key that changed in the token: a FLUSH (p11psk rm,
 * rotate, migrate --replace) or a re-validation that found a key gone or with another
 * value. Whatever was derived from or remembered about the old key is dropped here, and the
 * generation page moves on (genpage.h) so that providers drop their cached binder keys.
 */
#ifndef P11PSK_KEYSVC_KEYCHANGE_H
#define P11PSK_KEYSVC_KEYCHANGE_H

#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "token.h"

/* The value cache p11psk_keys_changed flushes (p11pskd's; none in the CLI). */
void p11psk_keychange_init(p11psk_cache *cache);

/* Key id (NULL: every key) changed or disappeared: drops its cached values and its object
 * table entry, and bumps the generation page. why ("flush", "removed from the token", ...) goes to
 * the log with the CKA_ID. Returns the number of cached values dropped. */
size_t p11psk_keys_changed(p11psk_token *tok, const uint8_t *id, size_t idlen, const char *why);

/* How many times p11psk_keys_changed ran. */
unsigned long p11psk_keychange_count(void);

#endif
