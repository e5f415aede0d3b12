/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Connections to p11pskd, one pool per provider instance (that is, per OSSL_LIB_CTX: each
 * context's openssl.cnf may name its own daemon), and the mapping of daemon answers to
 * OpenSSL errors.
 *
 * A call takes an idle connection of its pool (or opens a new one), runs its request without
 * holding any lock and gives the connection back, so threads never share a connection and
 * never wait for each other's round trips. A pool's lock only guards its lists and is never
 * held across I/O, which also keeps the fork handlers short. The fork handlers reach every
 * live pool through a registry.
 *
 * While it waits for the answer a thread polls instead of sleeping, for at most twice the
 * round trip this pool has been seeing (bounded by p11psk-spin-us), and only while a CPU is
 * idle: on VMs waking a sleeping thread can cost several round trips, and a polling thread
 * must never keep another runnable thread off a CPU.
 */
#include "prov.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "p11psk/clock.h"
#include "p11psk/cpuidle.h"

/* Idle connections kept per pool; more concurrent calls open (and then close) extras. */
#define P11PSK_POOL_IDLE_MAX 8

typedef struct p11psk_pool_conn {
    struct p11psk_pool_conn *next, *prev; /* on the idle or the busy list */
    p11psk_conn conn;
    uint8_t resp[P11PSK_WIRE_MAX]; /* answers carry derived secrets: cleansed after each call */
} P11PSK_POOL_CONN;

struct p11psk_pool {
    struct p11psk_pool *next, *prev; /* in the registry; guarded by registry_lock */
    pthread_mutex_t lock;            /* guards everything below */
    char path[sizeof(((p11psk_conn *)0)->path)];
    int timeout_ms;
    p11psk_daemon_users users;
    int spin_max_us;    /* p11psk-spin-us: 0 turns polling off */
    atomic_int rtt_us8; /* round trips on reused connections, moving average x 8 */
    pid_t pid;          /* process the connections belong to */
    int nidle;
    P11PSK_POOL_CONN *idle;
    P11PSK_POOL_CONN *busy; /* checked out by a call; known so that a child can drop them */
};

/* Live pools, for the fork handlers. Lock order: registry_lock, then a pool's lock. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static P11PSK_POOL *registry;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void pool_conn_free(P11PSK_POOL_CONN *pcn)
{
    p11psk_conn_close(&pcn->conn);
    OPENSSL_clear_free(pcn, sizeof(*pcn));
}

static void list_push(P11PSK_POOL_CONN **head, P11PSK_POOL_CONN *pcn)
{
    pcn->prev = NULL;
    pcn->next = *head;
    if (*head != NULL)
        (*head)->prev = pcn;
    *head = pcn;
}

static void list_unlink(P11PSK_POOL_CONN **head, P11PSK_POOL_CONN *pcn)
{
    if (pcn->prev != NULL)
        pcn->prev->next = pcn->next;
    else
        *head = pcn->next;
    if (pcn->next != NULL)
        pcn->next->prev = pcn->prev;
    pcn->next = pcn->prev = NULL;
}

/* Unlinks the idle list; the caller frees it outside the lock. Pool lock held. */
static P11PSK_POOL_CONN *pool_take_idle(P11PSK_POOL *pool)
{
    P11PSK_POOL_CONN *all = pool->idle;

    pool->idle = NULL;
    pool->nidle = 0;
    return all;
}

static void pool_free_list(P11PSK_POOL_CONN *pcn)
{
    P11PSK_POOL_CONN *next;

    for (; pcn != NULL; pcn = next) {
        next = pcn->next;
        pool_conn_free(pcn);
    }
}

/*
 * Fork: no thread may hold a lock at the moment of fork, or the child would inherit it
 * locked forever. The child then drops every connection, idle or checked out by a thread
 * that does not exist in the child: they are the parent's conversations, and the parent
 * keeps its own descriptors (closing the child's copies sends nothing to the daemon).
 */
static void atfork_prepare(void)
{
    P11PSK_POOL *pool;

    pthread_mutex_lock(&registry_lock);
    for (pool = registry; pool != NULL; pool = pool->next)
        pthread_mutex_lock(&pool->lock);
}

static void atfork_parent(void)
{
    P11PSK_POOL *pool;

    for (pool = registry; pool != NULL; pool = pool->next)
        pthread_mutex_unlock(&pool->lock);
    pthread_mutex_unlock(&registry_lock);
}

static void atfork_child(void)
{
    P11PSK_POOL_CONN *busy, *idle;
    P11PSK_POOL *pool;

    /* The forking thread took the locks in prepare; its copy in the child releases them. */
    for (pool = registry; pool != NULL; pool = pool->next) {
        busy = pool->busy;
        idle = pool_take_idle(pool);
        pool->busy = NULL;
        pool->pid = getpid();
        pthread_mutex_unlock(&pool->lock);
        pool_free_list(idle);
        pool_free_list(busy);
    }
    pthread_mutex_unlock(&registry_lock);
}

static void atfork_register(void)
{
    /* glibc unregisters these when the module is unloaded (dlclose). */
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

P11PSK_POOL *p11psk_pool_new(const char *path, int timeout_ms, int spin_us,
                             const p11psk_daemon_users *users)
{
    P11PSK_POOL *pool;
    p11psk_conn c;

    pthread_once(&atfork_once, atfork_register);
    if ((pool = OPENSSL_zalloc(sizeof(*pool))) == NULL)
        return NULL;
    /* p11psk_conn_init_users applies the defaults and bounds the path. */
    p11psk_conn_init_users(&c, path, timeout_ms, users);
    memcpy(pool->path, c.path, sizeof(pool->path));
    pool->timeout_ms = c.timeout_ms;
    pool->users = c.users;
    pool->spin_max_us = spin_us > 0 ? spin_us : 0;
    pool->pid = getpid();
    pthread_mutex_init(&pool->lock, NULL);
    pthread_mutex_lock(&registry_lock);
    pool->next = registry;
    if (registry != NULL)
        registry->prev = pool;
    registry = pool;
    pthread_mutex_unlock(&registry_lock);
    return pool;
}

void p11psk_pool_free(P11PSK_POOL *pool)
{
    P11PSK_POOL_CONN *idle, *busy;

    if (pool == NULL)
        return;
    pthread_mutex_lock(&registry_lock);
    if (pool->prev != NULL)
        pool->prev->next = pool->next;
    else
        registry = pool->next;
    if (pool->next != NULL)
        pool->next->prev = pool->prev;
    pthread_mutex_unlock(&registry_lock);
    /* Teardown runs when no call can be in flight: the busy list is empty but for a bug. */
    pthread_mutex_lock(&pool->lock);
    idle = pool_take_idle(pool);
    busy = pool->busy;
    pool->busy = NULL;
    pthread_mutex_unlock(&pool->lock);
    pool_free_list(idle);
    pool_free_list(busy);
    pthread_mutex_destroy(&pool->lock);
    OPENSSL_clear_free(pool, sizeof(*pool));
}

/* An idle connection, or a new unconnected one (p11psk_conn_call connects it). */
static P11PSK_POOL_CONN *pool_get(P11PSK_POOL *pool)
{
    P11PSK_POOL_CONN *pcn, *stale = NULL;
    pid_t pid = getpid();

    pthread_mutex_lock(&pool->lock);
    /* Only after a fork that bypassed the handlers (a raw clone): drop the parent's pool. */
    if (pool->pid != pid) {
        stale = pool_take_idle(pool);
        pool->pid = pid;
    }
    if ((pcn = pool->idle) != NULL) {
        list_unlink(&pool->idle, pcn);
        pool->nidle--;
        list_push(&pool->busy, pcn);
    }
    pthread_mutex_unlock(&pool->lock);
    pool_free_list(stale);
    if (pcn != NULL)
        return pcn;

    /* Allocated outside the lock: other threads keep taking and returning meanwhile. The
     * configuration fields never change after p11psk_pool_new. */
    if ((pcn = OPENSSL_zalloc(sizeof(*pcn))) == NULL)
        return NULL;
    p11psk_conn_init_users(&pcn->conn, pool->path, pool->timeout_ms, &pool->users);
    pthread_mutex_lock(&pool->lock);
    list_push(&pool->busy, pcn);
    pthread_mutex_unlock(&pool->lock);
    return pcn;
}

/*
 * Returns a connection after a call. Only a connection whose last call completed is kept:
 * one that failed (timeout included) was closed by p11psk_conn_call, so a late answer to
 * an abandoned request can never be read as the answer to the next one.
 */
static void pool_put(P11PSK_POOL *pool, P11PSK_POOL_CONN *pcn)
{
    OPENSSL_cleanse(pcn->resp, sizeof(pcn->resp));
    pthread_mutex_lock(&pool->lock);
    list_unlink(&pool->busy, pcn);
    if (pcn->conn.fd >= 0 && pool->nidle < P11PSK_POOL_IDLE_MAX && pcn->conn.pid == pool->pid) {
        list_push(&pool->idle, pcn);
        pool->nidle++;
        pcn = NULL;
    }
    pthread_mutex_unlock(&pool->lock);
    if (pcn != NULL)
        pool_conn_free(pcn);
}

/* A run-queue reading is reused for this long (one read per ms in a busy process). */
#define RUNQ_MAX_AGE_US 1000

/* How long the next call may poll for its answer: see the top of this file. */
static int pool_spin_us(P11PSK_POOL *pool)
{
    int est = atomic_load_explicit(&pool->rtt_us8, memory_order_relaxed) / 8;

    if (pool->spin_max_us == 0 || !p11psk_cpu_idle(RUNQ_MAX_AGE_US))
        return 0;
    /* Nothing seen yet: the limit. Else twice the average, enough for most answers. */
    return est == 0 || 2 * est > pool->spin_max_us ? pool->spin_max_us : 2 * est;
}

/* Feeds one round trip on a reused connection (a connect is not a round trip) to the average. */
static void pool_observe(P11PSK_POOL *pool, long long us)
{
    int old = atomic_load_explicit(&pool->rtt_us8, memory_order_relaxed), v;

    if (us > P11PSK_SPIN_MAX_US * 8)
        us = P11PSK_SPIN_MAX_US * 8;
    /* avg += (x - avg) / 8, kept x 8; a lost update between racing threads is harmless. */
    v = old == 0 ? (int)us * 8 : old + (int)us - old / 8;
    atomic_store_explicit(&pool->rtt_us8, v, memory_order_relaxed);
}

static int status_reason(int st)
{
    switch (st) {
    case P11PSK_ST_BAD_HANDLE:
        return P11PSK_R_BAD_HANDLE;
    case P11PSK_ST_NOT_FOUND:
        return P11PSK_R_KEY_NOT_FOUND;
    case P11PSK_ST_ACCESS_DENIED:
        return P11PSK_R_ACCESS_DENIED;
    case P11PSK_ST_TOKEN:
        return P11PSK_R_TOKEN_ERROR;
    case P11PSK_ST_NEED_READABLE:
        return P11PSK_R_KEY_NOT_READABLE;
    case P11PSK_ST_UNSUPPORTED:
        return P11PSK_R_UNSUPPORTED;
    case P11PSK_ST_POLICY:
        return P11PSK_R_POLICY;
    case P11PSK_ST_UNAVAILABLE:
        return P11PSK_R_TOKEN_UNAVAILABLE;
    case P11PSK_ST_INTERNAL:
        return P11PSK_R_INTERNAL;
    }
    /* BAD_REQUEST means we sent something the daemon does not understand. */
    return P11PSK_R_PROTOCOL_ERROR;
}

int p11psk_svc_call(const P11PSK_PROV_CTX *pc, p11psk_frame *req, int outtag, uint8_t *out,
                    size_t outlen)
{
    char msg[512] = "", why[512];
    int rc, err = 0, ok = 0, bad_out = 0, has_ckr = 0, st = -1, reused;
    long long t0;
    uint8_t op = req->buf[P11PSK_WIRE_HDR + 1];
    P11PSK_POOL_CONN *pcn;
    uint32_t ckr = 0;
    p11psk_msg m;

    if (pc->config_error[0] != '\0') {
        p11psk_frame_cleanse(req);
        P11PSK_RAISE(pc, P11PSK_R_BAD_CONFIG, "%s", pc->config_error);
        return -1;
    }
    if (p11psk_frame_finish(req) == 0) {
        p11psk_frame_cleanse(req);
        P11PSK_RAISE(pc, P11PSK_R_INTERNAL, "%s request too large", p11psk_op_str(op));
        return -1;
    }
    if (pc->pool == NULL || (pcn = pool_get(pc->pool)) == NULL) {
        p11psk_frame_cleanse(req);
        P11PSK_RAISE(pc, P11PSK_R_INTERNAL, "out of memory for a connection to p11pskd");
        return -1;
    }

    /* No lock held: this connection is ours alone until pool_put. */
    reused = pcn->conn.fd >= 0;
    pcn->conn.spin_us = pool_spin_us(pc->pool);
    t0 = p11psk_mono_us();
    rc = p11psk_conn_call(&pcn->conn, req, pcn->resp, &m, &err);
    if (rc == P11PSK_CALL_OK && reused && !pcn->conn.reopened)
        pool_observe(pc->pool, p11psk_mono_us() - t0);
    if (pcn->conn.reopened)
        p11psk_debug("%s: pooled connection to %s was stale (p11pskd restarted?), reopened",
                     p11psk_op_str(op), pcn->conn.path);
    /* The daemon's users, or where the connect or the I/O failed; nothing secret. */
    if (rc == P11PSK_CALL_PEER)
        p11psk_conn_strerror(&pcn->conn, rc, err, why, sizeof(why));
    else if (rc != P11PSK_CALL_OK)
        p11psk_conn_where(&pcn->conn, err, why, sizeof(why));
    if (rc == P11PSK_CALL_OK)
        st = m.code;
    if (st == P11PSK_ST_OK) {
        const p11psk_field *f = &m.f[outtag];

        if (f->present && f->len == outlen) {
            memcpy(out, f->p, outlen);
            ok = 1;
        } else {
            bad_out = 1;
        }
    } else if (rc == P11PSK_CALL_OK) {
        /* Error answers carry text for the operator, never key bytes. */
        p11psk_msg_str(&m, P11PSK_T_MSG, msg, sizeof(msg));
        has_ckr = p11psk_msg_u32(&m, P11PSK_T_CKR, &ckr) == P11PSK_WIRE_OK;
    }
    OPENSSL_cleanse(&m, sizeof(m));
    pool_put(pc->pool, pcn);
    p11psk_frame_cleanse(req);

    if (ok) {
        p11psk_debug("%s: ok", p11psk_op_str(op));
        return 0;
    }
    switch (rc) {
    case P11PSK_CALL_OK:
        break;
    case P11PSK_CALL_PEER:
        P11PSK_RAISE(pc, P11PSK_R_UNTRUSTED_DAEMON,
                     "%s; set %s in the provider's openssl.cnf section if p11pskd runs as "
                     "another user",
                     why, P11PSK_CONF_DAEMON_USER);
        return -1;
    case P11PSK_CALL_UNREACHABLE:
        P11PSK_RAISE(pc, P11PSK_R_SERVICE_UNREACHABLE, "%s (%s = %d)", why, P11PSK_CONF_TIMEOUT,
                     pc->pool->timeout_ms);
        return -1;
    case P11PSK_CALL_TIMEOUT:
        P11PSK_RAISE(pc, P11PSK_R_SERVICE_TIMEOUT, "after %d ms at %s during %s (%s)",
                     pc->pool->timeout_ms, pc->pool->path, p11psk_op_str(op), P11PSK_CONF_TIMEOUT);
        return -1;
    case P11PSK_CALL_IO:
        P11PSK_RAISE(pc, P11PSK_R_CONNECTION_LOST, "%s during %s", why, p11psk_op_str(op));
        return -1;
    default:
        P11PSK_RAISE(pc, P11PSK_R_PROTOCOL_ERROR, "malformed answer to %s from %s",
                     p11psk_op_str(op), pc->pool->path);
        return -1;
    }
    if (bad_out) {
        P11PSK_RAISE(pc, P11PSK_R_PROTOCOL_ERROR, "answer to %s from %s lacks a %zu-byte result",
                     p11psk_op_str(op), pc->pool->path, outlen);
        return -1;
    }
    if (msg[0] == '\0' && has_ckr)
        snprintf(msg, sizeof(msg), "CKR 0x%08lx", (unsigned long)ckr);
    if (msg[0] == '\0')
        snprintf(msg, sizeof(msg), "%s: %s", p11psk_op_str(op), p11psk_status_str(st));
    P11PSK_RAISE(pc, status_reason(st), "%s", msg);
    return -1;
}
