/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Daemon policy from p11pskd.conf: which derivations are served at all, whatever the ACL
 * says, and how fast one peer may ask.
 */
#ifndef P11PSK_KEYSVC_POLICY_H
#define P11PSK_KEYSVC_POLICY_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct {
    int allow_psk_ke;    /* TLS 1.3 PSK without (EC)DHE; default no */
    int readable_keys;   /* ladder step 3 (read a key value) allowed; default yes */
    unsigned digests;    /* bit (1 << P11PSK_MD_*) per allowed digest; default all */
    unsigned rate_limit; /* requests per second per peer uid, 0 = unlimited (default) */
} p11psk_policy;

void p11psk_policy_defaults(p11psk_policy *p);

/* Parses one policy key. Returns 1 if handled (ok or *err set), 0 if key is not a policy key. */
int p11psk_policy_set(p11psk_policy *p, const char *key, const char *v, int *ok, char *err,
                      size_t errlen);

int p11psk_policy_digest_ok(const p11psk_policy *p, int md);

/* "SHA256 SHA384": the allowed digests, for messages. */
void p11psk_policy_digests_str(const p11psk_policy *p, char *out, size_t outlen);

/* Per-uid token buckets: bounded, the least recently seen uid is recycled. */
#define P11PSK_RATE_SLOTS 256

typedef struct {
    uid_t uid;
    int used;
    double tokens;
    uint64_t last_us; /* CLOCK_MONOTONIC */
} p11psk_rate_slot;

typedef struct {
    pthread_mutex_t lock;
    p11psk_rate_slot slot[P11PSK_RATE_SLOTS];
} p11psk_ratelimit;

void p11psk_ratelimit_init(p11psk_ratelimit *rl);
void p11psk_ratelimit_destroy(p11psk_ratelimit *rl);

/* 1 if uid may make one more request now at rate per second (burst: one second's worth). */
int p11psk_ratelimit_take(p11psk_ratelimit *rl, unsigned rate, uid_t uid, uint64_t now_us);

#endif
