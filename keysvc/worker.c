/* SPDX-License-Identifier: Apache-2.0 */
/* p11pskd's worker threads: each polls the shared listening socket and its own
 * connections, accepts, enforces deadlines and, on stop, flushes its answers. */
#include "server_int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include "log.h"
#include "p11psk/clock.h"
#include "p11psk/cpuidle.h"

/* Per wake-up, so that workers share new connections; large enough that a connection storm
 * is drained faster than it fills the backlog. */
#define ACCEPT_BURST 64
#define STOP_FLUSH_MS 1000

/* Which events a connection waits for: its answer to go out, or a request. */
static void conn_watch(worker *w, conn *c, int op)
{
    struct epoll_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.events = c->outlen > 0 ? EPOLLOUT : EPOLLIN;
    ev.data.ptr = c;
    c->watching = ev.events;
    epoll_ctl(w->ep, op, c->fd, &ev);
}

static void accept_some(worker *w)
{
    server *s = w->s;
    char why[200];
    socklen_t len;
    struct ucred cr;
    int i, fd;
    conn *c;

    for (i = 0; i < ACCEPT_BURST; i++) {
        fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                p11psk_log(P11PSK_LOG_ERROR, "accept: %s", strerror(errno));
            return;
        }
        /* Credentials first: every decision about this peer rests on them. */
        len = sizeof(cr);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0) {
            p11psk_log(P11PSK_LOG_ERROR, "SO_PEERCRED: %s", strerror(errno));
            close(fd);
            continue;
        }
        pthread_rwlock_rdlock(&s->cfglock);
        /* A peer that connects and hangs up in a loop is held to a rate, so that accepting
         * its connections cannot crowd out everyone else's. Root and our own user are not:
         * they can stop the daemon anyway. */
        if (cr.uid != 0 && cr.uid != geteuid() &&
            !p11psk_ratelimit_take(&s->accept_rate, s->cfg->accept_rate_per_uid, cr.uid,
                                   (uint64_t)p11psk_mono_us())) {
            snprintf(why, sizeof(why),
                     "uid %lu opened more than %u connections per second "
                     "(accept-rate-per-uid in %s)",
                     (unsigned long)cr.uid, s->cfg->accept_rate_per_uid, s->cfg->path);
            pthread_rwlock_unlock(&s->cfglock);
            conn_close_refused(fd, &cr, why);
            continue;
        }
        if (conn_peer_admit(s, cr.uid, why, sizeof(why)) != 0) {
            pthread_rwlock_unlock(&s->cfglock);
            conn_refuse(fd, &cr, why);
            continue;
        }
        pthread_rwlock_unlock(&s->cfglock);
        if ((c = conn_new(s)) == NULL) { /* max-connections was raised by a reload */
            conn_peer_release(s, cr.uid);
            snprintf(why, sizeof(why),
                     "all %zu connection buffers in use (a larger max-connections needs a "
                     "restart of p11pskd)",
                     s->pool.cap);
            conn_refuse(fd, &cr, why);
            continue;
        }
        c->fd = fd;
        c->cred = cr;
        conn_peer_details(c);
        atomic_fetch_add(&s->stats.connections, 1);
        c->idx = w->nconns;
        w->conns[w->nconns++] = c;
        conn_watch(w, c, EPOLL_CTL_ADD);
    }
}

static void worker_drop(worker *w, conn *c)
{
    size_t i = c->idx;

    epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
    conn_peer_release(w->s, c->cred.uid);
    w->conns[i] = w->conns[--w->nconns];
    w->conns[i]->idx = i;
    conn_free(w->s, c);
}

/* On stop: answer what has fully arrived, flush answers for a bounded time, close all. */
static void worker_finish(worker *w)
{
    long long end = p11psk_mono_ms() + STOP_FLUSH_MS;
    struct pollfd p;

    while (w->nconns > 0) {
        conn *c = w->conns[w->nconns - 1];
        int drop = c->outlen > 0 ? conn_flush(c) < 0 : conn_read(w->s, c) < 0;

        while (!drop && c->outlen > 0 && p11psk_mono_ms() < end) {
            p.fd = c->fd;
            p.events = POLLOUT;
            if (poll(&p, 1, (int)(end - p11psk_mono_ms())) <= 0)
                break;
            drop = conn_flush(c) < 0;
        }
        worker_drop(w, c);
    }
}

/* Drops connections whose started request or pending answer is overdue; returns the
 * next deadline (0: none). */
