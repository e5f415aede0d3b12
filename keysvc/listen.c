/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11pskd's listening socket: a safe directory, the stale socket, bind, owner and mode.
 *
 * Like sshd's StrictModes: whoever can write to a directory on the socket's path can put
 * their own socket there and collect every request. So the path is walked one component at
 * a time from / with O_NOFOLLOW (no symlink anywhere), every directory must be owned by
 * root or us and not writable by group or other (above the socket's own directory a sticky
 * one like /tmp is fine), and everything after the walk is done relative to the directory's
 * fd: bind goes to /proc/self/fd/N/NAME (no chdir, which would be process-wide, and the
 * kernel resolves that path to the directory we checked, not to whatever the path names
 * now), and the mode and group are set with fchmodat/fchownat on NAME in that directory.
 * Sockets from systemd (LISTEN_FDS) are systemd's business and skip all this.
 */
#include "server_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Judges one directory on the socket's path; parent: it is the socket's own directory. */
static int dir_safe(int fd, const char *path, int parent, char *err, size_t errlen)
{
    struct stat st;

    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "cannot stat %s: %s", path, strerror(errno));
        return -1;
    }
    if (st.st_uid != 0 && st.st_uid != geteuid()) {
        snprintf(err, errlen,
                 "socket directory %s is owned by uid %lu (must be root or p11pskd's user, uid "
                 "%lu) — remove it or chown it",
                 path, (unsigned long)st.st_uid, (unsigned long)geteuid());
        return -1;
    }
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) == 0)
        return 0;
    if (parent) {
        snprintf(err, errlen,
                 "socket directory %s has mode %04o: others may write to it and replace the "
                 "socket — use a directory of its own (e.g. /run/p11psk) or chmod go-w %s",
                 path, (unsigned)(st.st_mode & 07777), path);
        return -1;
    }
    if ((st.st_mode & S_ISVTX) == 0) {
        snprintf(err, errlen,
                 "directory %s on the socket's path has mode %04o: others may write to it and "
                 "rename what is inside — chmod go-w %s (or +t)",
                 path, (unsigned)(st.st_mode & 07777), path);
        return -1;
    }
    return 0;
}

