/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11psk-sinkd SOCKET COUNTFILE SECS: a fake p11pskd for tests/integration/daemon_identity.sh.
 * Listens on the unix socket SOCKET (mode 0666), accepts every connection, reads whatever
 * arrives and never answers; after every read it rewrites COUNTFILE with the total number of
 * bytes received so far ("0" from the start). Exits after SECS seconds, removing SOCKET.
 * Run as the user who plays the attacker: a client must refuse it before sending a byte.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "p11psk/clock.h"

#define SINK_CONNS_MAX 64

static int write_count(const char *path, unsigned long long total)
{
    char tmp[4200];
    FILE *f;

    /* Written aside and renamed: a reader never sees a half-written number. */
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    if ((f = fopen(tmp, "w")) == NULL)
        return -1;
    fprintf(f, "%llu\n", total);
    if (fclose(f) != 0)
        return -1;
    return rename(tmp, path);
}

int main(int argc, char **argv)
{
    struct pollfd p[1 + SINK_CONNS_MAX];
    unsigned long long total = 0;
    struct sockaddr_un sa;
    long long deadline, left;
    int lfd, n = 1, i, secs;
    char buf[4096];

    if (argc != 4 || (secs = atoi(argv[3])) <= 0 || strlen(argv[1]) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "usage: p11psk-sinkd SOCKET COUNTFILE SECS\n");
        return 2;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, argv[1], strlen(argv[1]) + 1);
    unlink(argv[1]);
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 16) != 0 ||
        chmod(argv[1], 0666) != 0 || write_count(argv[2], 0) != 0) {
        fprintf(stderr, "p11psk-sinkd: %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    p[0].fd = lfd;
    p[0].events = POLLIN;
    deadline = p11psk_mono_ms() + secs * 1000LL;
    while ((left = deadline - p11psk_mono_ms()) > 0) {
        if (poll(p, (nfds_t)n, (int)left) <= 0)
            continue;
        if ((p[0].revents & POLLIN) && n < 1 + SINK_CONNS_MAX) {
            int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

            if (fd >= 0) {
                p[n].fd = fd;
                p[n].events = POLLIN;
                p[n].revents = 0;
                n++;
            }
        }
        for (i = 1; i < n; i++) {
            ssize_t r;

            if (p[i].revents == 0)
                continue;
            r = read(p[i].fd, buf, sizeof(buf));
            if (r > 0) {
                total += (unsigned long long)r;
                write_count(argv[2], total);
                continue;
            }
            /* EOF or error: forget this connection (the last one takes its slot). */
            close(p[i].fd);
            p[i] = p[--n];
            i--;
        }
    }
    unlink(argv[1]);
    printf("sinkd: received %llu bytes\n", total);
    return 0;
}