static long long worker_deadlines(worker *w, long long now)
{
    long long next = 0;
    size_t i;

    for (i = w->nconns; i-- > 0;) {
        conn *c = w->conns[i];

        if (c->deadline_ms == 0)
            continue;
        if (c->deadline_ms <= now) {
            char exe[P11PSK_LOG_VALUE_CAP(64)];

            p11psk_log_value(exe, sizeof(exe), c->exe[0] ? c->exe : "?");
            p11psk_log(P11PSK_LOG_WARN,
                       "pid=%ld uid=%lu gid=%lu exe=%s dropped: %s not done within "
                       "request-timeout-ms = %u",
                       (long)c->cred.pid, (unsigned long)c->cred.uid, (unsigned long)c->cred.gid,
                       exe, c->outlen > 0 ? "answer not read" : "request",
                       w->s->cfg->request_timeout_ms);
            worker_drop(w, c);
        } else if (next == 0 || c->deadline_ms < next) {
            next = c->deadline_ms;
        }
    }
    return next;
}

#define EVENTS_MAX 64
/* A polling worker rereads the run queue this often: it must stop soon once CPUs are busy. */
#define RUNQ_MAX_AGE_US 10

/* This thread's involuntary context switches: it was runnable, and the CPU went to another. */
static long involuntary_switches(void)
{
    struct rusage ru;

    return getrusage(RUSAGE_THREAD, &ru) == 0 ? ru.ru_nivcsw : 0;
}

void *worker_main(void *arg)
{
    worker *w = arg;
    server *s = w->s;
    struct epoll_event ev[EVENTS_MAX], lev;
    long long now, next = 0, last_work_us = 0, gap_us = -1, work_us;
    long poll_iv = -1; /* involuntary context switches when this polling phase began */
    int yielded = 0;
    int i, n, timeout;

    /* The listening socket is shared: EPOLLEXCLUSIVE wakes one worker per connection. */
    memset(&lev, 0, sizeof(lev));
    lev.events = EPOLLIN | EPOLLEXCLUSIVE;
    lev.data.ptr = &s->lfd;
    epoll_ctl(w->ep, EPOLL_CTL_ADD, s->lfd, &lev);
    lev.events = EPOLLIN;
    lev.data.ptr = &s->wake[0];
    epoll_ctl(w->ep, EPOLL_CTL_ADD, s->wake[0], &lev);
    while (!atomic_load(&s->stopping)) {
        now = p11psk_mono_ms();
        timeout = next == 0 ? -1 : next <= now ? 0 : (int)(next - now);
        /* busy-poll-us: right after work, poll without sleeping for a while. A sleeping
         * thread is slow to wake on some VMs, and a busy application asks again within a few
         * hundred us. Only when the last work also came within that window: sparse requests
         * would never be caught by polling, so they do not pay for it. */
        if (s->cfg->busy_poll_us > 0 && !yielded && gap_us >= 0 &&
            gap_us < (long long)s->cfg->busy_poll_us &&
            p11psk_mono_us() - last_work_us < (long long)s->cfg->busy_poll_us &&
            (!s->cfg->busy_poll_idle || p11psk_cpu_idle(RUNQ_MAX_AGE_US))) {
            /* Preempted while polling: another thread wants this CPU; sleep until work. */
            long iv = involuntary_switches();

            if (poll_iv < 0)
                poll_iv = iv;
            if (iv == poll_iv || !s->cfg->busy_poll_idle)
                timeout = 0;
            else
                yielded = 1;
        }
        n = epoll_wait(w->ep, ev, EVENTS_MAX, timeout);
        if (n > 0) {
            work_us = p11psk_mono_us();
            gap_us = last_work_us > 0 ? work_us - last_work_us : -1;
            last_work_us = work_us;
            poll_iv = -1;
            yielded = 0;
        }
        if (n < 0 && errno != EINTR) {
            p11psk_log(P11PSK_LOG_ERROR, "epoll_wait: %s", strerror(errno));
            break;
        }
        for (i = 0; i < n; i++) {
            conn *c;
            int drop;

            if (ev[i].data.ptr == &s->wake[0])
                goto stop;
            if (ev[i].data.ptr == &s->lfd) {
                accept_some(w);
                continue;
            }
            c = ev[i].data.ptr;
            if (ev[i].events & EPOLLERR)
                drop = 1;
            else if (c->outlen > 0)
                drop = conn_flush(c) < 0 || (c->outlen == 0 && conn_process(s, c) < 0);
            else
                drop = conn_read(s, c) < 0;
            if (drop) {
                worker_drop(w, c);
                continue;
            }
            if (c->outlen == 0 && c->inlen == 0)
                c->deadline_ms = 0; /* idle: persistent connections may stay */
            if ((c->outlen > 0 ? EPOLLOUT : EPOLLIN) != c->watching)
                conn_watch(w, c, EPOLL_CTL_MOD);
        }
        next = worker_deadlines(w, p11psk_mono_ms());
    }
stop:
    worker_finish(w);
    return NULL;
}
