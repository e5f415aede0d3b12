/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The provider's client against a real unix listener in a thread of this test, speaking the
 * wire format: reuse of a live connection, reconnect after the server closed an idle one or
 * dropped a request, and the documented errors when the server is silent or absent.
 */
#include <check.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "p11psk/clock.h"
#include "p11psk/client.h"
#include "p11psk/wire.h"
#include "unit.h"

enum mode {
    KEEP,       /* answer every request, keep the connection */
    CLOSE_IDLE, /* answer, then close the connection (an idle timeout on the server side) */
    DROP_2ND,   /* close without answering the second request (a restart mid-call) */
    SILENT,     /* read requests, never answer */
};

typedef struct {
    char dir[64], path[108];
    int lfd;
    enum mode mode;
    pthread_t thread;
    atomic_int stop, conns, requests, closed;
} server;

/* Reads exactly n bytes within 2 s, or until stop: 1, 0 on EOF, -1 on timeout or error. */
static int srv_read(server *s, int fd, uint8_t *p, size_t n)
{
    long long deadline = p11psk_mono_ms() + 2000;

    while (n > 0) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        ssize_t r;

        if (atomic_load(&s->stop) || p11psk_mono_ms() > deadline)
            return -1;
        if (poll(&pfd, 1, 20) <= 0)
            continue;
        r = read(fd, p, n);
        if (r == 0)
            return 0;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 1;
}

/* No ck_assert here: this runs in the server thread; a lost answer fails the client side. */
static void srv_answer(int fd, int n)
{
    p11psk_frame fr;
    char info[32];
    size_t len;

    p11psk_frame_start(&fr, P11PSK_ST_OK);
    snprintf(info, sizeof(info), "pong %d", n);
    p11psk_frame_add_str(&fr, P11PSK_T_INFO, info);
    len = p11psk_frame_finish(&fr);
    if (len > 0)
        (void)!send(fd, fr.buf, len, MSG_NOSIGNAL);
}

/* One connection: frames in, answers out, as the mode says. */
static void srv_conn(server *s, int fd)
{
    uint8_t hdr[P11PSK_WIRE_HDR], body[P11PSK_WIRE_MAX];
    size_t len;
    p11psk_msg m;
    int n;

    for (;;) {
        if (srv_read(s, fd, hdr, sizeof(hdr)) != 1 ||
            p11psk_wire_header(hdr, &len) != P11PSK_WIRE_OK || srv_read(s, fd, body, len) != 1 ||
            p11psk_msg_parse(body, len, &m) != P11PSK_WIRE_OK)
            break;
        n = atomic_fetch_add(&s->requests, 1) + 1;
        if (s->mode == SILENT)
            continue; /* wait for the client to give up and close */
        if (s->mode == DROP_2ND && n == 2)
            break;
        srv_answer(fd, n);
        if (s->mode == CLOSE_IDLE)
            break;
    }
    close(fd);
    atomic_fetch_add(&s->closed, 1);
}

static void *srv_main(void *arg)
{
    server *s = arg;

    while (!atomic_load(&s->stop)) {
        struct pollfd pfd = {.fd = s->lfd, .events = POLLIN};
        int fd;

        if (poll(&pfd, 1, 20) <= 0)
            continue;
        if ((fd = accept(s->lfd, NULL, NULL)) < 0)
            continue;
        atomic_fetch_add(&s->conns, 1);
        srv_conn(s, fd);
    }
    return NULL;
}

static void srv_start(server *s, enum mode mode)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};

    memset(s, 0, sizeof(*s));
    s->mode = mode;
    snprintf(s->dir, sizeof(s->dir), "/tmp/p11psk-client-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(s->dir));
    snprintf(s->path, sizeof(s->path), "%s/d.sock", s->dir);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", s->path);
    s->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(s->lfd, 0);
    ck_assert_int_eq(bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(s->lfd, 8), 0);
    ck_assert_int_eq(pthread_create(&s->thread, NULL, srv_main, s), 0);
}

static void srv_stop(server *s)
{
    atomic_store(&s->stop, 1);
    pthread_join(s->thread, NULL);
    close(s->lfd);
    unlink(s->path);
    rmdir(s->dir);
}

/* Waits (at most 2 s) until the server has closed n connections. */
static void wait_closed(server *s, int n)
{
    struct timespec ms = {.tv_sec = 0, .tv_nsec = 1000000};

    for (int i = 0; i < 2000 && atomic_load(&s->closed) < n; i++)
        nanosleep(&ms, NULL);
    ck_assert_int_ge(atomic_load(&s->closed), n);
}

/* A PING; checks the answer is "pong N". */
static int ping(p11psk_conn *c, int want_n, int *err)
{
    p11psk_frame req;
    static uint8_t resp[P11PSK_WIRE_MAX];
    p11psk_msg m;
    char info[32], want[32];
    int rc;

    p11psk_frame_start(&req, P11PSK_OP_PING);
    ck_assert_uint_gt(p11psk_frame_finish(&req), 0);
    rc = p11psk_conn_call(c, &req, resp, &m, err);
    if (rc == P11PSK_CALL_OK) {
        ck_assert_int_eq(m.code, P11PSK_ST_OK);
        p11psk_msg_str(&m, P11PSK_T_INFO, info, sizeof(info));
        snprintf(want, sizeof(want), "pong %d", want_n);
        ck_assert_str_eq(info, want);
    }
    return rc;
}

