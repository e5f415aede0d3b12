/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Replacing a file atomically for the CLI (migrate, export): a temporary file beside it
 * (mkostemp, mode 0600), written, fsync'd, renamed over the file, and the directory
 * fsync'd, so a reader sees the old file or the new one, never a part, even after a crash.
 * Functions print why they failed (naming the file) and return 0, or -1.
 */
#ifndef P11PSK_KEYSVC_ATOMIC_FILE_H
#define P11PSK_KEYSVC_ATOMIC_FILE_H

#include <limits.h>
#include <stddef.h>

typedef struct {
    int fd;
    char path[PATH_MAX];     /* the file to replace */
    char tmp[PATH_MAX + 32]; /* the temporary file beside it */
} p11psk_atomic;

/* Creates the temporary file for path; fd is open for writing (and fchmod/fchown). */
int p11psk_atomic_open(p11psk_atomic *af, const char *path);
int p11psk_atomic_write(p11psk_atomic *af, const void *p, size_t n);
/* fsync, rename over path, fsync the directory. On failure the temporary file is gone. */
int p11psk_atomic_commit(p11psk_atomic *af);
/* Removes the temporary file (after a failure of the caller's own). */
void p11psk_atomic_abort(p11psk_atomic *af);
/* Writes all n bytes to fd, retrying short writes: 0, or -1 with errno set. */
int p11psk_write_all(int fd, const void *p, size_t n);

#endif
