/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11psk-badclient SOCKET MODE [ARGS]: well-behaved and badly-behaved peers of p11pskd, for
 * tests/integration/malformed.sh. Every mode prints one summary line ("MODE: key=value ...")
 * and exits 0 when the daemon behaved, 1 when it did not, 2 on usage or local errors.
 *
 *   good SECS BOUND_MS [HANDLE]  a request every 20 ms for SECS or until SIGUSR1, each on a
 *                                new connection: PING, alternating with TLS13_EARLY for
 *                                HANDLE (hex) when given; every answer must be ok and
 *                                arrive within BOUND_MS
 *   garbage N                    N connections: a frame with a random body (never a valid
 *                                version), then N streams of random bytes; each must get
 *                                "bad request" or be closed, never hang
 *   oversize                     length fields 8193, 0x80000000, 0xffffffff: "bad request"
 *   truncate N SECS              N connections send a header and half the body, hold SECS,
 *                                then hang up (SECS 0: at once)
 *   flood N SECS                 N connections send 1 byte each and stall for SECS; any the
 *                                daemon drops are dialled again at once
 *   slow DELAY_MS [HANDLE]       one request written one byte every DELAY_MS: must be ok
 *   split [HANDLE]               one request split in two at every byte boundary, the two
 *                                writes 5 ms apart, all on one connection: each must be ok
 *   churn SECS                   connect and hang up at once, in a loop, for SECS or until
 *                                SIGUSR1 (run several for a storm); prints the counts
 * The daemon must answer bad frames before closing; a silent close counts as "eof".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "p11psk/handle.h"
#include "p11psk/wire.h"

static const char *sock_path;
static volatile sig_atomic_t stop_good; /* SIGUSR1: the good client stops early */

static void on_usr1(int sig)
{
    (void)sig;
    stop_good = 1;
}
static uint32_t rng = 0x9e3779b9u; /* fixed seed: runs are repeatable */

static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Connects with a bounded wait (a full backlog blocks connect). -1 on failure. */
static int dial(int timeout_ms)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads n bytes by the deadline: 1 done, 0 EOF/reset, -1 timeout or error. */
static int recv_all(int fd, uint8_t *p, size_t n, double deadline)
{
    while (n > 0) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        double left = deadline - now_ms();
        ssize_t r;

        if (left <= 0 || poll(&pfd, 1, (int)left + 1) == 0)
            return -1;
        r = recv(fd, p, n, 0);
        if (r == 0 || (r < 0 && (errno == ECONNRESET || errno == EPIPE)))
            return 0;
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 1;
}

enum { R_STATUS = 0, R_EOF = -1, R_TIMEOUT = -2, R_GARBAGE = -3 };

/* Reads one response: its status code (>= 0), or R_EOF / R_TIMEOUT / R_GARBAGE. */
static int read_response(int fd, int timeout_ms, char *msg, size_t msgcap)
{
    static uint8_t body[P11PSK_WIRE_MAX];
    uint8_t hdr[P11PSK_WIRE_HDR];
    double deadline = now_ms() + timeout_ms;
    size_t len;
    p11psk_msg m;
    int r = recv_all(fd, hdr, sizeof(hdr), deadline);

    if (msg != NULL && msgcap > 0)
        msg[0] = '\0';
    if (r <= 0)
        return r == 0 ? R_EOF : R_TIMEOUT;
    if (p11psk_wire_header(hdr, &len) != P11PSK_WIRE_OK)
        return R_GARBAGE;
    r = recv_all(fd, body, len, deadline);
    if (r <= 0)
        return r == 0 ? R_EOF : R_TIMEOUT;
    if (p11psk_msg_parse(body, len, &m) != P11PSK_WIRE_OK)
        return R_GARBAGE;
    if (msg != NULL)
        p11psk_msg_str(&m, P11PSK_T_MSG, msg, msgcap);
    return m.code;
}

static const char *result_str(int r)
{
    switch (r) {
    case R_EOF:
        return "eof";
    case R_TIMEOUT:
        return "timeout";
    case R_GARBAGE:
        return "garbage";
    }
    return p11psk_status_str(r);
}

