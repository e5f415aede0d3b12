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
#include "handlekey.h"
#include "key_usage.h"
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
    char exe[256];         /* /proc/PID/exe at the first request ("" before), audit log */
    long long deadline_ms; /* a started request or a pending answer must be done by then */
    size_t idx;            /* in its worker's conns[] */
    uint32_t watching;     /* EPOLLIN or EPOLLOUT */
    uint8_t in[P11PSK_WIRE_HDR + P11PSK_WIRE_MAX];
    size_t inlen;
    size_t need; /* whole frame size once the header is in, else 0 */
    p11psk_frame out;
    size_t outlen, outoff;
    int closing; /* close once the response is flushed */
    int pass_fd; /* descriptor + 1 to send with the answer's first byte (SCM_RIGHTS); 0: none */
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

/* Latency histogram buckets (upper bounds in µs; the last is +Inf), stats.c. */
#define STATS_LAT_BUCKETS 9

/* Request counters by operation (slot = row of the table in ops.h) and result, the
 * latency histogram by operation, and the per-key usage. */
/* Locked connection buffers, allocated at start (conn_pool.c). */
typedef struct {
    pthread_mutex_t lock;
    conn *base;
    size_t len; /* bytes mapped */
    conn **free;
    size_t nfree, cap;
    int locked; /* mlock succeeded */
} conn_pool;

/* Request counters by operation (slot = row of the table in ops.h) and result. */
typedef struct {
    atomic_ulong req[P11PSK_OP_SLOTS][P11PSK_ST_MAX_];
    atomic_ulong connections;                             /* accepted since start */
    atomic_ulong lat[P11PSK_OP_SLOTS][STATS_LAT_BUCKETS]; /* not cumulative */
    atomic_ullong lat_sum_us[P11PSK_OP_SLOTS];
    key_usage *keys;
} server_stats;

typedef struct server {
    p11psk_config *cfg;       /* ACL, policy and log level change on SIGHUP */
    pthread_rwlock_t cfglock; /* shared per request, exclusive for a reload */
    p11psk_token *tok;
    p11psk_ladder *lad;
    p11psk_cache *cache;
    p11psk_handlekey *hk; /* mk: verifies handle tags before any lookup */
    struct timespec started;
    p11psk_ratelimit rate;
    p11psk_ratelimit accept_rate; /* new connections per uid (accept-rate-per-uid) */
    conn_pool pool;
    int lfd;
    int wake[2]; /* becomes readable when the daemon stops */
    atomic_int stopping;
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
    int keyed; /* ident is the label of a key found in the token: counted per key */
} outcome;

/* conn_pool.c: n connections' buffers; 0, or -1 when out of memory. */
int conn_pool_init(conn_pool *p, size_t n);
void conn_pool_fini(conn_pool *p);
/* A zeroed connection from the pool, or NULL when all are in use. */
conn *conn_new(server *s);
/* Closes c's socket, cleanses its buffers and gives it back. */
void conn_free(server *s, conn *c);

/* conn.c */
/* Counts a new connection from uid: 0, or -1 (and *why) when a limit says no. */
int conn_peer_admit(server *s, uid_t uid, char *why, size_t whylen);
void conn_peer_release(server *s, uid_t uid);
/* Supplementary groups, for group rules. */
void conn_peer_details(conn *c);
/* The binary the peer runs now (/proc/PID/exe, "?" if unknown) into out; the first one
 * seen is kept in c->exe. Read per request: a process may exec after connecting. */
void conn_peer_exe(conn *c, char *out, size_t cap);
/* A refused peer gets one answer frame (its first request reads it) and a closed socket. */
void conn_refuse(int fd, const struct ucred *cr, const char *why);
/* The same without the answer: for a flood, where one more syscall per connection counts. */
void conn_close_refused(int fd, const struct ucred *cr, const char *why);
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
/* Finds (with create: creates if missing) the token's handle key and derives mk into s->hk;
 * 0, or -1 after logging why (every handle is then refused). */
int handlers_handlekey_load(server *s, int create);
/* 1 if the peer of c holds perm (P11PSK_PERM_*); root and p11pskd's own user hold all. */
int handlers_peer_has_perm(server *s, const conn *c, int perm);

/* stats.c */
/* 0, or -1 when out of memory; stats_fini frees what stats_init made. */
int stats_init(server *s);
void stats_fini(server *s);
/* One request: its result, its latency, and its key when o->keyed. */
void stats_count(server *s, const outcome *o, long long us);
/* The STATUS answer: one "name value" line per metric. */
int stats_status(server *s, p11psk_frame *resp, outcome *o);
/* A result as one word for logs and counters: "access denied" -> "access-denied". */
void stats_result_word(int status, char *out, size_t cap);

#endif
