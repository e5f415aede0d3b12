/* SPDX-License-Identifier: Apache-2.0 */
/* One client connection: per-peer limits, reading requests and sending answers one at a
 * time, and the refusal of peers over a limit. Its buffers come from conn_pool.c. */
#include "server_int.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "p11psk/clock.h"

int conn_peer_admit(server *s, uid_t uid, char *why, size_t whylen)
{
    peer_count *p = NULL, *np;
    size_t i;
    int rc = -1;

    pthread_mutex_lock(&s->peerlock);
    for (i = 0; i < s->npeers; i++)
        if (s->peers[i].uid == uid)
            p = &s->peers[i];
    if (s->nconns >= s->cfg->max_connections) {
        snprintf(why, whylen, "%zu connections open (max-connections = %u in %s)", s->nconns,
                 s->cfg->max_connections, s->cfg->path);
    } else if (p != NULL && p->n >= s->cfg->max_connections_peer) {
        snprintf(why, whylen,
                 "uid %lu has %u connections open (max-connections-per-peer = %u in %s)",
                 (unsigned long)uid, p->n, s->cfg->max_connections_peer, s->cfg->path);
    } else if (p == NULL && (np = realloc(s->peers, (s->npeers + 1) * sizeof(*np))) == NULL) {
        snprintf(why, whylen, "out of memory");
    } else {
        if (p == NULL) {
            s->peers = np;
            p = &s->peers[s->npeers++];
            p->uid = uid;
            p->n = 0;
        }
        p->n++;
        s->nconns++;
        rc = 0;
    }
    pthread_mutex_unlock(&s->peerlock);
    return rc;
}

void conn_peer_release(server *s, uid_t uid)
{
    size_t i;

    pthread_mutex_lock(&s->peerlock);
    for (i = 0; i < s->npeers; i++) {
        if (s->peers[i].uid != uid)
            continue;
        if (--s->peers[i].n == 0)
            s->peers[i] = s->peers[--s->npeers];
        s->nconns--;
        break;
    }
    pthread_mutex_unlock(&s->peerlock);
}

/* The first send of an answer that passes a descriptor (GEN_PAGE) carries it. */
static ssize_t send_answer(conn *c)
{
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(sizeof(int))];
    } cm;
    struct iovec iov = {c->out.buf + c->outoff, c->outlen - c->outoff};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    int fd = c->pass_fd - 1;
    ssize_t w;

    if (c->pass_fd == 0)
        return send(c->fd, iov.iov_base, iov.iov_len, MSG_NOSIGNAL);
    memset(&cm, 0, sizeof(cm));
    mh.msg_control = cm.b;
    mh.msg_controllen = sizeof(cm.b);
    cm.h.cmsg_level = SOL_SOCKET;
    cm.h.cmsg_type = SCM_RIGHTS;
    cm.h.cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(&cm.h), &fd, sizeof(int));
    w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
    if (w > 0)
        c->pass_fd = 0;
    return w;
}

int conn_flush(conn *c)
{
    while (c->outoff < c->outlen) {
        ssize_t w = send_answer(c);

        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (w <= 0)
            return -1;
        c->outoff += (size_t)w;
    }
    p11psk_frame_cleanse(&c->out);
    c->outlen = c->outoff = 0;
    c->deadline_ms = 0;
    return c->closing ? -1 : 0;
}

static void respond_locked(server *s, conn *c, int header_rc)
{
    pthread_rwlock_rdlock(&s->cfglock);
    dispatch_respond(s, c, header_rc);
    pthread_rwlock_unlock(&s->cfglock);
}

/* Answers the frame buffered in c->in if it is complete, then sends the answer. Requests
 * are answered one at a time: a second frame waits until the first answer is out. */
int conn_process(server *s, conn *c)
{
    size_t bodylen = 0;
    int rc;

    while (c->outlen == 0 && c->inlen > 0) {
        if (c->need == 0) {
            if (c->inlen < P11PSK_WIRE_HDR)
                break;
            rc = p11psk_wire_header(c->in, &bodylen);
            if (rc != P11PSK_WIRE_OK) {
                respond_locked(s, c, rc);
                break;
            }
            c->need = P11PSK_WIRE_HDR + bodylen;
        }
        if (c->inlen < c->need)
            break;
        respond_locked(s, c, P11PSK_WIRE_OK);
        if (conn_flush(c) < 0)
            return -1;
    }
    if (c->outlen > 0) /* the answer must be read in time, or the connection goes */
        c->deadline_ms = p11psk_mono_ms() + s->cfg->request_timeout_ms;
    else if (c->inlen > 0 && c->deadline_ms == 0) /* a request has started */
        c->deadline_ms = p11psk_mono_ms() + s->cfg->request_timeout_ms;
    return c->outlen > 0 ? conn_flush(c) : 0;
}

/* One recv for whatever has arrived (usually a whole request), then process it. */
int conn_read(server *s, conn *c)
{
    ssize_t r;

    if (c->outlen > 0)
        return 0; /* no new request before the last answer is out */
    for (;;) {
        r = recv(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (r <= 0)
            return -1; /* EOF or error: the peer is gone */
        break;
    }
    c->inlen += (size_t)r;
    return conn_process(s, c);
}

void conn_peer_details(conn *c)
{
    socklen_t len = sizeof(c->groups);

    if (getsockopt(c->fd, SOL_SOCKET, SO_PEERGROUPS, c->groups, &len) == 0)
        c->ngroups = len / sizeof(gid_t);
    else
        c->ngroups = 0; /* more than CONN_GROUPS_MAX: only the primary group counts */
}

void conn_peer_exe(conn *c, char *out, size_t cap)
{
    char path[64];
    ssize_t n;

    snprintf(path, sizeof(path), "/proc/%ld/exe", (long)c->cred.pid);
    n = readlink(path, out, cap - 1);
    if (n <= 0)
        snprintf(out, cap, "?");
    else
        out[n] = '\0';
    if (c->exe[0] == '\0')
        snprintf(c->exe, sizeof(c->exe), "%s", out);
}

/* At most one line per second for refused connections (a flood would fill the log); the
 * line says how many were not logged. */
static void refuse_log(const struct ucred *cr, const char *why)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static long long last_ms;
    static unsigned long quiet;
    long long now = p11psk_mono_ms();
    unsigned long n = 0;
    int log = 0;

    pthread_mutex_lock(&lock);
    if (now - last_ms >= 1000) {
        log = 1;
        n = quiet;
        quiet = 0;
        last_ms = now;
    } else {
        quiet++;
    }
    pthread_mutex_unlock(&lock);
    if (log) {
        char reason[P11PSK_LOG_VALUE_CAP(200)];

        p11psk_log_value(reason, sizeof(reason), why);
        p11psk_log(P11PSK_LOG_WARN,
                   "pid=%ld uid=%lu gid=%lu connection refused reason=%s unlogged_since_last=%lu",
                   (long)cr->pid, (unsigned long)cr->uid, (unsigned long)cr->gid, reason, n);
    }
}

void conn_close_refused(int fd, const struct ucred *cr, const char *why)
{
    refuse_log(cr, why);
    close(fd);
}

void conn_refuse(int fd, const struct ucred *cr, const char *why)
{
    p11psk_frame f;
    size_t n;

    p11psk_frame_start(&f, P11PSK_ST_POLICY);
    p11psk_frame_add_str(&f, P11PSK_T_MSG, why);
    if ((n = p11psk_frame_finish(&f)) > 0 && send(fd, f.buf, n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        /* the peer is gone already */
    }
    refuse_log(cr, why);
    close(fd);
}
