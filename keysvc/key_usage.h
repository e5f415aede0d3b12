/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11pskd's per-key usage: requests and last use by key label, for `p11psk status` and the
 * metrics. Bounded: at most KEY_USAGE_MAX labels are tracked (labels come only from keys
 * found in the token, so a client cannot invent them); the rest are counted as untracked.
 * Thread-safe.
 */
#ifndef P11PSK_KEYSVC_KEY_USAGE_H
#define P11PSK_KEYSVC_KEY_USAGE_H

#include <stddef.h>

#include "token.h"

#define KEY_USAGE_MAX 4096

typedef struct key_usage key_usage;

typedef struct {
    char label[P11PSK_KEY_LABEL_MAX];
    unsigned long requests;
    long long last_use; /* seconds since the epoch */
} key_usage_row;

/* NULL when out of memory (then nothing is counted). */
key_usage *key_usage_new(void);
void key_usage_free(key_usage *ku);
/* One request for the key labelled label at now (seconds since the epoch). */
void key_usage_note(key_usage *ku, const char *label, long long now);
/* The n most used keys, most used first, into rows[n]; returns how many were written.
 * *untracked gets the requests for keys beyond KEY_USAGE_MAX. */
size_t key_usage_top(key_usage *ku, key_usage_row *rows, size_t n, unsigned long *untracked);

#endif
