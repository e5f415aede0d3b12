/* SPDX-License-Identifier: Apache-2.0 */
/* p11pskd --check-config. The loader stops at the first problem; to report every one, the
 * check blanks each offending line in a private in-memory copy and loads that again. */
#define _GNU_SOURCE /* memfd_create */
#include "checkconf.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"

#define CHECK_MAX_LINES 10000 /* bounds the reload loop below */

typedef struct {
    char **line;
    size_t n;
} lines;

static void lines_free(lines *l)
{
    size_t i;

    for (i = 0; i < l->n; i++) {
        if (l->line[i] != NULL) /* an RFC 7512 URI may carry a pin-value */
            OPENSSL_cleanse(l->line[i], strlen(l->line[i]));
        free(l->line[i]);
    }
    free(l->line);
}

/* Reads the file line by line into memory, never into a file on disk. */
static int lines_read(const char *path, lines *l)
{
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    size_t cap = 0;
    ssize_t r;

    memset(l, 0, sizeof(*l));
    if (f == NULL) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        return 0;
    }
    l->line = calloc(CHECK_MAX_LINES, sizeof(*l->line));
    while (l->line != NULL && l->n < CHECK_MAX_LINES && (r = getline(&buf, &cap, f)) >= 0) {
        l->line[l->n++] = buf;
        buf = NULL;
        cap = 0;
    }
    free(buf);
    fclose(f);
    if (l->line == NULL || l->n == CHECK_MAX_LINES) {
        fprintf(stderr, "%s: %s\n", path,
                l->line == NULL ? "out of memory" : "more than 10000 lines");
        lines_free(l);
        return 0;
    }
    return 1;
}

/* The in-memory copy, by a path the loader can open. */
static int lines_write(const lines *l, int fd)
{
    size_t i;

    if (ftruncate(fd, 0) != 0 || lseek(fd, 0, SEEK_SET) != 0)
        return 0;
    for (i = 0; i < l->n; i++) {
        const char *s = l->line[i] != NULL ? l->line[i] : "\n";
        size_t len = strlen(s), off = 0;
        ssize_t w;

        while (off < len) {
            if ((w = write(fd, s + off, len - off)) < 0) {
                if (errno == EINTR)
                    continue;
                return 0;
            }
            off += (size_t)w;
        }
    }
    return 1;
}

/* Prints the loader's "COPY:LINE: msg" as "FILE:LINE: msg"; returns LINE, or 0. */
static unsigned report(const char *path, const char *copy, const char *err)
{
    size_t clen = strlen(copy);
    unsigned long line = 0;
    const char *p = err, *hit;
    char *end;

    if (strncmp(err, copy, clen) == 0 && err[clen] == ':') {
        line = strtoul(err + clen + 1, &end, 10);
        if (end == err + clen + 1 || *end != ':')
            line = 0;
    }
    fputs(path, stderr);
    p = err + (strncmp(err, copy, clen) == 0 ? clen : 0);
    if (p == err)
        fputs(": ", stderr);
    while ((hit = strstr(p, copy)) != NULL) { /* the copy's name may recur in the text */
        fwrite(p, 1, (size_t)(hit - p), stderr);
        fputs(path, stderr);
        p = hit + clen;
    }
    fprintf(stderr, "%s\n", p);
    return line > CHECK_MAX_LINES ? 0 : (unsigned)line;
}

/* The last line that sets key (or, for pin-source, carries it in a token URI). */
static unsigned find_key(const lines *l, const char *key)
{
    size_t i, klen = strlen(key);
    unsigned found = 0;

    for (i = 0; i < l->n; i++) {
        const char *s = l->line[i];

        if (s == NULL)
            continue;
        while (isspace((unsigned char)*s))
            s++;
        if (*s == '#')
            continue;
        if ((strncmp(s, key, klen) == 0 && (isspace((unsigned char)s[klen]) || s[klen] == '=')) ||
            (strcmp(key, "pin-source") == 0 && strstr(s, "pin-source=") != NULL))
            found = (unsigned)i + 1;
    }
    return found;
}

static void problem(const char *path, unsigned line, const char *what, const char *file, int errnum)
{
    if (line > 0)
        fprintf(stderr, "%s:%u: ", path, line);
    else
        fprintf(stderr, "%s: ", path);
    fprintf(stderr, "cannot read %s %s: %s\n", what, file, strerror(errnum));
}

/* Whatever the loader accepts but the daemon would still fail on at startup. */
static int check_files(const char *path, const lines *l, const p11psk_config *cfg)
{
    int ok = 1;

    if (cfg->pin_source != NULL) {
        const char *pin =
            strncmp(cfg->pin_source, "file:", 5) == 0 ? cfg->pin_source + 5 : cfg->pin_source;

        if (access(pin, R_OK) != 0) {
            problem(path, find_key(l, "pin-source"), "PIN file", pin, errno);
            ok = 0;
        }
    }
    if (cfg->module != NULL && strchr(cfg->module, '/') != NULL && access(cfg->module, R_OK) != 0) {
        problem(path, find_key(l, "module"), "PKCS#11 module", cfg->module, errno);
        ok = 0;
    }
    return ok;
}

int p11psk_check_config(const char *path)
{
    char copy[64], err[1024];
    p11psk_config cfg;
    unsigned line, round;
    int fd, ok = 1, loaded = 0;
    lines l;

    if (!lines_read(path, &l))
        return 0;
    if ((fd = memfd_create("p11pskd-check", MFD_CLOEXEC)) < 0) {
        fprintf(stderr, "%s: cannot check: memfd_create: %s\n", path, strerror(errno));
        lines_free(&l);
        return 0;
    }
    snprintf(copy, sizeof(copy), "/proc/self/fd/%d", fd);
    for (round = 0; round <= l.n && !loaded; round++) {
        if (!lines_write(&l, fd)) {
            fprintf(stderr, "%s: cannot check: %s\n", path, strerror(errno));
            ok = 0;
            break;
        }
        if (p11psk_config_load(copy, &cfg, err, sizeof(err))) {
            loaded = 1;
            break;
        }
        ok = 0;
        line = report(path, copy, err);
        if (line == 0 || line > l.n || l.line[line - 1] == NULL)
            break; /* not a line's fault: nothing more to learn */
        OPENSSL_cleanse(l.line[line - 1], strlen(l.line[line - 1]));
        free(l.line[line - 1]);
        l.line[line - 1] = NULL;
    }
    close(fd);
    if (loaded) {
        if (!check_files(path, &l, &cfg))
            ok = 0;
        p11psk_config_free(&cfg);
    }
    lines_free(&l);
    if (ok)
        printf("%s: ok\n", path);
    return ok;
}
