/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Connection buffers: one region for max-connections connections, mapped, locked in RAM and
 * left out of core dumps once at start. Accepting a connection takes a slot from the free
 * list and closing one cleanses it and gives it back, so that a peer that connects and
 * hangs up in a loop costs no mmap, mlock or page fault. One pool for all workers, not one
 * each: workers take uneven shares of new connections, and a pool of max-connections slots
 * never runs dry while conn_peer_admit says yes.
 */
#include "server_int.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "log.h"

int conn_pool_init(conn_pool *p, size_t n)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), i;

    memset(p, 0, sizeof(*p));
    p->len = (n * sizeof(conn) + page - 1) / page * page;
    p->base = mmap(NULL, p->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p->base == MAP_FAILED) {
        p->base = NULL;
        return -1;
    }
    if ((p->free = calloc(n, sizeof(*p->free))) == NULL) {
        munmap(p->base, p->len);
        p->base = NULL;
        return -1;
    }
    /* Connection buffers carry (EC)DHE secrets and derived keys. */
    madvise(p->base, p->len, MADV_DONTDUMP);
    if (mlock(p->base, p->len) != 0)
        p11psk_log(P11PSK_LOG_WARN,
                   "cannot lock %zu KiB of connection buffers in memory (%s); raise "
                   "LimitMEMLOCK / RLIMIT_MEMLOCK or lower max-connections, so that secrets "
                   "cannot be swapped out",
                   p->len / 1024, strerror(errno));
    else
        p->locked = 1;
    for (i = 0; i < n; i++) /* the lowest slots on top: fewer pages touched when quiet */
        p->free[i] = &p->base[n - 1 - i];
    p->nfree = p->cap = n;
    pthread_mutex_init(&p->lock, NULL);
    return 0;
}

void conn_pool_fini(conn_pool *p)
{
    if (p->base == NULL)
        return;
    OPENSSL_cleanse(p->base, p->len);
    if (p->locked)
        munlock(p->base, p->len);
    munmap(p->base, p->len);
    free(p->free);
    pthread_mutex_destroy(&p->lock);
    memset(p, 0, sizeof(*p));
}

conn *conn_new(server *s)
{
    conn *c = NULL;

    pthread_mutex_lock(&s->pool.lock);
    if (s->pool.nfree > 0)
        c = s->pool.free[--s->pool.nfree];
    pthread_mutex_unlock(&s->pool.lock);
    if (c != NULL)
        c->fd = -1; /* the rest is zero: slots are cleansed when given back */
    return c;
}

void conn_free(server *s, conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    OPENSSL_cleanse(c, sizeof(*c)); /* requests and answers may carry secrets */
    pthread_mutex_lock(&s->pool.lock);
    s->pool.free[s->pool.nfree++] = c;
    pthread_mutex_unlock(&s->pool.lock);
}
