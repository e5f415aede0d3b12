/* SPDX-License-Identifier: Apache-2.0 */
#define _GNU_SOURCE /* struct ucred */
#include "p11psk/client.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "p11psk/clock.h"
#include "p11psk/cpuidle.h"

/* connect() retry backoff while the daemon restarts or its backlog is full. */
#define CONNECT_BACKOFF_FIRST_MS 1
#define CONNECT_BACKOFF_MAX_MS 50
/* While polling for an answer, the run queue is read again this often. */
#define SPIN_RUNQ_MAX_AGE_US 20

void p11psk_conn_init_users(p11psk_conn *c, const char *path, int timeout_ms,
                            const p11psk_daemon_users *users)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : P11PSK_DEFAULT_TIMEOUT_MS;
    c->users = *users;
    snprintf(c->path, sizeof(c->path), "%s", path != NULL ? path : P11PSK_DEFAULT_SOCKET);
}

void p11psk_conn_init(p11psk_conn *c, const char *path, int timeout_ms)
{
    p11psk_daemon_users users;

    p11psk_daemon_users_default(&users);
    p11psk_daemon_users_add(&users, geteuid(), NULL);
    p11psk_conn_init_users(c, path, timeout_ms, &users);
}

void p11psk_conn_close(p11psk_conn *c)
{
    /* Safe after fork too: the parent keeps its own copy of the descriptor. */
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static int wait_fd(int fd, short ev, long long deadline)
{
    struct pollfd p = {.fd = fd, .events = ev};
    long long left;
    int rc;

    for (;;) {
        left = deadline - p11psk_mono_ms();
        if (left <= 0)
            return P11PSK_CALL_TIMEOUT;
        rc = poll(&p, 1, (int)left);
        if (rc > 0)
            return 0;
        if (rc == 0)
            return P11PSK_CALL_TIMEOUT;
        if (errno != EINTR)
            return P11PSK_CALL_IO;
    }
}

static void sleep_ms(long long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Worth another try: no socket yet (restart), nobody listening yet, or the backlog is full. */
static int connect_transient(int e)
{
    return e == EAGAIN || e == EWOULDBLOCK || e == ECONNREFUSED || e == ENOENT;
}

/* Who listens behind fd. Checked before the first byte is sent. */
static int peer_check(p11psk_conn *c, int fd)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof(cred)) {
        c->peer_uid = (uid_t)-1;
        return P11PSK_CALL_PEER;
    }
    c->peer_uid = cred.uid;
    return p11psk_daemon_users_allows(&c->users, cred.uid) ? 0 : P11PSK_CALL_PEER;
}

static int conn_open(p11psk_conn *c, int *err)
{
    long long deadline = p11psk_mono_ms() + c->timeout_ms, start = p11psk_mono_ms(), left;
    long long backoff = CONNECT_BACKOFF_FIRST_MS;
    struct sockaddr_un sa;
    int fd, e;

    c->waited_ms = 0;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(c->path) >= sizeof(sa.sun_path)) {
        *err = ENAMETOOLONG;
        return P11PSK_CALL_UNREACHABLE;
    }
    memcpy(sa.sun_path, c->path, strlen(c->path) + 1);
    for (;;) {
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            *err = errno;
            return P11PSK_CALL_UNREACHABLE;
        }
        /* A unix connect either completes or fails at once (EAGAIN: backlog full). */
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            break;
        e = errno;
        close(fd);
        if (e == EINTR)
            continue;
        left = deadline - p11psk_mono_ms();
        if (!connect_transient(e) || left <= 0) {
            *err = e;
            c->waited_ms = (int)(p11psk_mono_ms() - start);
            return P11PSK_CALL_UNREACHABLE;
        }
        sleep_ms(backoff < left ? backoff : left);
        backoff = backoff * 2 < CONNECT_BACKOFF_MAX_MS ? backoff * 2 : CONNECT_BACKOFF_MAX_MS;
    }
    if (peer_check(c, fd) != 0) {
        close(fd);
        *err = 0;
        return P11PSK_CALL_PEER;
    }
    c->fd = fd;
    c->pid = getpid();
    return P11PSK_CALL_OK;
}

