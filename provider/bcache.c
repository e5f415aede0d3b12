/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Binder-key cache, one per provider context. TLS 1.3 derives the binder key
 * Derive-Secret(ES, "ext binder" | "res binder", "") in every handshake on a PSK, and it is
 * the same every time for a given key; libssl receives it each time anyway. Caching it
 * leaves one round trip to p11pskd per handshake side: the handshake secret.
 *
 * Only that expand is cached: prefix "tls13 ", label "ext binder" or "res binder", DATA the
 * hash of the empty string (what libssl's tls_psk_do_binder passes), output one hash long.
 * Never the early secret, the derived salt, the handshake secret or anything else. The key
 * is the early-secret placeholder exactly as libssl passed it (opaque bytes), the digest
 * and the label.
 *
 * Memory: one fixed mmap region, locked (mlock), left out of core dumps (MADV_DONTDUMP) and
 * zeroed in a forked child (MADV_WIPEONFORK: the child starts empty, the parent's entries
 * are never copied). If any of these fails the cache is off. Entries expire after the TTL
 * and are cleansed on eviction, on a generation change (genpage.c) and at unload.
 */
#define _GNU_SOURCE
#include "prov.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/params.h>

#include "p11psk/clock.h"

#define BC_ENTRIES 64
#define BC_KEY_MAX 64 /* longest placeholder cached; longer ones are simply not */
#define BC_VAL_MAX 48
#define BC_TTL_MAX 86400

typedef struct {
    uint8_t used, md, label, keylen;
    uint8_t key[BC_KEY_MAX];
    uint8_t val[BC_VAL_MAX];
    long long expires_ms;
} bc_entry;

/* All zero is a valid empty state: what a child sees after MADV_WIPEONFORK. */
typedef struct {
    atomic_int lock; /* a spin lock: held for a few hundred ns, and valid when zeroed */
    pid_t pid;       /* process that locked the pages (mlock is not inherited) */
    int off;         /* mlock failed in this process */
    uint64_t gen;    /* generation the entries were made under; 0: none */
    unsigned next;   /* round-robin victim */
    bc_entry e[BC_ENTRIES];
} bc_region;

struct p11psk_bcache {
    bc_region *r;
    P11PSK_GENPAGE *gp; /* the context's generation page (genpage.c), not owned */
    size_t len;
    unsigned ttl_s;
};

static const char *const bc_labels[] = {"ext binder", "res binder"};

/* Hash of the empty string, by P11PSK_MD_*: the DATA of a binder-key expand. */
static const uint8_t empty_sha256[32] = {
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};
static const uint8_t empty_sha384[48] = {
    0x38, 0xb0, 0x60, 0xa7, 0x51, 0xac, 0x96, 0x38, 0x4c, 0xd9, 0x32, 0x7e, 0xb1, 0xb1, 0xe3, 0x6a,
    0x21, 0xfd, 0xb7, 0x11, 0x14, 0xbe, 0x07, 0x43, 0x4c, 0x0c, 0xc7, 0xbf, 0x63, 0xf6, 0xe1, 0xda,
    0x27, 0x4e, 0xde, 0xbf, 0xe7, 0x6f, 0x65, 0xfb, 0xd5, 0x1a, 0xd2, 0xf1, 0x48, 0x98, 0xb9, 0x5b};

int p11psk_bcache_conf(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in, unsigned *ttl_s,
                       char *err, size_t errlen)
{
    OSSL_FUNC_core_get_params_fn *c_get_params = NULL;
    const char *v = NULL;
    char *end;
    long t;

    *ttl_s = P11PSK_BCACHE_TTL_DEFAULT;
    for (; in->function_id != 0; in++)
        if (in->function_id == OSSL_FUNC_CORE_GET_PARAMS)
            c_get_params = OSSL_FUNC_core_get_params(in);
    if (c_get_params != NULL) {
        OSSL_PARAM params[] = {OSSL_PARAM_utf8_ptr(P11PSK_CONF_BCACHE_TTL, (char **)&v, 0),
                               OSSL_PARAM_END};

        if (!c_get_params(handle, params))
            v = NULL;
    }
    if (v == NULL || v[0] == '\0')
        return 0;
    errno = 0;
    t = strtol(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || t < 0 || t > BC_TTL_MAX) {
        snprintf(err, errlen, "%s \"%.32s\": expected seconds in 0..%d (0: no cache)",
                 P11PSK_CONF_BCACHE_TTL, v, BC_TTL_MAX);
        return -1;
    }
    *ttl_s = (unsigned)t;
    return 0;
}

static void say_off_once(const char *why)
{
    static atomic_int said;

    if (atomic_exchange(&said, 1) == 0)
        p11psk_debug("binder-key cache off: %s", why);
}

P11PSK_BCACHE *p11psk_bcache_new(unsigned ttl_s, P11PSK_GENPAGE *gp)
{
    size_t len = (sizeof(bc_region) + 4095) & ~(size_t)4095;
    P11PSK_BCACHE *bc;
    void *p;

    if (ttl_s == 0)
        return NULL; /* configured off */
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        say_off_once("mmap failed");
        return NULL;
    }
    if (madvise(p, len, MADV_DONTDUMP) != 0 || madvise(p, len, MADV_WIPEONFORK) != 0 ||
        mlock(p, len) != 0) {
        say_off_once(errno == ENOMEM || errno == EPERM
                         ? "cannot lock its memory (RLIMIT_MEMLOCK)"
                         : "the kernel lacks MADV_DONTDUMP or MADV_WIPEONFORK");
        munmap(p, len);
        return NULL;
    }
    if ((bc = OPENSSL_zalloc(sizeof(*bc))) == NULL) {
        munlock(p, len);
        munmap(p, len);
        return NULL;
    }
    bc->r = p;
    bc->len = len;
    bc->ttl_s = ttl_s;
    bc->gp = gp;
    bc->r->pid = getpid();
    return bc;
}