/* Waits until the daemon closes fd (1), or timeout_ms passes (0). Data is discarded. */
static int wait_closed(int fd, int timeout_ms)
{
    double deadline = now_ms() + timeout_ms;
    uint8_t buf[512];

    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        double left = deadline - now_ms();
        ssize_t r;

        if (poll(&pfd, 1, left > 0 ? (int)left + 1 : 0) == 0)
            return 0;
        r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN))
            return 1;
    }
}

/* The request the good, slow and split clients send: PING, or TLS13_EARLY for handle. */
static size_t build_request(p11psk_frame *fr, const char *handle_hex)
{
    uint8_t h[P11PSK_HANDLE_MAX];
    long n;

    if (handle_hex == NULL) {
        p11psk_frame_start(fr, P11PSK_OP_PING);
        return p11psk_frame_finish(fr);
    }
    if ((n = p11psk_hex_decode(handle_hex, h, sizeof(h))) <= 0) {
        fprintf(stderr, "bad handle hex\n");
        exit(2);
    }
    p11psk_frame_start(fr, P11PSK_OP_TLS13_EARLY);
    p11psk_frame_add_u8(fr, P11PSK_T_DIGEST, P11PSK_MD_SHA256);
    p11psk_frame_add(fr, P11PSK_T_HANDLE, h, (size_t)n);
    return p11psk_frame_finish(fr);
}

static int mode_good(int secs, int bound_ms, const char *handle_hex)
{
    static p11psk_frame ping, early;
    size_t pinglen = build_request(&ping, NULL), earlylen = 0;
    double end = now_ms() + secs * 1000.0, worst = 0;
    long n = 0, ok = 0, failed = 0, slow = 0;
    char msg[160];

    if (handle_hex != NULL)
        earlylen = build_request(&early, handle_hex);
    while (!stop_good && now_ms() < end) {
        int use_early = handle_hex != NULL && n % 2 == 1;
        double t0 = now_ms(), dt;
        int fd = dial(bound_ms > 5000 ? bound_ms : 5000), r;

        if (fd < 0) {
            r = R_EOF;
            snprintf(msg, sizeof(msg), "connect: %s", strerror(errno));
        } else if (send_all(fd, use_early ? early.buf : ping.buf, use_early ? earlylen : pinglen) !=
                   0) {
            r = R_EOF;
            snprintf(msg, sizeof(msg), "send: %s", strerror(errno));
        } else {
            r = read_response(fd, 5000 + bound_ms, msg, sizeof(msg));
        }
        if (fd >= 0)
            close(fd);
        dt = now_ms() - t0;
        n++;
        if (dt > worst)
            worst = dt;
        if (r == P11PSK_ST_OK && dt <= bound_ms) {
            ok++;
        } else {
            if (r == P11PSK_ST_OK)
                slow++;
            else
                failed++;
            if (failed + slow <= 5)
                fprintf(stderr, "good: request %ld (%s) at +%.0f ms: %s after %.0f ms %s\n", n,
                        use_early ? "tls13-early" : "ping", t0 - (end - secs * 1000.0),
                        result_str(r), dt, msg);
        }
        sleep_ms(20);
    }
    printf("good: requests=%ld ok=%ld failed=%ld slow=%ld max_ms=%.1f bound_ms=%d\n", n, ok, failed,
           slow, worst, bound_ms);
    return n > 0 && ok == n ? 0 : 1;
}

static int mode_garbage(int count)
{
    static uint8_t buf[4 + 600];
    int i, answered = 0, closed = 0, hung = 0, fd, r;

    for (i = 0; i < 2 * count; i++) {
        size_t len, k;

        if ((fd = dial(5000)) < 0) {
            hung++;
            continue;
        }
        if (i < count) {
            /* A well-framed body of random bytes whose version is never 1. */
            len = 2 + rnd() % (sizeof(buf) - 6);
            p11psk_store_be32(buf, (uint32_t)len);
            for (k = 0; k < len; k++)
                buf[4 + k] = (uint8_t)rnd();
            if (buf[4] == P11PSK_WIRE_VERSION)
                buf[4] = 0xee;
            len += 4;
        } else {
            /* Random bytes, random header included; then we stop writing. */
            len = 1 + rnd() % sizeof(buf);
            for (k = 0; k < len; k++)
                buf[k] = (uint8_t)rnd();
        }
        if (send_all(fd, buf, len) != 0) {
            closed++; /* the daemon may refuse a big header before the rest arrives */
            close(fd);
            continue;
        }
        shutdown(fd, SHUT_WR);
        r = read_response(fd, 3000, NULL, 0);
        if (r == P11PSK_ST_BAD_REQUEST || (i >= count && r >= 0)) {
            answered++;
            if (!wait_closed(fd, 3000))
                hung++; /* must close after a bad request */
        } else if (r == R_EOF) {
            closed++;
        } else {
            hung++;
            fprintf(stderr, "garbage %d: %s\n", i, result_str(r));
        }
        close(fd);
    }
    /* The framed half must each get an answer; the raw half an answer or a close. */
    printf("garbage: connections=%d bad_request=%d closed=%d hung=%d\n", 2 * count, answered,
           closed, hung);
    return hung == 0 && answered >= count ? 0 : 1;
}