static int write_all(int fd, const uint8_t *p, size_t n, long long deadline, int *err)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int rc = wait_fd(fd, POLLOUT, deadline);

            if (rc != 0) {
                *err = rc == P11PSK_CALL_TIMEOUT ? ETIMEDOUT : errno;
                return rc;
            }
            continue;
        }
        *err = w < 0 ? errno : EPIPE;
        return P11PSK_CALL_IO;
    }
    return 0;
}

/* Keeps the first descriptor of an SCM_RIGHTS message in *fd and closes the others. */
static void take_fds(struct msghdr *mh, int *fd)
{
    struct cmsghdr *h;

    for (h = CMSG_FIRSTHDR(mh); h != NULL; h = CMSG_NXTHDR(mh, h)) {
        size_t i, n;

        if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
            continue;
        n = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (i = 0; i < n; i++) {
            int got;

            memcpy(&got, CMSG_DATA(h) + i * sizeof(int), sizeof(int));
            if (*fd < 0)
                *fd = got;
            else
                close(got);
        }
    }
}

/* Reads exactly n bytes. *got counts what arrived, so callers can tell a clean EOF. Until
 * spin_until (p11psk_mono_us; 0: never) it polls instead of sleeping. With passed,
 * descriptors that ride on the bytes (SCM_RIGHTS) are taken too: the first is kept in
 * *passed, any other closed. */
static int read_all(int fd, uint8_t *p, size_t n, long long deadline, long long spin_until,
                    size_t *got, int *err, int *passed)
{
    while (*got < n) {
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(4 * sizeof(int))];
        } cm;
        struct iovec iov = {p + *got, n - *got};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        ssize_t r;

        if (passed != NULL) {
            mh.msg_control = cm.b;
            mh.msg_controllen = sizeof(cm.b);
        }
        r = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
        if (r > 0) {
            if (passed != NULL)
                take_fds(&mh, passed);
            *got += (size_t)r;
            continue;
        }
        if (r == 0) {
            *err = ECONNRESET;
            return P11PSK_CALL_IO;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int rc;

            /* Polling for a few us is cheaper than waking up from a sleep (see cpuidle.h),
             * as long as no other thread needs this CPU: rechecked while polling. */
            if (spin_until > 0 && p11psk_mono_us() < spin_until &&
                p11psk_cpu_idle(SPIN_RUNQ_MAX_AGE_US))
                continue;
            rc = wait_fd(fd, POLLIN, deadline);

            if (rc != 0) {
                *err = rc == P11PSK_CALL_TIMEOUT ? ETIMEDOUT : errno;
                return rc;
            }
            continue;
        }
        *err = errno;
        return P11PSK_CALL_IO;
    }
    return 0;
}

/* One request and its answer on c's connection; with passed, a descriptor riding on the
 * answer's header lands in *passed. */
static int call_once(p11psk_conn *c, const p11psk_frame *req, uint8_t *resp, p11psk_msg *m,
                     int *err, int *passed)
{
    long long deadline = p11psk_mono_ms() + c->timeout_ms, spin_until;
    uint8_t hdr[P11PSK_WIRE_HDR];
    size_t got = 0, bodylen = 0;
    int rc;

    rc = write_all(c->fd, req->buf, req->w.len, deadline, err);
    if (rc != 0)
        return rc;
    spin_until = c->spin_us > 0 ? p11psk_mono_us() + c->spin_us : 0;
    rc = read_all(c->fd, hdr, sizeof(hdr), deadline, spin_until, &got, err, passed);
    if (rc != 0)
        return rc;
    if (p11psk_wire_header(hdr, &bodylen) != P11PSK_WIRE_OK)
        return P11PSK_CALL_PROTO;
    got = 0;
    rc = read_all(c->fd, resp, bodylen, deadline, spin_until, &got, err, NULL);
    if (rc != 0)
        return rc;
    if (p11psk_msg_parse(resp, bodylen, m) != P11PSK_WIRE_OK)
        return P11PSK_CALL_PROTO;
    return P11PSK_CALL_OK;
}

/*
 * An idle connection must have nothing to read: pending bytes would be a late answer to an
 * abandoned request, and EOF or an error means the daemon has gone (restart). Either way
 * the connection is not used for a new request.
 */
