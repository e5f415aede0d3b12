/* SPDX-License-Identifier: Apache-2.0 */
/* p11pskd's listening socket: directory, stale socket, bind, owner and mode. */
#include "server_int.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int mkdir_p(const char *dir, char *err, size_t errlen)
{
    char tmp[108], *p, c;

    snprintf(tmp, sizeof(tmp), "%s", dir);
    for (p = tmp + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        c = *p;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) {
            snprintf(err, errlen, "cannot create directory %s: %s", tmp, strerror(errno));
            return -1;
        }
        *p = c;
        if (c == '\0')
            return 0;
    }
}

static int sockaddr_for(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa->sun_path))
        return -1;
    memcpy(sa->sun_path, path, strlen(path) + 1);
    return 0;
}

/* Removes path if it is a socket nobody answers on. Fails if a daemon is alive. */
static int clear_stale(const char *path, const struct sockaddr_un *sa, char *err, size_t errlen)
{
    struct stat st;
    int fd, rc;

    if (lstat(path, &st) != 0)
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
    if (unlink(path) != 0 && errno != ENOENT) {
        snprintf(err, errlen, "cannot remove stale socket %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int p11psk_server_listen(const p11psk_config *cfg, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    char dir[108];
    mode_t old;
    int fd, rc;

    if (sockaddr_for(cfg->socket, &sa) != 0) {
        snprintf(err, errlen, "socket path %s is too long", cfg->socket);
        return -1;
    }
    snprintf(dir, sizeof(dir), "%s", cfg->socket);
    if (mkdir_p(dirname(dir), err, errlen) != 0 || clear_stale(cfg->socket, &sa, err, errlen) != 0)
        return -1;
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    old = umask(0177); /* nobody else may connect before the chmod below */
    rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (rc != 0) {
        snprintf(err, errlen, "cannot bind %s: %s", cfg->socket, strerror(errno));
        close(fd);
        return -1;
    }
    if (cfg->has_socket_group && chown(cfg->socket, (uid_t)-1, cfg->socket_gid) != 0) {
        snprintf(err, errlen, "cannot give %s to group %lu: %s", cfg->socket,
                 (unsigned long)cfg->socket_gid, strerror(errno));
        goto fail;
    }
    if (chmod(cfg->socket, cfg->socket_mode) != 0) {
        snprintf(err, errlen, "cannot chmod %s: %s", cfg->socket, strerror(errno));
        goto fail;
    }
    if (listen(fd, 128) != 0) {
        snprintf(err, errlen, "listen on %s: %s", cfg->socket, strerror(errno));
        goto fail;
    }
    return fd;
fail:
    close(fd);
    unlink(cfg->socket);
    return -1;
}