static int mode_oversize(void)
{
    static const uint32_t lens[] = {P11PSK_WIRE_MAX + 1, 0x80000000u, 0xffffffffu};
    uint8_t hdr[P11PSK_WIRE_HDR + 16];
    size_t i;
    int bad = 0;

    for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        int fd = dial(5000), r;
        char msg[160];

        memset(hdr, 0x01, sizeof(hdr));
        p11psk_store_be32(hdr, lens[i]);
        if (fd < 0 || send_all(fd, hdr, sizeof(hdr)) != 0) {
            r = R_EOF;
            msg[0] = '\0';
        } else {
            r = read_response(fd, 3000, msg, sizeof(msg));
        }
        if (r != P11PSK_ST_BAD_REQUEST || fd < 0 || !wait_closed(fd, 3000)) {
            fprintf(stderr, "oversize 0x%08x: %s %s\n", lens[i], result_str(r), msg);
            bad++;
        }
        if (fd >= 0)
            close(fd);
    }
    printf("oversize: frames=%zu refused_and_closed=%zu\n", i, i - (size_t)bad);
    return bad == 0 ? 0 : 1;
}

/* Opens n connections that each send the start of a frame and stall for secs. The flood
 * (truncate == 0) sends 1 byte and, like a determined attacker, re-dials every connection
 * the daemon drops, so freed slots are taken again at once. */
static int hold(const char *mode, int n, int secs, int truncate)
{
    struct pollfd *pfd = calloc((size_t)n, sizeof(*pfd));
    size_t sendlen = truncate ? 4 + 32 : 1;
    long opened = 0, dropped = 0, redials = 0;
    double end = now_ms() + secs * 1000.0;
    uint8_t buf[4 + 64];
    int i;

    if (pfd == NULL)
        return 2;
    p11psk_store_be32(buf, 64);
    buf[4] = P11PSK_WIRE_VERSION;
    buf[5] = P11PSK_OP_PING;
    memset(buf + 6, 0x05, sizeof(buf) - 6);
    for (i = 0; i < n; i++) {
        pfd[i].fd = dial(2000);
        pfd[i].events = POLLIN;
        if (pfd[i].fd < 0)
            continue;
        opened++;
        if (send_all(pfd[i].fd, buf, sendlen) != 0) {
            close(pfd[i].fd);
            pfd[i].fd = -1;
            dropped++;
        }
    }
    while (now_ms() < end) {
        double left = end - now_ms();
        long before = redials;

        if (poll(pfd, (nfds_t)n, left < 50 ? (int)left + 1 : 50) < 0 && errno != EINTR)
            break;
        for (i = 0; i < n; i++) {
            if (pfd[i].fd >= 0 && pfd[i].revents != 0 && wait_closed(pfd[i].fd, 0)) {
                close(pfd[i].fd);
                pfd[i].fd = -1;
                dropped++;
            }
            if (pfd[i].fd < 0 && !truncate) {
                pfd[i].fd = dial(200);
                if (pfd[i].fd >= 0) {
                    redials++;
                    if (send_all(pfd[i].fd, buf, sendlen) != 0) {
                        close(pfd[i].fd);
                        pfd[i].fd = -1;
                    }
                }
            }
        }
        if (redials != before)
            sleep_ms(2); /* keeps taking freed slots without spinning a core */
    }
    for (i = 0; i < n; i++) {
        if (pfd[i].fd < 0)
            continue;
        if (wait_closed(pfd[i].fd, 0))
            dropped++;
        close(pfd[i].fd);
    }
    printf("%s: connections=%d opened=%ld closed_by_daemon=%ld redials=%ld held_s=%d\n", mode, n,
           opened, dropped, redials, secs);
    free(pfd);
    return 0; /* what matters is whether the good client was served meanwhile */
}