/* One step down from fd into name (creating it, 0750, if missing), following no symlink. */
static int step_into(int fd, const char *name, const char *path, char *err, size_t errlen)
{
    struct stat st;
    int nfd;

    nfd = openat(fd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (nfd < 0 && errno == ENOENT) {
        if (mkdirat(fd, name, 0750) != 0 && errno != EEXIST) {
            snprintf(err, errlen, "cannot create directory %s: %s", path, strerror(errno));
            return -1;
        }
        nfd = openat(fd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }
    if (nfd >= 0)
        return nfd;
    if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
        snprintf(err, errlen,
                 "%s is a symbolic link; p11pskd follows none on the socket's path — give "
                 "`socket =` the real path",
                 path);
    else
        snprintf(err, errlen, "cannot open directory %s: %s", path, strerror(errno));
    return -1;
}

/* Opens the socket's directory safely (see the top); *name gets the socket's file name
 * (pointing into buf, which holds a copy of path). Returns the directory fd or -1. */
static int open_parent(const char *sock, char *buf, size_t cap, const char **name, char *err,
                       size_t errlen)
{
    char sofar[108] = "";
    char *p, *slash, *last;
    int fd, nfd;

    snprintf(buf, cap, "%s", sock);
    last = strrchr(buf, '/');
    if (buf[0] != '/' || last == NULL || last[1] == '\0') {
        snprintf(err, errlen, "socket %s must be an absolute path to a file", sock);
        return -1;
    }
    *last = '\0';
    *name = last + 1;
    if ((fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0) {
        snprintf(err, errlen, "cannot open /: %s", strerror(errno));
        return -1;
    }
    if (dir_safe(fd, "/", last == buf, err, errlen) != 0)
        goto fail;
    for (p = buf + 1; p <= last && *p != '\0'; p = slash + 1) {
        if ((slash = strchr(p, '/')) == NULL)
            slash = p + strlen(p);
        *slash = '\0';
        if (*p == '\0' || strcmp(p, ".") == 0)
            continue; /* "//" or "/./" */
        snprintf(sofar + strlen(sofar), sizeof(sofar) - strlen(sofar), "/%s", p);
        if (strcmp(p, "..") == 0) {
            snprintf(err, errlen, "socket %s has a '..' component; write the plain path", sock);
            goto fail;
        }
        if ((nfd = step_into(fd, p, sofar, err, errlen)) < 0)
            goto fail;
        close(fd);
        fd = nfd;
        if (dir_safe(fd, sofar, slash >= last, err, errlen) != 0)
            goto fail;
    }
    return fd;
fail:
    close(fd);
    return -1;
}

/* The socket's address, through the directory fd: /proc/self/fd/N/NAME. */
static int sockaddr_at(int dirfd, const char *name, struct sockaddr_un *sa)
{
    int n;

    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    n = snprintf(sa->sun_path, sizeof(sa->sun_path), "/proc/self/fd/%d/%s", dirfd, name);
    return n > 0 && (size_t)n < sizeof(sa->sun_path) ? 0 : -1;
}

/* Removes name if it is a socket nobody answers on. Fails if a daemon is alive. */
static int clear_stale(int dirfd, const char *name, const char *path, const struct sockaddr_un *sa,
                       char *err, size_t errlen)
{
    struct stat st;
    int fd, rc;

    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return errno == ENOENT ? 0 : (snprintf(err, errlen, "%s: %s", path, strerror(errno)), -1);
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "%s exists and is not a socket; remove it or change `socket =`",
                 path);
        return -1;
    }
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    rc = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
    close(fd);
    if (rc == 0 || errno == EAGAIN) {
        snprintf(err, errlen, "another p11pskd is serving %s; stop it first", path);
        return -1;
    }
    if (unlinkat(dirfd, name, 0) != 0 && errno != ENOENT) {
        snprintf(err, errlen, "cannot remove stale socket %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int p11psk_server_listen(const p11psk_config *cfg, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    const char *name = NULL;
    char buf[108];
    mode_t old;
    int dirfd, fd = -1, rc;

    if (strlen(cfg->socket) >= sizeof(buf)) {
        snprintf(err, errlen, "socket path %s is too long", cfg->socket);
        return -1;
    }
    if ((dirfd = open_parent(cfg->socket, buf, sizeof(buf), &name, err, errlen)) < 0)
        return -1;
    if (sockaddr_at(dirfd, name, &sa) != 0) {
        snprintf(err, errlen, "socket path %s is too long", cfg->socket);
        goto fail;
    }
    if (clear_stale(dirfd, name, cfg->socket, &sa, err, errlen) != 0)
        goto fail;
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        goto fail;
    }
    old = umask(0177); /* nobody else may connect before the chmod below */
    rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (rc != 0) {
        snprintf(err, errlen, "cannot bind %s: %s", cfg->socket, strerror(errno));
        goto fail;
    }
    /* NAME is the socket we just made, in a directory nobody else may write to. */
    if (cfg->has_socket_group &&
        fchownat(dirfd, name, (uid_t)-1, cfg->socket_gid, AT_SYMLINK_NOFOLLOW) != 0) {
        snprintf(err, errlen, "cannot give %s to group %lu: %s", cfg->socket,
                 (unsigned long)cfg->socket_gid, strerror(errno));
        goto fail_bound;
    }
    if (fchmodat(dirfd, name, cfg->socket_mode, 0) != 0) {
        snprintf(err, errlen, "cannot chmod %s: %s", cfg->socket, strerror(errno));
        goto fail_bound;
    }
    if (listen(fd, SOMAXCONN) != 0) {
        snprintf(err, errlen, "listen on %s: %s", cfg->socket, strerror(errno));
        goto fail_bound;
    }
    close(dirfd);
    return fd;
fail_bound:
    unlinkat(dirfd, name, 0);
fail:
    if (fd >= 0)
        close(fd);
    close(dirfd);
    return -1;
}
