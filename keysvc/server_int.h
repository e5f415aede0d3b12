/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11pskd's server internals, shared by its parts: listen.c (the socket), conn.c (one
 * connection's buffers, limits and I/O), worker.c (epoll threads), dispatch.c (a request
 * to its answer), handlers.c (what each operation does), stats.c (counters, STATUS text)
 * and server.c (start, reload, stop). Not for other programs: server.h is the API.
 */
#ifndef P11PSK_KEYSVC_SERVER_INT_H
#define P11PSK_KEYSVC_SERVER_INT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* struct ucred, rwlock kinds: include this header first */
#endif
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/socket.h>
#include <time.h>

#include "cache.h"
#include "keychange.h"
#include "config.h"
#include "ladder.h"
#include "p11psk/ops.h"
#include "p11psk/wire.h"
#include "policy.h"
#include "server.h"
#include "token.h"

#define CONN_GROUPS_MAX 64

typedef struct {
    int fd;
    struct ucred cred;
    gid_t groups[CONN_GROUPS_MAX]; /* supplementary groups (SO_PEERGROUPS) */
    size_t ngroups;
    char exe[256];         /* /proc/PID/exe at connect time, for the audit log */
    long long deadline_ms; /* a started request or a pending answer must be done by then */
    size_t idx;            /* in its worker's conns[] */
    uint32_t watching;     /* EPOLLIN or EPOLLOUT */
    uint8_t in[P11PSK_WIRE_HDR + P11PSK_WIRE_MAX];
    size_t inlen;
    size_t need; /* whole frame size once the header is in, else 0 */
    p11psk_frame out;
    size_t outlen, outoff;
    int closing; /* close once the response is flushed */
} conn;

struct server;

/* One worker thread: its own connections and poll loop. Requests are answered in order, one
 * at a time per connection, so a peer has at most one request in flight per connection. */
typedef struct {
    struct server *s;
    pthread_t th;
    int ep; /* epoll: the listening socket, the wake pipe, this worker's connections */
    conn **conns;
    size_t nconns;
} worker;

typedef struct {
    uid_t uid;
    unsigned n;
} peer_count;

/* Request counters by operation (slot = row of the table in ops.h) and result. */
typedef struct {
    atomic_ulong req[P11PSK_OP_SLOTS][P11PSK_ST_MAX_];
    atomic_ulong connections; /* accepted since start */
} server_stats;

typedef struct server {
    p11psk_config *cfg;       /* ACL, policy and log level change on SIGHUP */
    pthread_rwlock_t cfglock; /* shared per request, exclusive for a reload */
    p11psk_token *tok;
    p11psk_ladder *lad;
    p11psk_cache *cache;
    struct timespec started;
    p11psk_ratelimit rate;
    int lfd;
    int wake[2]; /* becomes readable when the daemon stops */
    atomic_int stopping;
    atomic_int lock_warned;
    pthread_mutex_t peerlock; /* guards the connection counts */
    peer_count *peers;
    size_t npeers, nconns;
    worker *workers;
    size_t nworkers;
    server_stats stats;
} server;

/* What one request did, for its response and its log line. */
typedef struct {
    int op;
    char ident[P11PSK_KEY_LABEL_MAX];
    p11psk_err err;
    int step;
    int close_after;
} outcome;

/* conn.c */
conn *conn_new(server *s);
void conn_free(conn *c);
/* Counts a new connection from uid: 0, or -1 (and *why) when a limit says no. */
int conn_peer_admit(server *s, uid_t uid, char *why, size_t whylen);
void conn_peer_release(server *s, uid_t uid);
/* Supplementary groups and executable: for group rules and the audit log. */
void conn_peer_details(conn *c);
/* A refused peer gets one answer frame (its first request reads it) and a closed socket. */
void conn_refuse(int fd, const struct ucred *cr, const char *why);
/* These return 0 to keep the connection, -1 to drop it. */
int conn_read(server *s, conn *c);
int conn_process(server *s, conn *c);
int conn_flush(conn *c);

/* worker.c: a worker thread's loop (arg: its worker). */
void *worker_main(void *arg);

/* dispatch.c: builds the answer to the frame in c->in (header_rc: the header's check). */
void dispatch_respond(server *s, conn *c, int header_rc);
/* Records a failure in o and returns status (a P11PSK_ST_*). BAD_REQUEST closes. */
int outcome_fail(outcome *o, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* handlers.c */
typedef int (*op_handler)(server *s, conn *c, const p11psk_msg *m, p11psk_frame *resp, outcome *o);
/* Binds a handler to every row of the table: 0, or -1 naming the row without one in why. */
int handlers_bind(char *why, size_t whylen);
/* The handler of row (an index into p11psk_ops). */
op_handler handlers_for(size_t row);
/* 1 if the peer of c holds perm (P11PSK_PERM_*); root and p11pskd's own user hold all. */
int handlers_peer_has_perm(server *s, const conn *c, int perm);

/* stats.c */
void stats_count(server *s, int op, int status);
/* The STATUS answer: one "name value" line per metric. */
int stats_status(server *s, p11psk_frame *resp, outcome *o);
/* A result as one word for logs and counters: "access denied" -> "access-denied". */
void stats_result_word(int status, char *out, size_t cap);

#endif
