/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The key generation page (genpage.h). Sealing: F_SEAL_SHRINK|F_SEAL_GROW so that a
 * client's mapping can never fault (SIGBUS) on a truncated file, F_SEAL_FUTURE_WRITE (Linux
 * 5.1+) so that no new writable mapping or write() can be made after ours, and F_SEAL_SEAL.
 * Clients also get a descriptor reopened O_RDONLY through /proc, so PROT_WRITE fails for
 * them even on a kernel without F_SEAL_FUTURE_WRITE. A client that could write the counter
 * could hold it still while keys change, and keep stale binder keys in other processes.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include "genpage.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010 /* Linux 5.1; older headers lack it */
#endif

static struct {
    int fd;                /* the memfd, read-write */
    int rofd;              /* what clients get */
    _Atomic uint64_t *gen; /* our writable mapping; NULL without a page */
    size_t len;
} page = {-1, -1, NULL, 0};

int p11psk_genpage_open(char *why, size_t whylen)
{
    long psz = sysconf(_SC_PAGESIZE);
    char path[64];
    void *p;
    int fd, seals;

    page.len = psz > 0 ? (size_t)psz : 4096;
    fd = memfd_create("p11psk-gen", MFD_ALLOW_SEALING | MFD_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "memfd_create: %s", strerror(errno));
        return -1;
    }
    if (ftruncate(fd, (off_t)page.len) != 0 ||
        (p = mmap(NULL, page.len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED) {
        snprintf(why, whylen, "generation page: %s", strerror(errno));
        close(fd);
        return -1;
    }
    /* Nonzero from the start: 0 means "no page" to the provider. */
    atomic_store((_Atomic uint64_t *)p, 1);
    seals = F_SEAL_SHRINK | F_SEAL_GROW;
    if (fcntl(fd, F_ADD_SEALS, seals) != 0) {
        snprintf(why, whylen, "sealing the generation page: %s", strerror(errno));
        munmap(p, page.len);
        close(fd);
        return -1;
    }
    /* Our mapping predates the seal, so it stays writable; nobody else's can be. */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) != 0) {
        /* Old kernel: the read-only descriptor below is the protection. */
    }
    fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL);
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    page.rofd = open(path, O_RDONLY | O_CLOEXEC);
    if (page.rofd < 0 && !(fcntl(fd, F_GET_SEALS) & F_SEAL_FUTURE_WRITE)) {
        snprintf(why, whylen,
                 "generation page: no read-only descriptor (%s) and no "
                 "F_SEAL_FUTURE_WRITE: clients could write it, so it is not offered",
                 strerror(errno));
        munmap(p, page.len);
        close(fd);
        return -1;
    }
    page.fd = fd;
    page.gen = p;
    return 0;
}

int p11psk_genpage_fd(void)
{
    if (page.gen == NULL)
        return -1;
    return page.rofd >= 0 ? page.rofd : page.fd;
}

uint64_t p11psk_genpage_value(void)
{
    return page.gen != NULL ? atomic_load(page.gen) : 0;
}

void p11psk_genpage_bump(void)
{
    uint64_t g, next;

    if (page.gen == NULL)
        return;
    g = atomic_load(page.gen);
    do {
        if (g == P11PSK_GEN_DEAD)
            return; /* stopping: the page stays dead */
        /* Skips 0 ("no page") and the dead marker; a 64-bit counter never wraps anyway. */
        next = g + 1 >= P11PSK_GEN_DEAD ? 1 : g + 1;
    } while (!atomic_compare_exchange_weak(page.gen, &g, next));
}

/* The mapping stays: a thread may still bump (and is then ignored) until the process ends. */
void p11psk_genpage_close(void)
{
    if (page.gen != NULL)
        atomic_store(page.gen, P11PSK_GEN_DEAD);
}
