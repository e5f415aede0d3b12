/* SPDX-License-Identifier: Apache-2.0 */
/* p11pskd's server life: start the workers, reload on SIGHUP, stop on SIGTERM/SIGINT. */
#include "server_int.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "log.h"

static int str_is_same(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* SIGHUP: a new ACL, policy, log level and limits, without dropping connections. What needs
 * a restart (module, token, PIN source, socket, threads) is kept, with a warning. */
static void server_reload(server *s)
{
    p11psk_config nc, *cur = s->cfg;
    p11psk_acl old;
    char err[600];

    if (!p11psk_config_load(cur->path, &nc, err, sizeof(err))) {
        p11psk_log(P11PSK_LOG_ERROR, "reload refused, keeping the running configuration: %s", err);
        return;
    }
    if (!str_is_same(nc.module, cur->module) || !str_is_same(nc.token_uri, cur->token_uri) ||
        !str_is_same(nc.p11kit_server, cur->p11kit_server) ||
        !str_is_same(nc.pin_source, cur->pin_source) || !str_is_same(nc.socket, cur->socket) ||
        nc.socket_mode != cur->socket_mode || nc.has_socket_group != cur->has_socket_group ||
        nc.socket_gid != cur->socket_gid || nc.threads != cur->threads || nc.cache != cur->cache ||
        nc.cache_ttl_s != cur->cache_ttl_s || nc.cache_size != cur->cache_size)
        p11psk_log(P11PSK_LOG_WARN,
                   "reload: module, token, pin-source, socket*, threads and cache* changes take "
                   "effect only after a restart of p11pskd");
    pthread_rwlock_wrlock(&s->cfglock);
    old = cur->acl;
    cur->acl = nc.acl;
    nc.acl = old; /* freed with nc below */
    cur->policy = nc.policy;
    cur->log_level = nc.log_level;
    cur->max_connections = nc.max_connections;
    cur->max_connections_peer = nc.max_connections_peer;
    cur->request_timeout_ms = nc.request_timeout_ms;
    cur->busy_poll_us = nc.busy_poll_us;
    cur->revalidate_ms = nc.revalidate_ms;
    p11psk_token_set_revalidate(s->tok, nc.revalidate_ms);
    p11psk_log_set_level(nc.log_level);
    pthread_rwlock_unlock(&s->cfglock);
    p11psk_log(P11PSK_LOG_INFO, "reloaded %s: %zu allow rules, log-level %s", cur->path, cur->acl.n,
               p11psk_log_level_name(cur->log_level));
    if (cur->acl.n == 0)
        p11psk_log(P11PSK_LOG_WARN, "no allow rules in %s: every key request will be refused",
                   cur->path);
    p11psk_config_free(&nc);
}

/* ---- run ---- */

static unsigned default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    return n < 1 ? 1 : n > 16 ? 16 : (unsigned)n;
}

unsigned p11psk_server_threads(const p11psk_config *cfg)
{
    return cfg->threads > 0 ? cfg->threads : default_threads();
}

int p11psk_server_run(p11psk_config *cfg, p11psk_token *tok, p11psk_ladder *lad,
                      p11psk_cache *cache, int listen_fd)
{
    static server s; /* large: keep it off the stack */
    sigset_t sigs;
    size_t i, started = 0;
    int sig = 0, rc = 0;
    char why[128];

    /* Every operation in the table needs its handler, or requests for it would fail. */
    if (handlers_bind(why, sizeof(why)) != 0) {
        p11psk_log(P11PSK_LOG_ERROR, "%s", why);
        return -1;
    }
    memset(&s, 0, sizeof(s));
    s.cfg = cfg;
    s.tok = tok;
    s.lad = lad;
    s.cache = cache;
    s.lfd = listen_fd;
    clock_gettime(CLOCK_MONOTONIC, &s.started);
    p11psk_ratelimit_init(&s.rate);
    pthread_mutex_init(&s.peerlock, NULL);
    {
        pthread_rwlockattr_t ra;

        /* A reload must not wait behind a steady stream of requests. */
        pthread_rwlockattr_init(&ra);
        pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
        pthread_rwlock_init(&s.cfglock, &ra);
        pthread_rwlockattr_destroy(&ra);
    }
    if (pipe2(s.wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        p11psk_log(P11PSK_LOG_ERROR, "pipe: %s", strerror(errno));
        return -1;
    }
    /* Signals go to this thread only, through sigwait; workers inherit the mask. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    s.nworkers = p11psk_server_threads(cfg);
    s.workers = calloc(s.nworkers, sizeof(*s.workers));
    for (i = 0; s.workers != NULL && i < s.nworkers; i++) {
        worker *w = &s.workers[i];

        w->s = &s;
        w->conns = calloc(cfg->max_connections, sizeof(*w->conns));
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        if (w->conns == NULL || w->ep < 0 || pthread_create(&w->th, NULL, worker_main, w) != 0)
            break;
        started++;
    }
    if (started < s.nworkers) {
        p11psk_log(P11PSK_LOG_ERROR, "cannot start %zu worker threads", s.nworkers);
        rc = -1;
    } else {
        p11psk_log(P11PSK_LOG_INFO, "serving with %zu worker threads", s.nworkers);
    }
    while (rc == 0) {
        if (sigwait(&sigs, &sig) != 0)
            continue;
        if (sig != SIGHUP)
            break;
        server_reload(&s);
    }
    atomic_store(&s.stopping, 1);
    if (write(s.wake[1], "x", 1) < 0) {
        /* cannot happen on a fresh non-full pipe */
    }
    for (i = 0; i < started; i++)
        pthread_join(s.workers[i].th, NULL);
    for (i = 0; s.workers != NULL && i < s.nworkers; i++) {
        free(s.workers[i].conns);
        if (s.workers[i].ep > 0)
            close(s.workers[i].ep);
    }
    free(s.workers);
    free(s.peers);
    close(s.wake[0]);
    close(s.wake[1]);
    p11psk_ratelimit_destroy(&s.rate);
    pthread_rwlock_destroy(&s.cfglock);
    pthread_mutex_destroy(&s.peerlock);
    if (sig != 0 && sig != SIGHUP)
        p11psk_log(P11PSK_LOG_INFO, "stopping on signal %d", sig);
    return rc;
}
