/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11psk-wireprobe SOCKET HEX...: sends each HEX argument as raw bytes on one connection
 * and prints, per argument, the daemon's response ("status=NAME msg=TEXT") or "eof".
 * Ends with "open" or "eof": whether the daemon kept the connection after the last one.
 * Used to feed p11pskd malformed frames; it trusts nothing it reads.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "p11psk/wire.h"

static int read_full(int fd, uint8_t *p, size_t n)
{
    while (n > 0) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        ssize_t r;

        if (poll(&pfd, 1, 3000) != 1)
            return -1; /* timeout: the daemon neither answered nor closed */
        r = read(fd, p, n);
        if (r == 0)
            return 0;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return errno == ECONNRESET ? 0 : -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 1;
}

static size_t unhex(const char *s, uint8_t *out, size_t cap)
{
    size_t n = 0;
    unsigned v;

    while (s[0] && s[1] && n < cap && sscanf(s, "%2x", &v) == 1) {
        out[n++] = (uint8_t)v;
        s += 2;
    }
    return n;
}

/* Prints one response; returns 1 if one was read, 0 on EOF, -1 on timeout or garbage. */
static int show_response(int fd)
{
    uint8_t hdr[P11PSK_WIRE_HDR], body[P11PSK_WIRE_MAX];
    size_t len;
    p11psk_msg m;
    char msg[256];
    int r = read_full(fd, hdr, sizeof(hdr));

    if (r <= 0) {
        printf(r == 0 ? "eof\n" : "timeout\n");
        return r;
    }
    if (p11psk_wire_header(hdr, &len) != P11PSK_WIRE_OK || read_full(fd, body, len) != 1 ||
        p11psk_msg_parse(body, len, &m) != P11PSK_WIRE_OK) {
        printf("garbage\n");
        return -1;
    }
    p11psk_msg_str(&m, P11PSK_T_MSG, msg, sizeof(msg));
    printf("status=%s msg=%s\n", p11psk_status_str(m.code), msg);
    return 1;
}

int main(int argc, char **argv)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    static uint8_t req[4 * P11PSK_WIRE_MAX];
    int fd, i;

    if (argc < 3) {
        fprintf(stderr, "usage: %s SOCKET HEX...\n", argv[0]);
        return 2;
    }
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", argv[1]);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        perror("connect");
        return 2;
    }
    for (i = 2; i < argc; i++) {
        size_t n = unhex(argv[i], req, sizeof(req));

        if (write(fd, req, n) != (ssize_t)n) {
            printf("eof\n");
            return 0;
        }
        if (show_response(fd) <= 0)
            return 0;
    }
    /* Did the daemon keep the connection? A closed one reads EOF at once. */
    {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        char c;

        if (poll(&pfd, 1, 300) == 1 && read(fd, &c, 1) <= 0)
            printf("eof\n");
        else
            printf("open\n");
    }
    close(fd);
    return 0;
}