START_TEST(reuses_live_connection)
{
    server s;
    p11psk_conn c;
    int err;

    srv_start(&s, KEEP);
    p11psk_conn_init(&c, s.path, 1000);
    ck_assert_int_eq(ping(&c, 1, &err), P11PSK_CALL_OK);
    ck_assert_int_eq(c.reopened, 0);
    ck_assert_int_eq(ping(&c, 2, &err), P11PSK_CALL_OK);
    ck_assert_int_eq(c.reopened, 0);
    ck_assert_int_ge(c.fd, 0);
    ck_assert_int_eq(atomic_load(&s.conns), 1);
    p11psk_conn_close(&c);
    ck_assert_int_eq(c.fd, -1);
    srv_stop(&s);
}
END_TEST

START_TEST(reconnects_after_idle_close)
{
    server s;
    p11psk_conn c;
    int err;

    srv_start(&s, CLOSE_IDLE);
    p11psk_conn_init(&c, s.path, 1000);
    ck_assert_int_eq(ping(&c, 1, &err), P11PSK_CALL_OK);
    wait_closed(&s, 1); /* the server has hung up on the idle connection */
    ck_assert_int_eq(ping(&c, 2, &err), P11PSK_CALL_OK);
    ck_assert_int_eq(c.reopened, 1);
    ck_assert_int_eq(atomic_load(&s.conns), 2);
    ck_assert_int_eq(atomic_load(&s.requests), 2); /* sent once: the stale fd was not used */
    wait_closed(&s, 2);
    ck_assert_int_eq(ping(&c, 3, &err), P11PSK_CALL_OK);
    ck_assert_int_eq(c.reopened, 1);
    ck_assert_int_eq(atomic_load(&s.conns), 3);
    p11psk_conn_close(&c);
    srv_stop(&s);
}
END_TEST

/* The server reads a request on a reused connection and hangs up without an answer (it was
 * restarting): the client sends it once more on a new connection. */
START_TEST(resends_after_drop)
{
    server s;
    p11psk_conn c;
    int err;

    srv_start(&s, DROP_2ND);
    p11psk_conn_init(&c, s.path, 1000);
    ck_assert_int_eq(ping(&c, 1, &err), P11PSK_CALL_OK);
    ck_assert_int_eq(ping(&c, 3, &err), P11PSK_CALL_OK);
    ck_assert_int_eq(c.reopened, 1);
    ck_assert_int_eq(atomic_load(&s.conns), 2);
    ck_assert_int_eq(atomic_load(&s.requests), 3);
    p11psk_conn_close(&c);
    srv_stop(&s);
}
END_TEST

START_TEST(gives_up_after_timeout)
{
    server s;
    p11psk_conn c;
    long long t0, ms;
    int err = 0, rc;

    srv_start(&s, SILENT);
    p11psk_conn_init(&c, s.path, 200);
    t0 = p11psk_mono_ms();
    rc = ping(&c, 1, &err);
    ms = p11psk_mono_ms() - t0;
    ck_assert_int_eq(rc, P11PSK_CALL_TIMEOUT);
    ck_assert_str_eq(p11psk_call_strerror(rc), "service timed out");
    ck_assert_int_eq(err, ETIMEDOUT);
    ck_assert_msg(ms >= 190 && ms < 1500, "gave up after %lld ms, timeout 200 ms", ms);
    ck_assert_int_eq(c.fd, -1); /* a timed-out connection is never reused */
    /* The request was sent exactly once: no resend on a fresh connection. */
    ck_assert_int_eq(atomic_load(&s.requests), 1);
    ck_assert_int_eq(atomic_load(&s.conns), 1);
    p11psk_conn_close(&c);
    srv_stop(&s);
}
END_TEST

START_TEST(unreachable)
{
    server s;
    p11psk_conn c;
    int err = 0, rc;

    p11psk_conn_init(&c, "/nonexistent/p11psk/d.sock", 200);
    rc = ping(&c, 1, &err);
    ck_assert_int_eq(rc, P11PSK_CALL_UNREACHABLE);
    ck_assert_int_eq(err, ENOENT);
    ck_assert_str_eq(p11psk_call_strerror(rc), "service unreachable");
    ck_assert_int_eq(c.fd, -1);

    /* A server that went away: its socket file is left, nobody listens. */
    srv_start(&s, KEEP);
    p11psk_conn_init(&c, s.path, 200);
    ck_assert_int_eq(ping(&c, 1, &err), P11PSK_CALL_OK);
    atomic_store(&s.stop, 1);
    pthread_join(s.thread, NULL);
    close(s.lfd);
    rc = ping(&c, 2, &err);
    ck_assert_int_eq(rc, P11PSK_CALL_UNREACHABLE);
    ck_assert_int_eq(err, ECONNREFUSED);
    ck_assert_int_eq(c.reopened, 1);
    unlink(s.path);
    rmdir(s.dir);
}
END_TEST

START_TEST(error_texts)
{
    ck_assert_str_eq(p11psk_call_strerror(P11PSK_CALL_OK), "ok");
    ck_assert_str_eq(p11psk_call_strerror(P11PSK_CALL_IO), "connection to service lost");
    ck_assert_str_eq(p11psk_call_strerror(P11PSK_CALL_PROTO), "malformed answer from service");
    ck_assert_str_eq(p11psk_call_strerror(-99), "service error");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("client");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, reuses_live_connection);
    tcase_add_test(tc, reconnects_after_idle_close);
    tcase_add_test(tc, resends_after_drop);
    tcase_add_test(tc, gives_up_after_timeout);
    tcase_add_test(tc, unreachable);
    tcase_add_test(tc, error_texts);
    suite_add_tcase(s, tc);
    return p11psk_unit_run(s);
}
