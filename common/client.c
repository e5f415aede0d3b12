#include "p11psk/client.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "p11psk/clock.h"

void p11psk_conn_init(p11psk_conn *c, const char *path, int timeout_ms)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : P11PSK_DEFAULT_TIMEOUT_MS;
    snprintf(c->path, sizeof(c->path), "%s", path != NULL ? path : P11PSK_DEFAULT_SOCKET);
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

static int conn_open(p11psk_conn *c, int *err)
{
    struct sockaddr_un sa;
    struct timeval tv;
    int fd;

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(c->path) >= sizeof(sa.sun_path)) {
        *err = ENAMETOOLONG;
        return P11PSK_CALL_UNREACHABLE;
    }
    memcpy(sa.sun_path, c->path, strlen(c->path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = errno;
        return P11PSK_CALL_UNREACHABLE;
    }
    /* A blocking connect, bounded by the call's timeout: when a connection storm keeps the
     * backlog full it waits its turn with the others, where a non-blocking one would fail at
     * once (EAGAIN). Non-blocking from then on. */
    tv.tv_sec = c->timeout_ms / 1000;
    tv.tv_usec = (c->timeout_ms % 1000) * 1000;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0 ||
        connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
        *err = errno;
        close(fd);
        return P11PSK_CALL_UNREACHABLE;
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
    }
    return "service error";
}