void p11psk_bcache_free(P11PSK_BCACHE *bc)
{
    if (bc == NULL)
        return;
    OPENSSL_cleanse(bc->r, bc->len);
    munlock(bc->r, bc->len);
    munmap(bc->r, bc->len);
    OPENSSL_free(bc);
}

static void bc_lock(bc_region *r)
{
    int spins = 0;

    while (atomic_exchange_explicit(&r->lock, 1, memory_order_acquire) != 0)
        if (++spins % 64 == 0)
            sched_yield();
}

static void bc_unlock(bc_region *r)
{
    atomic_store_explicit(&r->lock, 0, memory_order_release);
}

static void bc_drop_all(bc_region *r)
{
    OPENSSL_cleanse(r->e, sizeof(r->e));
    r->next = 0;
}

/*
 * Lock held. Brings the region to this process and to generation g: a forked child finds it
 * zeroed and locks its pages again; a new generation drops every entry. 0 if usable.
 */
static int bc_enter(P11PSK_BCACHE *bc, uint64_t g)
{
    bc_region *r = bc->r;
    pid_t pid = getpid();

    if (r->pid != pid) {
        bc_drop_all(r); /* zero already after fork; a raw clone without the wipe too */
        r->pid = pid;
        r->off = mlock(r, bc->len) != 0;
        if (r->off)
            say_off_once("cannot lock its memory in a forked child (RLIMIT_MEMLOCK)");
    }
    if (r->gen != g) {
        bc_drop_all(r);
        r->gen = g;
    }
    return r->off || g == 0 ? -1 : 0;
}

/* The label's index if this expand is a binder key, else -1. */
static int bc_binder_label(const P11PSK_KDF_CTX *ctx, int md, size_t outlen)
{
    const uint8_t *empty = md == P11PSK_MD_SHA256   ? empty_sha256
                           : md == P11PSK_MD_SHA384 ? empty_sha384
                                                    : NULL;
    size_t hl = p11psk_md_size(md), i;

    if (empty == NULL || outlen != hl || hl > BC_VAL_MAX || ctx->key.len == 0 ||
        ctx->key.len > BC_KEY_MAX || ctx->prefix.len != 6 ||
        memcmp(ctx->prefix.p, "tls13 ", 6) != 0 || ctx->data.p == NULL || ctx->data.len != hl ||
        memcmp(ctx->data.p, empty, hl) != 0)
        return -1;
    for (i = 0; i < sizeof(bc_labels) / sizeof(bc_labels[0]); i++)
        if (ctx->label.len == strlen(bc_labels[i]) &&
            memcmp(ctx->label.p, bc_labels[i], ctx->label.len) == 0)
            return (int)i;
    return -1;
}

