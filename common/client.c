#define _GNU_SOURCE /* struct ucred */
#include "p11psk/client.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "p11psk/clock.h"

/* connect() retry backoff while the daemon restarts or its backlog is full. */
#define CONNECT_BACKOFF_FIRST_MS 1
#define CONNECT_BACKOFF_MAX_MS 50

int p11psk_peers_allows(const p11psk_peers *p, uid_t uid)
{
    int i;

    for (i = 0; i < p->n; i++)
        if (p->uid[i] == uid)
            return 1;
    return 0;
}

int p11psk_peers_add(p11psk_peers *p, uid_t uid, const char *name)
{
    size_t used = strlen(p->names);
    char num[32];

    if (p11psk_peers_allows(p, uid))
        return 0;
    if (p->n >= P11PSK_PEERS_MAX)
        return -1;
    p->uid[p->n++] = uid;
    if (name == NULL) {
        snprintf(num, sizeof(num), "uid %lu", (unsigned long)uid);
        name = num;
    }
    snprintf(p->names + used, sizeof(p->names) - used, "%s%s", used > 0 ? ", " : "", name);
    return 0;
}

/* The uid of user name; -1 when there is no such user. getpwnam() is not thread-safe. */
static int user_uid(const char *name, uid_t *uid)
{
    struct passwd pw, *res = NULL;
    char buf[4096];

    if (getpwnam_r(name, &pw, buf, sizeof(buf), &res) != 0 || res == NULL)
        return -1;
    *uid = pw.pw_uid;
    return 0;
}

void p11psk_peers_default(p11psk_peers *p)
{
    uid_t uid;

    memset(p, 0, sizeof(*p));
    p11psk_peers_add(p, 0, "root");
    if (user_uid(P11PSK_DAEMON_SYSUSER, &uid) == 0)
        p11psk_peers_add(p, uid, P11PSK_DAEMON_SYSUSER);
}

/* Configuration text goes into error messages: no control bytes. */
static void printable(char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
            *s = '?';
}

int p11psk_peers_parse(p11psk_peers *p, const char *spec, char *err, size_t errcap)
{
    const char *s = spec, *end;
    char item[64], *numend;
    unsigned long v;
    uid_t uid;
    size_t n;

    memset(p, 0, sizeof(*p));
    while (*s != '\0') {
        s += strspn(s, " \t");
        end = s + strcspn(s, ",");
        n = (size_t)(end - s);
        while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
            n--;
        if (n == 0 || n >= sizeof(item)) {
            snprintf(err, errcap, "expected user names or uids separated by commas");
            goto deny;
        }
        memcpy(item, s, n);
        item[n] = '\0';
        printable(item);
        /* A leading digit makes a uid (POSIX names may not start with one portably). */
        if (item[0] >= '0' && item[0] <= '9') {
            errno = 0;
            v = strtoul(item, &numend, 10);
            if (errno != 0 || *numend != '\0' || v >= (unsigned long)(uid_t)-1) {
                snprintf(err, errcap, "\"%s\" is not a valid uid", item);
                goto deny;
            }
            uid = (uid_t)v;
            if (p11psk_peers_add(p, uid, NULL) != 0)
                goto full;
        } else if (user_uid(item, &uid) != 0) {
            snprintf(err, errcap, "no user \"%s\" on this system", item);
            goto deny;
        } else if (p11psk_peers_add(p, uid, item) != 0) {
            goto full;
        }
        s = *end == ',' ? end + 1 : end;
    }
    if (p->n == 0) {
        snprintf(err, errcap, "empty list: name at least one user p11pskd runs as");
        goto deny;
    }
    return 0;
full:
    snprintf(err, errcap, "more than %d users", P11PSK_PEERS_MAX);
deny:
    memset(p, 0, sizeof(*p));
    return -1;
}

void p11psk_conn_init_peers(p11psk_conn *c, const char *path, int timeout_ms,
                            const p11psk_peers *peers)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : P11PSK_DEFAULT_TIMEOUT_MS;
    c->peers = *peers;
    snprintf(c->path, sizeof(c->path), "%s", path != NULL ? path : P11PSK_DEFAULT_SOCKET);
}

void p11psk_conn_init(p11psk_conn *c, const char *path, int timeout_ms)
{
    p11psk_peers peers;

    p11psk_peers_default(&peers);
    p11psk_peers_add(&peers, geteuid(), NULL);
    p11psk_conn_init_peers(c, path, timeout_ms, &peers);
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
    return p11psk_peers_allows(&c->peers, cred.uid) ? 0 : P11PSK_CALL_PEER;
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

/* Reads exactly n bytes. *got counts what arrived, so callers can tell a clean EOF. */
static int read_all(int fd, uint8_t *p, size_t n, long long deadline, size_t *got, int *err)
{
    while (*got < n) {
        ssize_t r = recv(fd, p + *got, n - *got, 0);

        if (r > 0) {
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
            int rc = wait_fd(fd, POLLIN, deadline);

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

static int call_once(p11psk_conn *c, const p11psk_frame *req, uint8_t *resp, p11psk_msg *m,
                     int *err)
{
    long long deadline = p11psk_mono_ms() + c->timeout_ms;
    uint8_t hdr[P11PSK_WIRE_HDR];
    size_t got = 0, bodylen = 0;
    int rc;

    rc = write_all(c->fd, req->buf, req->w.len, deadline, err);
    if (rc != 0)
        return rc;
    rc = read_all(c->fd, hdr, sizeof(hdr), deadline, &got, err);
    if (rc != 0)
        return rc;
    if (p11psk_wire_header(hdr, &bodylen) != P11PSK_WIRE_OK)
        return P11PSK_CALL_PROTO;
    got = 0;
    rc = read_all(c->fd, resp, bodylen, deadline, &got, err);
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
    rc = call_once(c, req, resp, m, err);
    if (rc == P11PSK_CALL_IO && reused) {
        /* The daemon may have restarted since this connection was opened. */
        p11psk_conn_close(c);
        c->reopened = 1;
        if ((rc = conn_open(c, err)) != 0)
            return rc;
        rc = call_once(c, req, resp, m, err);
    }
    if (rc != P11PSK_CALL_OK)
        p11psk_conn_close(c);
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
                     c->path, (unsigned long)c->peer_uid, c->peers.names);
        return;
    }
    p11psk_conn_where(c, err, where, sizeof(where));
    snprintf(buf, cap, "%s %s", p11psk_call_strerror(rc), where);
}
