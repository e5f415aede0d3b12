/* SPDX-License-Identifier: Apache-2.0 */
/* Blocking client side of the wire protocol, used by the provider and the CLI. */
#ifndef P11PSK_CLIENT_H
#define P11PSK_CLIENT_H

#include <stddef.h>
#include <sys/types.h>

#include "p11psk/daemon_users.h"
#include "p11psk/wire.h"

#define P11PSK_DEFAULT_SOCKET "/run/p11psk/p11psk.sock"
#define P11PSK_DEFAULT_TIMEOUT_MS 2000

typedef struct {
    int fd;    /* -1 when not connected */
    pid_t pid; /* process that opened fd: a forked child must not share it */
    int timeout_ms;
    int reopened;   /* the last call found this connection stale (daemon restart) and reconnected */
    int waited_ms;  /* a failed connect kept retrying this long (socket missing, backlog full) */
    uid_t peer_uid; /* who answered the last connect; the culprit of P11PSK_CALL_PEER */
    int spin_us;    /* set per call: poll this long for the answer before sleeping (0: don't) */
    p11psk_daemon_users users;
    char path[108];
} p11psk_conn;

enum p11psk_call_rc {
    P11PSK_CALL_OK = 0,
    P11PSK_CALL_UNREACHABLE = -1, /* connect failed (errno kept in *err) */
    P11PSK_CALL_IO = -2,          /* connection lost mid-call */
    P11PSK_CALL_TIMEOUT = -3,
    P11PSK_CALL_PROTO = -4, /* the daemon's answer did not parse */
    P11PSK_CALL_PEER = -5,  /* the socket's owner is not an allowed daemon user; nothing sent */
};

/*
 * Allowed daemon users: root, P11PSK_DAEMON_SYSUSER, and the caller's own euid (a daemon of
 * one's own uid can do nothing the caller could not). For the CLI and test tools.
 */
void p11psk_conn_init(p11psk_conn *c, const char *path, int timeout_ms);
/* The same with an explicit list (the provider's, from its configuration); no user lookups. */
void p11psk_conn_init_users(p11psk_conn *c, const char *path, int timeout_ms,
                            const p11psk_daemon_users *users);
void p11psk_conn_close(p11psk_conn *c);

/*
 * Sends req (already finished) and reads the response into resp (P11PSK_WIRE_MAX bytes),
 * parsed into *m. Reconnects when needed: connect() is retried with a short backoff while
 * the socket is missing, refuses or has a full backlog (a daemon restarting or busy), for at
 * most timeout_ms. A new connection is used only when its peer is an allowed daemon user.
 * A reused connection that fails is reopened and the request sent once more (requests are
 * idempotent). Any failure, a timeout included, closes the connection, and an idle
 * connection with input pending (EOF, or a late answer) is reopened before use: an answer is
 * only ever read for the request just sent. Not thread-safe: one thread per p11psk_conn at a
 * time. *err gets errno on failure.
 */
int p11psk_conn_call(p11psk_conn *c, const p11psk_frame *req, uint8_t *resp, p11psk_msg *m,
                     int *err);
const char *p11psk_call_strerror(int rc);
/*
 * What went wrong in the last call, for the operator: "service unreachable at PATH: ERRNO
 * (still failing after N ms)", "p11pskd at PATH is run by uid N, which is not an allowed
 * daemon user (LIST)", ... Callers append how to fix it.
 */
void p11psk_conn_strerror(const p11psk_conn *c, int rc, int err, char *buf, size_t cap);
/* Its tail for a connect or I/O failure: "at PATH: ERRNO (still failing after N ms)". */
void p11psk_conn_where(const p11psk_conn *c, int err, char *buf, size_t cap);

/*
 * As p11psk_conn_call, for an answer that passes a descriptor with its first byte
 * (SCM_RIGHTS): *fd gets it (close-on-exec), or -1 when the answer carried none; any extra
 * descriptor is closed. Never retries: the caller decides. Not for pooled connections.
 */
int p11psk_conn_call_fd(p11psk_conn *c, const p11psk_frame *req, uint8_t *resp, p11psk_msg *m,
                        int *fd, int *err);

#endif
