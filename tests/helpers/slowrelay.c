/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11psk-slowrelay LISTEN TARGET BACKLOG DELAY_MS SECS: a congested front of p11pskd, for
 * tests/integration/connect_retry.sh. Listens on the unix socket LISTEN with listen(BACKLOG),
 * and serves one connection at a time: waits DELAY_MS, accepts, connects to TARGET (the real
 * daemon) and relays both ways until either side closes. Meanwhile further clients find the
 * backlog full (connect: EAGAIN) and must retry. Prints "relayed N" when it exits, after SECS
 * seconds.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "p11psk/clock.h"

static int unix_addr(struct sockaddr_un *sa, const char *path)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa->sun_path))
        return -1;
    memcpy(sa->sun_path, path, strlen(path) + 1);
    return 0;
}

/* Copies bytes both ways until one side closes or the deadline passes. */
static void relay(int a, int b, long long deadline)
{
    struct pollfd p[2] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}};
    char buf[16384];
    long long left;
    int i;

    while ((left = deadline - p11psk_mono_ms()) > 0) {
        if (poll(p, 2, (int)left) <= 0)
            continue;
        for (i = 0; i < 2; i++) {
            ssize_t r, w, off = 0;

            if (p[i].revents == 0)
                continue;
            if ((r = read(p[i].fd, buf, sizeof(buf))) <= 0)
                return;
            while (off < r) {
                if ((w = write(p[1 - i].fd, buf + off, (size_t)(r - off))) <= 0)
                    return;
                off += w;
            }
        }
    }
}

int main(int argc, char **argv)
{
    struct sockaddr_un la, ta;
    int lfd, backlog, delay_ms, secs, relayed = 0;
    long long deadline, left;

    if (argc != 6 || unix_addr(&la, argv[1]) != 0 || unix_addr(&ta, argv[2]) != 0 ||
        (backlog = atoi(argv[3])) < 0 || (delay_ms = atoi(argv[4])) < 0 ||
        (secs = atoi(argv[5])) <= 0) {
        fprintf(stderr, "usage: p11psk-slowrelay LISTEN TARGET BACKLOG DELAY_MS SECS\n");
        return 2;
    }
    unlink(argv[1]);
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&la, sizeof(la)) != 0 ||
        listen(lfd, backlog) != 0) {
        fprintf(stderr, "p11psk-slowrelay: %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    deadline = p11psk_mono_ms() + secs * 1000LL;
    while ((left = deadline - p11psk_mono_ms()) > 0) {
        struct pollfd p = {.fd = lfd, .events = POLLIN};
        struct timespec ts = {.tv_sec = delay_ms / 1000, .tv_nsec = (delay_ms % 1000) * 1000000L};
        int cfd, dfd;

        if (poll(&p, 1, (int)left) <= 0)
            continue;
        /* The congestion: a connection waits DELAY_MS in the backlog before it is accepted. */
        nanosleep(&ts, NULL);
        if ((cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) < 0)
            continue;
        dfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (dfd >= 0 && connect(dfd, (struct sockaddr *)&ta, sizeof(ta)) == 0) {
            relay(cfd, dfd, deadline);
            relayed++;
        } else {
            fprintf(stderr, "p11psk-slowrelay: %s: %s\n", argv[2], strerror(errno));
        }
        if (dfd >= 0)
            close(dfd);
        close(cfd);
    }
    unlink(argv[1]);
    printf("relayed %d\n", relayed);
    return 0;
}
