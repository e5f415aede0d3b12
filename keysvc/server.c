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

#include "genpage.h"
#include "keychange.h"
#include "log.h"

static int str_is_same(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static p11psk_reload_hook reload_hook;

void p11psk_server_set_reload_hook(p11psk_reload_hook hook)
{
    reload_hook = hook;
}

/* SIGHUP: a new ACL, policy, log level and limits, without dropping connections. What needs
 * a restart (module, token, PIN source, socket, threads) is kept, with a warning. */
static void server_reload(server *s)
{
    p11psk_config nc, *cur = s->cfg;
    p11psk_acl old;
    char err[600];

    if (reload_hook != NULL)
        reload_hook(0, NULL);
    if (!p11psk_config_load(cur->path, &nc, err, sizeof(err))) {
        p11psk_log(P11PSK_LOG_ERROR, "reload refused, keeping the running configuration: %s", err);
        if (reload_hook != NULL)
            reload_hook(1, err);
        return;
    }
    if (p11psk_config_check_files(&nc, err, sizeof(err)) != 0) {
        p11psk_log(P11PSK_LOG_ERROR, "reload refused, keeping the running configuration: %s", err);
        p11psk_config_free(&nc);
        if (reload_hook != NULL)
            reload_hook(1, err);
        return;
    }
    /* The operator may have fixed the PIN: one login attempt is allowed again. */
    p11psk_token_pin_retry(s->tok);
    if (!str_is_same(nc.module, cur->module) || !str_is_same(nc.token_uri, cur->token_uri) ||
        !str_is_same(nc.p11kit_server, cur->p11kit_server) ||
        !str_is_same(nc.pin_source, cur->pin_source) || !str_is_same(nc.socket, cur->socket) ||
        nc.socket_mode != cur->socket_mode || nc.has_socket_group != cur->has_socket_group ||
        nc.socket_gid != cur->socket_gid || nc.threads != cur->threads || nc.cache != cur->cache ||
        nc.cache_ttl_s != cur->cache_ttl_s || nc.cache_size != cur->cache_size ||
        nc.max_connections > s->pool.cap)
        p11psk_log(P11PSK_LOG_WARN,
                   "reload: module, token, pin-source, socket*, threads, cache* and a larger "
                   "max-connections take effect only after a restart of p11pskd");
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
    cur->metrics_top_keys = nc.metrics_top_keys;
    cur->busy_poll_idle = nc.busy_poll_idle;
    cur->accept_rate_per_uid = nc.accept_rate_per_uid;
    cur->revalidate_ms = nc.revalidate_ms;
    cur->revalidate_value_ms = nc.revalidate_value_ms;
    p11psk_token_set_revalidate(s->tok, nc.revalidate_ms, nc.revalidate_value_ms);
    p11psk_log_set_level(nc.log_level);
    pthread_rwlock_unlock(&s->cfglock);
    /* An allow rule may have gone: providers must ask again before using a binder key. */
    p11psk_genpage_bump();
    p11psk_log(P11PSK_LOG_INFO, "reloaded %s: %zu allow rules, log-level %s", cur->path, cur->acl.n,
               p11psk_log_level_name(cur->log_level));
    if (cur->acl.n == 0)
        p11psk_log(P11PSK_LOG_WARN, "no allow rules in %s: every key request will be refused",
                   cur->path);
    p11psk_config_free(&nc);
    if (reload_hook != NULL)
        reload_hook(1, NULL);
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
    /* Without the page providers just do not cache binder keys: not worth refusing to run. */
    if (p11psk_genpage_open(why, sizeof(why)) != 0)
        p11psk_log(P11PSK_LOG_WARN, "%s; providers will not cache binder keys", why);
    memset(&s, 0, sizeof(s));
    s.cfg = cfg;
    s.tok = tok;
    s.lad = lad;
    s.cache = cache;
    s.lfd = listen_fd;
    if ((s.hk = p11psk_handlekey_new()) == NULL) {
        p11psk_log(P11PSK_LOG_ERROR, "out of memory");
        return -1;
    }
    handlers_handlekey_load(&s, 1); /* created here when the token is writable */
    clock_gettime(CLOCK_MONOTONIC, &s.started);
    p11psk_ratelimit_init(&s.rate);
    p11psk_ratelimit_init(&s.accept_rate);
    if (conn_pool_init(&s.pool, cfg->max_connections) != 0) {
        p11psk_log(P11PSK_LOG_ERROR,
                   "cannot allocate buffers for %u connections "
                   "(max-connections)",
                   cfg->max_connections);
        p11psk_ratelimit_destroy(&s.rate);
        p11psk_ratelimit_destroy(&s.accept_rate);
        return -1;
    }
    pthread_mutex_init(&s.peerlock, NULL);
    {
        pthread_rwlockattr_t ra;

        /* A reload must not wait behind a steady stream of requests. */
        pthread_rwlockattr_init(&ra);
        pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
        pthread_rwlock_init(&s.cfglock, &ra);
        pthread_rwlockattr_destroy(&ra);
    }
    if (stats_init(&s) != 0) {
        p11psk_log(P11PSK_LOG_ERROR, "out of memory for the request statistics");
        return -1;
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
    p11psk_genpage_close(); /* providers drop their binder keys and ask the next daemon */
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
    stats_fini(&s);
    p11psk_ratelimit_destroy(&s.accept_rate);
    conn_pool_fini(&s.pool);
    pthread_rwlock_destroy(&s.cfglock);
    pthread_mutex_destroy(&s.peerlock);
    p11psk_handlekey_free(s.hk);
    if (sig != 0 && sig != SIGHUP)
        p11psk_log(P11PSK_LOG_INFO, "stopping on signal %d", sig);
    return rc;
}
