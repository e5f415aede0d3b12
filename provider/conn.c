/*
 * Connections to p11pskd, shared by every provider instance and thread, and the mapping of
 * daemon answers to OpenSSL errors.
 *
 * A small pool: a call takes an idle connection (or opens a new one), runs its request
 * without holding any lock and gives the connection back, so threads never share a
 * connection and never wait for each other's round trips. The lock only guards the lists
 * and is never held across I/O, which also keeps the fork handlers short.
 */
#include "prov.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "p11psk/client.h"

/* Idle connections kept per process; more concurrent calls open (and then close) extras. */
#define P11PSK_POOL_IDLE_MAX 8

typedef struct p11psk_pool_conn {
    struct p11psk_pool_conn *next, *prev; /* on the idle or the busy list */
    p11psk_conn conn;
    uint8_t resp[P11PSK_WIRE_MAX]; /* answers carry derived secrets: cleansed after each call */
} P11PSK_POOL_CONN;

static struct {
    pthread_mutex_t lock; /* guards everything below */
    int refs;
    char path[sizeof(((p11psk_conn *)0)->path)];
    int timeout_ms;
    pid_t pid; /* process the connections belong to */
    int nidle;
    P11PSK_POOL_CONN *idle;
    P11PSK_POOL_CONN *busy; /* checked out by a call; known so that a child can drop them */
} svc = {.lock = PTHREAD_MUTEX_INITIALIZER};

static pthread_once_t svc_atfork_once = PTHREAD_ONCE_INIT;

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