static int conn_is_idle(const p11psk_conn *c)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    int rc;

    while ((rc = poll(&p, 1, 0)) < 0 && errno == EINTR)
        ;
    return rc == 0;
}

int p11psk_conn_call(p11psk_conn *c, const p11psk_frame *req, uint8_t *resp, p11psk_msg *m,
                     int *err)
{
    int reused, rc, dummy;

    if (err == NULL)
        err = &dummy;
    *err = 0;
    if (req->w.err || req->w.len <= P11PSK_WIRE_HDR)
        return P11PSK_CALL_PROTO;
    if (c->fd >= 0 && c->pid != getpid()) {
        /* Inherited across fork: the parent owns that conversation. */
        close(c->fd);
        c->fd = -1;
    }
    c->reopened = 0;
    if (c->fd >= 0 && !conn_is_idle(c)) {
        p11psk_conn_close(c);
        c->reopened = 1;
    }
    reused = c->fd >= 0;
    if (!reused && (rc = conn_open(c, err)) != 0)
        return rc;
    rc = call_once(c, req, resp, m, err, NULL);
    if (rc == P11PSK_CALL_IO && reused) {
        /* The daemon may have restarted since this connection was opened. */
        p11psk_conn_close(c);
        c->reopened = 1;
        if ((rc = conn_open(c, err)) != 0)
            return rc;
        rc = call_once(c, req, resp, m, err, NULL);
    }
    if (rc != P11PSK_CALL_OK)
        p11psk_conn_close(c);
    return rc;
}

int p11psk_conn_call_fd(p11psk_conn *c, const p11psk_frame *req, uint8_t *resp, p11psk_msg *m,
                        int *fd, int *err)
{
    int rc, dummy;

    *fd = -1;
    if (err == NULL)
        err = &dummy;
    *err = 0;
    if (req->w.err || req->w.len <= P11PSK_WIRE_HDR)
        return P11PSK_CALL_PROTO;
    if (c->fd < 0 && (rc = conn_open(c, err)) != 0)
        return rc;
    rc = call_once(c, req, resp, m, err, fd);
    if (rc != P11PSK_CALL_OK) {
        p11psk_conn_close(c);
        if (*fd >= 0)
            close(*fd);
        *fd = -1;
    }
    return rc;
}

const char *p11psk_call_strerror(int rc)
{
    switch (rc) {
    case P11PSK_CALL_OK:
        return "ok";
    case P11PSK_CALL_UNREACHABLE:
        return "service unreachable";
    case P11PSK_CALL_IO:
        return "connection to service lost";
    case P11PSK_CALL_TIMEOUT:
        return "service timed out";
    case P11PSK_CALL_PROTO:
        return "malformed answer from service";
    case P11PSK_CALL_PEER:
        return "service run by a user not allowed";
    }
    return "service error";
}

void p11psk_conn_where(const p11psk_conn *c, int err, char *buf, size_t cap)
{
    char tmp[128];

    if (err == 0) {
        snprintf(buf, cap, "at %s", c->path);
        return;
    }
    /* strerror() may share one buffer between threads; this is the GNU strerror_r. */
    if (connect_transient(err) && c->waited_ms > 0)
        snprintf(buf, cap, "at %s: %s (still failing after %d ms)", c->path,
                 strerror_r(err, tmp, sizeof(tmp)), c->waited_ms);
    else
        snprintf(buf, cap, "at %s: %s", c->path, strerror_r(err, tmp, sizeof(tmp)));
}

void p11psk_conn_strerror(const p11psk_conn *c, int rc, int err, char *buf, size_t cap)
{
    char where[256];

    if (rc == P11PSK_CALL_PEER) {
        if (c->peer_uid == (uid_t)-1)
            snprintf(buf, cap, "cannot tell which user runs p11pskd at %s (SO_PEERCRED failed)",
                     c->path);
        else
            snprintf(buf, cap,
                     "p11pskd at %s is run by uid %lu, which is not an allowed daemon user (%s)",
                     c->path, (unsigned long)c->peer_uid, c->users.names);
        return;
    }
    p11psk_conn_where(c, err, where, sizeof(where));
    snprintf(buf, cap, "%s %s", p11psk_call_strerror(rc), where);
}
