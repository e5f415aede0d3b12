/* SPDX-License-Identifier: Apache-2.0 */
#include "p11psk/cpuidle.h"

#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "p11psk/clock.h"

#define LOADAVG "/proc/loadavg"

static _Atomic long long checked_us = -1000000;
static atomic_int idle;
static atomic_int loadavg_fd = -1;
static dev_t loadavg_dev;
static ino_t loadavg_ino;

/*
 * The descriptor, opened once. An application may close descriptors it did not open (a
 * daemonizing loop) and reuse the number, so each use checks that it is still that file; a
 * descriptor that is not is left alone (it is no longer ours) and the file opened again.
 */
static int loadavg_open(void)
{
    struct stat st;
    int fd = atomic_load(&loadavg_fd), nfd;

    if (fd >= 0 && fstat(fd, &st) == 0 && st.st_dev == loadavg_dev && st.st_ino == loadavg_ino)
        return fd;
    if ((nfd = open(LOADAVG, O_RDONLY | O_CLOEXEC)) < 0)
        return -1;
    if (fstat(nfd, &st) != 0) {
        close(nfd);
        return -1;
    }
    /* Racing threads each open one; the loser's stays open (rare, and only once). */
    loadavg_dev = st.st_dev;
    loadavg_ino = st.st_ino;
    atomic_store(&loadavg_fd, nfd);
    return nfd;
}

static int read_idle(void)
{
    static long ncpu;
    char buf[128], *p;
    ssize_t n;
    long running;
    int fd;

    if (ncpu == 0)
        ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 1 || (fd = loadavg_open()) < 0 || (n = pread(fd, buf, sizeof(buf) - 1, 0)) <= 0)
        return 0;
    buf[n] = '\0';
    /* "0.52 0.58 0.59 3/611 12345": the word after the third space, up to '/'. */
    p = strchr(buf, ' ');
    p = p != NULL ? strchr(p + 1, ' ') : NULL;
    p = p != NULL ? strchr(p + 1, ' ') : NULL;
    if (p == NULL || (running = strtol(p + 1, NULL, 10)) <= 0)
        return 0;
    return running <= ncpu;
}

int p11psk_cpu_idle(long long max_age_us)
{
    long long now = p11psk_mono_us(), then = atomic_load(&checked_us);

    /* One thread per period reads; the others use the last reading. */
    if (now - then >= max_age_us && atomic_compare_exchange_strong(&checked_us, &then, now))
        atomic_store(&idle, read_idle());
    return atomic_load(&idle);
}