/* Unlinks the idle list; the caller frees it outside the lock. Lock held. */
static P11PSK_POOL_CONN *pool_take_idle(void)
{
    P11PSK_POOL_CONN *all = svc.idle;

    svc.idle = NULL;
    svc.nidle = 0;
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
 * Fork: no thread may hold the lock at the moment of fork, or the child would inherit it
 * locked forever. The child then drops every connection, idle or checked out by a thread
 * that does not exist in the child: they are the parent's conversations, and the parent
 * keeps its own descriptors (closing the child's copies sends nothing to the daemon).
 */
static void svc_atfork_prepare(void)
{
    pthread_mutex_lock(&svc.lock);
}

static void svc_atfork_parent(void)
{
    pthread_mutex_unlock(&svc.lock);
}

static void svc_atfork_child(void)
{
    P11PSK_POOL_CONN *busy = svc.busy, *idle = pool_take_idle();

    svc.busy = NULL;
    svc.pid = getpid();
    /* The forking thread took the lock in prepare; its copy in the child releases it. */
    pthread_mutex_unlock(&svc.lock);
    pool_free_list(idle);
    pool_free_list(busy);
}

static void svc_atfork_register(void)
{
    /* glibc unregisters these when the module is unloaded (dlclose). */
    pthread_atfork(svc_atfork_prepare, svc_atfork_parent, svc_atfork_child);
}

void p11psk_svc_ref(const char *path, int timeout_ms)
{
    pthread_once(&svc_atfork_once, svc_atfork_register);
    pthread_mutex_lock(&svc.lock);
    /* The first instance's configuration wins; later ones share its connections. */
    if (svc.refs++ == 0) {
        p11psk_conn c;

        p11psk_conn_init(&c, path, timeout_ms);
        memcpy(svc.path, c.path, sizeof(svc.path));
        svc.timeout_ms = c.timeout_ms;
        svc.pid = getpid();
    }
    pthread_mutex_unlock(&svc.lock);
}

void p11psk_svc_unref(void)
{
    P11PSK_POOL_CONN *all = NULL;

    pthread_mutex_lock(&svc.lock);
    if (svc.refs > 0 && --svc.refs == 0)
        all = pool_take_idle();
    pthread_mutex_unlock(&svc.lock);
    pool_free_list(all);
}

/* An idle connection, or a new unconnected one (p11psk_conn_call connects it). */
static P11PSK_POOL_CONN *pool_get(void)
{
    P11PSK_POOL_CONN *pcn, *stale = NULL;
    pid_t pid = getpid();

    pthread_mutex_lock(&svc.lock);
    /* Only after a fork that bypassed the handlers (a raw clone): drop the parent's pool. */
    if (svc.pid != pid) {
        stale = pool_take_idle();
        svc.pid = pid;
    }
    if ((pcn = svc.idle) != NULL) {
        list_unlink(&svc.idle, pcn);
        svc.nidle--;
        list_push(&svc.busy, pcn);
    }
    pthread_mutex_unlock(&svc.lock);
    pool_free_list(stale);
    if (pcn != NULL)
        return pcn;

    /* Allocated outside the lock: other threads keep taking and returning meanwhile. */
    if ((pcn = OPENSSL_zalloc(sizeof(*pcn))) == NULL)
        return NULL;
    pthread_mutex_lock(&svc.lock);
    p11psk_conn_init(&pcn->conn, svc.path, svc.timeout_ms);
    list_push(&svc.busy, pcn);
    pthread_mutex_unlock(&svc.lock);
    return pcn;
}

/*
 * Returns a connection after a call. Only a connection whose last call completed is kept:
 * one that failed (timeout included) was closed by p11psk_conn_call, so a late answer to
 * an abandoned request can never be read as the answer to the next one.
 */
static void pool_put(P11PSK_POOL_CONN *pcn)
{
    OPENSSL_cleanse(pcn->resp, sizeof(pcn->resp));
    pthread_mutex_lock(&svc.lock);
    list_unlink(&svc.busy, pcn);
    if (pcn->conn.fd >= 0 && svc.refs > 0 && svc.nidle < P11PSK_POOL_IDLE_MAX &&
        pcn->conn.pid == svc.pid) {
        list_push(&svc.idle, pcn);
        svc.nidle++;
        pcn = NULL;
    }
    pthread_mutex_unlock(&svc.lock);
    if (pcn != NULL)
        pool_conn_free(pcn);
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
    char path[sizeof(svc.path)], msg[512] = "", errbuf[128];
    int rc, err = 0, timeout_ms, ok = 0, bad_out = 0, has_ckr = 0, st = -1;
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
    if ((pcn = pool_get()) == NULL) {
        p11psk_frame_cleanse(req);
        P11PSK_RAISE(pc, P11PSK_R_INTERNAL, "out of memory for a connection to p11pskd");
        return -1;
    }

    /* No lock held: this connection is ours alone until pool_put. */
    rc = p11psk_conn_call(&pcn->conn, req, pcn->resp, &m, &err);
    memcpy(path, pcn->conn.path, sizeof(path));
    timeout_ms = pcn->conn.timeout_ms;
    if (pcn->conn.reopened)
        p11psk_debug("%s: pooled connection to %s was stale (p11pskd restarted?), reopened",
                     p11psk_op_str(op), path);
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
    pool_put(pcn);
    p11psk_frame_cleanse(req);
    /* strerror() may share one buffer between threads. */
    if (err != 0 && strerror_r(err, errbuf, sizeof(errbuf)) != 0)
        snprintf(errbuf, sizeof(errbuf), "errno %d", err);
    else if (err == 0)
        snprintf(errbuf, sizeof(errbuf), "%s", p11psk_call_strerror(rc));

    if (ok) {
        p11psk_debug("%s: ok", p11psk_op_str(op));
        return 0;
    }
    switch (rc) {
    case P11PSK_CALL_OK:
        break;
    case P11PSK_CALL_UNREACHABLE:
        P11PSK_RAISE(pc, P11PSK_R_SERVICE_UNREACHABLE, "at %s: %s", path, errbuf);
        return -1;
    case P11PSK_CALL_TIMEOUT:
        P11PSK_RAISE(pc, P11PSK_R_SERVICE_TIMEOUT, "after %d ms at %s during %s (%s)", timeout_ms,
                     path, p11psk_op_str(op), P11PSK_CONF_TIMEOUT);
        return -1;
    case P11PSK_CALL_IO:
        P11PSK_RAISE(pc, P11PSK_R_CONNECTION_LOST, "at %s during %s: %s", path, p11psk_op_str(op),
                     errbuf);
        return -1;
    default:
        P11PSK_RAISE(pc, P11PSK_R_PROTOCOL_ERROR, "malformed answer to %s from %s",
                     p11psk_op_str(op), path);
        return -1;
    }
    if (bad_out) {
        P11PSK_RAISE(pc, P11PSK_R_PROTOCOL_ERROR, "answer to %s from %s lacks a %zu-byte result",
                     p11psk_op_str(op), path, outlen);
        return -1;
    }
    if (msg[0] == '\0' && has_ckr)
        snprintf(msg, sizeof(msg), "CKR 0x%08lx", (unsigned long)ckr);
    if (msg[0] == '\0')
        snprintf(msg, sizeof(msg), "%s: %s", p11psk_op_str(op), p11psk_status_str(st));
    P11PSK_RAISE(pc, status_reason(st), "%s", msg);
    return -1;
}