static bc_entry *bc_find(bc_region *r, const P11PSK_KDF_CTX *ctx, int md, int label)
{
    size_t i;

    for (i = 0; i < BC_ENTRIES; i++) {
        bc_entry *e = &r->e[i];

        if (e->used && e->md == md && e->label == label && e->keylen == ctx->key.len &&
            memcmp(e->key, ctx->key.p, ctx->key.len) == 0)
            return e;
    }
    return NULL;
}

int p11psk_bcache_get(P11PSK_BCACHE *bc, const P11PSK_KDF_CTX *ctx, int md, uint8_t *out,
                      size_t outlen, p11psk_bcache_ticket *t)
{
    bc_entry *e;
    uint64_t g;
    int hit = 0;

    memset(t, 0, sizeof(*t));
    if (bc == NULL || (t->label = bc_binder_label(ctx, md, outlen)) < 0)
        return -1;
    if ((g = p11psk_genpage_read(bc->gp)) == 0) {
        /*
         * No page (yet, or p11pskd stopped): drop what we hold and ask for a page once this
         * round trip has succeeded, so that a hung p11pskd costs one timeout, not two. The
         * value of this round trip is not cached: no generation was seen before it.
         */
        bc_lock(bc->r);
        bc_enter(bc, 0);
        bc_unlock(bc->r);
        t->want_page = 1;
        return -1;
    }
    bc_lock(bc->r);
    if (bc_enter(bc, g) == 0) {
        t->gen = g;
        t->takes = 1;
        if ((e = bc_find(bc->r, ctx, md, t->label)) != NULL) {
            if (p11psk_mono_ms() < e->expires_ms) {
                memcpy(out, e->val, outlen);
                hit = 1;
            } else {
                OPENSSL_cleanse(e, sizeof(*e));
            }
        }
    }
    bc_unlock(bc->r);
    if (hit)
        p11psk_debug("%s: binder key from the provider cache", P11PSK_KDF_TLS13_NAME);
    return hit ? 0 : -1;
}

void p11psk_bcache_put(P11PSK_BCACHE *bc, const P11PSK_KDF_CTX *ctx, int md, const uint8_t *val,
                       size_t len, const p11psk_bcache_ticket *t)
{
    bc_region *r;
    bc_entry *e;
    size_t i;

    if (bc != NULL && t->want_page) {
        p11psk_genpage_want(bc->gp);
        return;
    }
    /* A key change while the answer was on its way: the value may be the old key's. */
    if (bc == NULL || !t->takes || p11psk_genpage_read(bc->gp) != t->gen)
        return;
    r = bc->r;
    bc_lock(r);
    /* Checked again under the lock: never move the region back to an older generation. */
    if (p11psk_genpage_read(bc->gp) == t->gen && bc_enter(bc, t->gen) == 0) {
        if ((e = bc_find(r, ctx, md, t->label)) == NULL) {
            long long now = p11psk_mono_ms();

            for (i = 0; i < BC_ENTRIES && e == NULL; i++)
                if (!r->e[i].used || r->e[i].expires_ms <= now)
                    e = &r->e[i];
            if (e == NULL)
                e = &r->e[r->next++ % BC_ENTRIES];
        }
        OPENSSL_cleanse(e, sizeof(*e));
        e->used = 1;
        e->md = (uint8_t)md;
        e->label = (uint8_t)t->label;
        e->keylen = (uint8_t)ctx->key.len;
        memcpy(e->key, ctx->key.p, ctx->key.len);
        memcpy(e->val, val, len);
        e->expires_ms = p11psk_mono_ms() + (long long)bc->ttl_s * 1000;
    }
    bc_unlock(r);
}
