/* SPDX-License-Identifier: Apache-2.0 */
#include "policy.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "p11psk/handle.h"
#include "parse.h"

#define ALL_DIGESTS ((1u << P11PSK_MD_SHA256) | (1u << P11PSK_MD_SHA384))

void p11psk_policy_defaults(p11psk_policy *p)
{
    p->allow_psk_ke = 0;
    p->readable_keys = 1;
    p->digests = ALL_DIGESTS;
    p->rate_limit = 0;
}

static int yes_no(const char *key, const char *v, int *out, char *err, size_t errlen)
{
    if (strcmp(v, "yes") == 0 || strcmp(v, "true") == 0 || strcmp(v, "on") == 0) {
        *out = 1;
        return 1;
    }
    if (strcmp(v, "no") == 0 || strcmp(v, "false") == 0 || strcmp(v, "off") == 0) {
        *out = 0;
        return 1;
    }
    snprintf(err, errlen, "%s must be yes or no", key);
    return 0;
}

static int set_digests(p11psk_policy *p, const char *v, char *err, size_t errlen)
{
    char word[32];
    unsigned mask = 0;
    size_t n, i;
    int md;

    while (*v != '\0') {
        n = strcspn(v, " \t,");
        if (n == 0) {
            v++;
            continue;
        }
        if (n >= sizeof(word)) {
            snprintf(err, errlen, "digests: '%.*s' is not a digest; use SHA256 and/or SHA384",
                     (int)(n > 40 ? 40 : n), v);
            return 0;
        }
        for (i = 0; i < n; i++)
            word[i] = (char)toupper((unsigned char)v[i]);
        word[n] = '\0';
        if ((md = p11psk_md_from_name(word)) == P11PSK_MD_NONE) {
            snprintf(err, errlen, "digests: '%s' is not supported; use SHA256 and/or SHA384", word);
            return 0;
        }
        mask |= 1u << md;
        v += n;
    }
    if (mask == 0) {
        snprintf(err, errlen, "digests needs at least one of SHA256, SHA384");
        return 0;
    }
    p->digests = mask;
    return 1;
}

static int set_rate(p11psk_policy *p, const char *v, char *err, size_t errlen)
{
    unsigned long n;

    if (p11psk_parse_uint(v, 10, 10000000UL, &n) != 0) {
        snprintf(err, errlen, "rate-limit must be requests per second (0 = unlimited)");
        return 0;
    }
    p->rate_limit = (unsigned)n;
    return 1;
}

int p11psk_policy_set(p11psk_policy *p, const char *key, const char *v, int *ok, char *err,
                      size_t errlen)
{
    if (strcmp(key, "allow-psk-ke") == 0)
        *ok = yes_no(key, v, &p->allow_psk_ke, err, errlen);
    else if (strcmp(key, "readable-keys") == 0)
        *ok = yes_no(key, v, &p->readable_keys, err, errlen);
    else if (strcmp(key, "digests") == 0)
        *ok = set_digests(p, v, err, errlen);
    else if (strcmp(key, "rate-limit") == 0)
        *ok = set_rate(p, v, err, errlen);
    else
        return 0;
    return 1;
}

int p11psk_policy_digest_ok(const p11psk_policy *p, int md)
{
    return md > 0 && md < 32 && (p->digests & (1u << md)) != 0;
}

void p11psk_policy_digests_str(const p11psk_policy *p, char *out, size_t outlen)
{
    size_t off = 0;
    int md;

    out[0] = '\0';
    for (md = P11PSK_MD_SHA256; md <= P11PSK_MD_SHA384; md++)
        if (p11psk_policy_digest_ok(p, md) && off < outlen)
            off += (size_t)snprintf(out + off, outlen - off, "%s%s", off ? " " : "",
                                    p11psk_md_name(md));
}

void p11psk_ratelimit_init(p11psk_ratelimit *rl)
{
    memset(rl->slot, 0, sizeof(rl->slot));
    pthread_mutex_init(&rl->lock, NULL);
}

void p11psk_ratelimit_destroy(p11psk_ratelimit *rl)
{
    pthread_mutex_destroy(&rl->lock);
}

int p11psk_ratelimit_take(p11psk_ratelimit *rl, unsigned rate, uid_t uid, uint64_t now_us)
{
    p11psk_rate_slot *s = NULL, *oldest = &rl->slot[0];
    double burst = rate;
    size_t i;
    int ok;

    if (rate == 0)
        return 1;
    pthread_mutex_lock(&rl->lock);
    for (i = 0; i < P11PSK_RATE_SLOTS; i++) {
        if (rl->slot[i].used && rl->slot[i].uid == uid) {
            s = &rl->slot[i];
            break;
        }
        if (!rl->slot[i].used || (oldest->used && rl->slot[i].last_us < oldest->last_us))
            oldest = &rl->slot[i];
    }
    if (s == NULL) { /* new or recycled: a full bucket */
        s = oldest;
        s->used = 1;
        s->uid = uid;
        s->tokens = burst;
        s->last_us = now_us;
    }
    s->tokens += (double)(now_us - s->last_us) * rate / 1e6;
    if (s->tokens > burst)
        s->tokens = burst;
    s->last_us = now_us;
    ok = s->tokens >= 1.0;
    if (ok)
        s->tokens -= 1.0;
    pthread_mutex_unlock(&rl->lock);
    return ok;
}
