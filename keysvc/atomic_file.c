/* SPDX-License-Identifier: Apache-2.0 */
/* Atomic replacement of a file (atomic_file.h). */
#define _GNU_SOURCE /* mkostemp */
#include "atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int p11psk_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;

    while (n > 0) {
        ssize_t w = write(fd, c, n);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = EIO;
            return -1;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

int p11psk_atomic_open(p11psk_atomic *af, const char *path)
{
    af->fd = -1;
    if (snprintf(af->path, sizeof(af->path), "%s", path) >= (int)sizeof(af->path) ||
        snprintf(af->tmp, sizeof(af->tmp), "%s.p11psk-XXXXXX", path) >= (int)sizeof(af->tmp)) {
        fprintf(stderr, "p11psk: path too long: %s\n", path);
        return -1;
    }
    af->fd = mkostemp(af->tmp, O_CLOEXEC); /* mode 0600 */
    if (af->fd < 0) {
        fprintf(stderr, "p11psk: cannot create a temporary file beside %s: %s\n", path,
                strerror(errno));
        return -1;
    }
    return 0;
}

int p11psk_atomic_write(p11psk_atomic *af, const void *p, size_t n)
{
    if (p11psk_write_all(af->fd, p, n) == 0)
        return 0;
    fprintf(stderr, "p11psk: cannot write %s: %s\n", af->tmp, strerror(errno));
    return -1;
}

void p11psk_atomic_abort(p11psk_atomic *af)
{
    if (af->fd >= 0)
        close(af->fd);
    af->fd = -1;
    unlink(af->tmp);
}

int p11psk_atomic_commit(p11psk_atomic *af)
{
    char dir[PATH_MAX];
    int dfd, rc;

    if (fsync(af->fd) != 0) {
        fprintf(stderr, "p11psk: cannot write %s: %s\n", af->tmp, strerror(errno));
        p11psk_atomic_abort(af);
        return -1;
    }
    rc = close(af->fd);
    af->fd = -1;
    if (rc != 0 || rename(af->tmp, af->path) != 0) {
        fprintf(stderr, "p11psk: cannot replace %s: %s\n", af->path, strerror(errno));
        p11psk_atomic_abort(af);
        return -1;
    }
    /* The rename itself must reach the disk too. */
    snprintf(dir, sizeof(dir), "%s", af->path);
    if ((dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}