static int mode_slow(int delay_ms, const char *handle_hex)
{
    static p11psk_frame fr;
    size_t len = build_request(&fr, handle_hex), i;
    double t0 = now_ms();
    char msg[160];
    int fd = dial(5000), r = R_EOF;

    for (i = 0; fd >= 0 && i < len; i++) {
        if (send_all(fd, fr.buf + i, 1) != 0)
            break;
        if (i + 1 < len)
            sleep_ms(delay_ms);
    }
    if (fd >= 0 && i == len)
        r = read_response(fd, 5000, msg, sizeof(msg));
    if (fd >= 0)
        close(fd);
    printf("slow: bytes=%zu delay_ms=%d elapsed_ms=%.0f result=%s\n", len, delay_ms, now_ms() - t0,
           result_str(r));
    return r == P11PSK_ST_OK ? 0 : 1;
}

static int mode_split(const char *handle_hex)
{
    static p11psk_frame fr;
    size_t len = build_request(&fr, handle_hex), k;
    int fd = dial(5000), ok = 0, r = R_EOF;

    for (k = 1; fd >= 0 && k < len; k++) {
        if (send_all(fd, fr.buf, k) != 0)
            break;
        sleep_ms(5);
        if (send_all(fd, fr.buf + k, len - k) != 0)
            break;
        if ((r = read_response(fd, 5000, NULL, 0)) != P11PSK_ST_OK) {
            fprintf(stderr, "split at %zu: %s\n", k, result_str(r));
            break;
        }
        ok++;
    }
    if (fd >= 0)
        close(fd);
    printf("split: frame_bytes=%zu splits=%zu ok=%d\n", len, len - 1, ok);
    return (size_t)ok == len - 1 ? 0 : 1;
}

/* Connects and closes without a word, as fast as the daemon lets it, for secs. */
static int mode_churn(int secs)
{
    double end = now_ms() + secs * 1000.0;
    long connected = 0, refused = 0;

    while (!stop_good && now_ms() < end) {
        int fd = dial(100);

        if (fd < 0) {
            refused++;
            continue;
        }
        connected++;
        close(fd);
    }
    printf("churn: connected=%ld failed=%ld secs=%d\n", connected, refused, secs);
    return 0; /* what matters is whether the others were served meanwhile */
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s SOCKET good SECS BOUND_MS [HANDLE] | garbage N | oversize |\n"
            "          truncate N SECS | flood N SECS | slow DELAY_MS [HANDLE] | split [HANDLE] |\n"
            "          churn SECS\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *mode;

    if (argc < 3)
        usage(argv[0]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGUSR1, on_usr1);
    sock_path = argv[1];
    mode = argv[2];
    if (strcmp(mode, "good") == 0 && (argc == 5 || argc == 6))
        return mode_good(atoi(argv[3]), atoi(argv[4]), argc == 6 ? argv[5] : NULL);
    if (strcmp(mode, "garbage") == 0 && argc == 4)
        return mode_garbage(atoi(argv[3]));
    if (strcmp(mode, "oversize") == 0 && argc == 3)
        return mode_oversize();
    if (strcmp(mode, "truncate") == 0 && argc == 5)
        return hold("truncate", atoi(argv[3]), atoi(argv[4]), 1);
    if (strcmp(mode, "flood") == 0 && argc == 5)
        return hold("flood", atoi(argv[3]), atoi(argv[4]), 0);
    if (strcmp(mode, "slow") == 0 && (argc == 4 || argc == 5))
        return mode_slow(atoi(argv[3]), argc == 5 ? argv[4] : NULL);
    if (strcmp(mode, "split") == 0 && (argc == 3 || argc == 4))
        return mode_split(argc == 4 ? argv[3] : NULL);
    if (strcmp(mode, "churn") == 0 && argc == 4)
        return mode_churn(atoi(argv[3]));
    usage(argv[0]);
    return 2;
}
