/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The key generation page of p11pskd, mapped read-only once per provider context (each
 * context talks to its own p11pskd): its first 8 bytes
 * move whenever a key's value or existence may have changed, so a binder cache compares one
 * load with the value its entries were made under (bcache.c). Fetched with GEN_PAGE after
 * the first binder-key round trip that succeeded (never before one: a hung p11pskd would
 * cost two timeouts); a process that cannot get or map it does not cache.
 *
 * The page is checked before use: sealed against shrinking (a truncated file would fault us
 * with SIGBUS) and not mappable for writing (another client could otherwise hold the counter
 * still while keys change). A page p11pskd marked dead as it stopped is retired, never
 * unmapped (other threads may be reading it), and the next daemon's page is fetched.
 */
#define _GNU_SOURCE
#include "prov.h"

#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "p11psk/client.h"
#include "p11psk/clock.h"

#define GEN_DEAD UINT64_MAX /* what a stopping p11pskd leaves in its page */
#define GEN_RETRY_MS 10000  /* a failed fetch is not retried sooner */
#define GEN_RETIRED_MAX 16  /* daemon restarts followed; then this process stops caching */
/* GEN_PAGE needs no token: a p11pskd that does not answer it at once is stuck (a worker
 * blocked on a hung token), and the handshake waiting on us must not pay a full timeout. */
#define GEN_TIMEOUT_MAX_MS 500

struct p11psk_genpage {
    pthread_mutex_t lock; /* fetches only; readers never take it */
    char path[sizeof(((p11psk_conn *)0)->path)];
    int timeout_ms;
    p11psk_daemon_users users;              /* the page is taken only from an allowed daemon user */
    _Atomic(const _Atomic uint64_t *) page; /* NULL: none mapped */
    const void *retired[GEN_RETIRED_MAX];
    size_t nretired;
    long long next_try_ms;
    size_t len;
};

P11PSK_GENPAGE *p11psk_genpage_new(const char *path, int timeout_ms,
                                   const p11psk_daemon_users *users)
{
    P11PSK_GENPAGE *gp = OPENSSL_zalloc(sizeof(*gp));
    p11psk_conn c;

    if (gp == NULL)
        return NULL;
    pthread_mutex_init(&gp->lock, NULL);
    p11psk_conn_init_users(&c, path, timeout_ms, users);
    memcpy(gp->path, c.path, sizeof(gp->path));
    gp->timeout_ms = c.timeout_ms;
    gp->users = *users;
    return gp;
}

void p11psk_genpage_free(P11PSK_GENPAGE *gp)
{
    const void *cur;
    size_t i;

    if (gp == NULL)
        return;
    /* The provider context is going: nothing reads its pages any more. */
    cur = (const void *)atomic_exchange(&gp->page, NULL);
    if (cur != NULL)
        munmap((void *)cur, gp->len);
    for (i = 0; i < gp->nretired; i++)
        munmap((void *)gp->retired[i], gp->len);
    pthread_mutex_destroy(&gp->lock);
    OPENSSL_free(gp);
}

uint64_t p11psk_genpage_read(P11PSK_GENPAGE *gp)
{
    const _Atomic uint64_t *p =
        gp != NULL ? atomic_load_explicit(&gp->page, memory_order_acquire) : NULL;
    uint64_t g;

    if (p == NULL)
        return 0;
    g = atomic_load_explicit(p, memory_order_acquire);
    return g == GEN_DEAD ? 0 : g;
}

/* Maps a received page after checking it; the mapping, or NULL with the reason logged. */
static const void *map_page(int fd, size_t len)
{
    int seals = fcntl(fd, F_GET_SEALS);
    struct stat st;
    void *p;

    if (fstat(fd, &st) != 0 || (size_t)st.st_size != len) {
        p11psk_debug("generation page: not one page; not caching binder keys");
        return NULL;
    }
    if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW)) {
        p11psk_debug("generation page: not sealed against resizing; not caching binder keys");
        return NULL;
    }
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) {
        munmap(p, len);
        p11psk_debug("generation page: writable by clients; not caching binder keys");
        return NULL;
    }
    p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        p11psk_debug("generation page: mmap failed; not caching binder keys");
        return NULL;
    }
    return p;
}

/* One GEN_PAGE request on a connection of its own; the mapped page or NULL. Lock held. */
static const void *fetch_page(P11PSK_GENPAGE *gp)
{
    static uint8_t resp[P11PSK_WIRE_MAX]; /* a counter, no secret; one fetch at a time */
    static pthread_mutex_t resp_lock = PTHREAD_MUTEX_INITIALIZER;
    p11psk_frame req;
    p11psk_conn c;
    p11psk_msg m;
    const void *p = NULL;
    int fd = -1, rc, err = 0;

    p11psk_conn_init_users(
        &c, gp->path, gp->timeout_ms < GEN_TIMEOUT_MAX_MS ? gp->timeout_ms : GEN_TIMEOUT_MAX_MS,
        &gp->users);
    p11psk_frame_start(&req, P11PSK_OP_GEN_PAGE);
    if (p11psk_frame_finish(&req) == 0)
        return NULL;
    pthread_mutex_lock(&resp_lock);
    rc = p11psk_conn_call_fd(&c, &req, resp, &m, &fd, &err);
    p11psk_conn_close(&c);
    if (rc != P11PSK_CALL_OK)
        p11psk_debug("gen-page: %s; not caching binder keys", p11psk_call_strerror(rc));
    else if (m.code != P11PSK_ST_OK)
        p11psk_debug("gen-page: %s (an older p11pskd?); not caching binder keys",
                     p11psk_status_str(m.code));
    else if (fd < 0)
        p11psk_debug("gen-page: the answer carried no descriptor; not caching binder keys");
    else if ((p = map_page(fd, gp->len)) != NULL)
        p11psk_debug("gen-page: generation page mapped");
    pthread_mutex_unlock(&resp_lock);
    if (fd >= 0)
        close(fd); /* the mapping keeps the page */
    return p;
}

void p11psk_genpage_want(P11PSK_GENPAGE *gp)
{
    const _Atomic uint64_t *cur;
    const void *p;
    long long now = p11psk_mono_ms();
    const char *env = secure_getenv("P11PSK_NO_GEN_PAGE");
    long psz = sysconf(_SC_PAGESIZE);

    /* Test hook and escape hatch: behave as a process that cannot map the page. */
    if (gp == NULL || (env != NULL && env[0] != '\0' && strcmp(env, "0") != 0))
        return;
    /* Never wait here: a thread fetching already, or a lock inherited held across fork. */
    if (pthread_mutex_trylock(&gp->lock) != 0)
        return;
    cur = atomic_load(&gp->page);
    if (cur != NULL && atomic_load(cur) == GEN_DEAD) {
        /* p11pskd stopped; its successor has a page of its own. */
        if (gp->nretired < GEN_RETIRED_MAX) {
            gp->retired[gp->nretired++] = (const void *)cur;
            atomic_store(&gp->page, NULL);
            gp->next_try_ms = 0;
        }
        cur = atomic_load(&gp->page);
    }
    if (cur == NULL && now >= gp->next_try_ms) {
        gp->len = psz > 0 ? (size_t)psz : 4096;
        gp->next_try_ms = now + GEN_RETRY_MS;
        if ((p = fetch_page(gp)) != NULL)
            atomic_store_explicit(&gp->page, (const _Atomic uint64_t *)p, memory_order_release);
    }
    pthread_mutex_unlock(&gp->lock);
}
