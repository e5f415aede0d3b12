#define _GNU_SOURCE /* accept4, struct ucred, pipe2, rwlock kinds */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "p11psk/handle.h"
#include "p11psk/wire.h"

/* ---- listening socket ---- */

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
            return 0;
        }
        *p = c;
        if (c == '\0')
            return 1;
    }
}

static int sockaddr_for(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa->sun_path))
        return 0;
    memcpy(sa->sun_path, path, strlen(path) + 1);
    return 1;
}

/* Removes path if it is a socket nobody answers on. Fails if a daemon is alive. */
static int clear_stale(const char *path, const struct sockaddr_un *sa, char *err, size_t errlen)
{
    struct stat st;
    int fd, rc;

    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 1 : (snprintf(err, errlen, "%s: %s", path, strerror(errno)), 0);
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "%s exists and is not a socket; remove it or change `socket =`",
                 path);
        return 0;
    }
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return 0;
    }
    rc = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
    close(fd);
    if (rc == 0 || errno == EAGAIN) {
        snprintf(err, errlen, "another p11pskd is serving %s; stop it first", path);
        return 0;
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        snprintf(err, errlen, "cannot remove stale socket %s: %s", path, strerror(errno));
        return 0;
    }
    return 1;
}

int p11psk_server_listen(const p11psk_config *cfg, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    char dir[108];
    mode_t old;
    int fd, rc;

    if (!sockaddr_for(cfg->socket, &sa)) {
        snprintf(err, errlen, "socket path %s is too long", cfg->socket);
        return -1;
    }
    snprintf(dir, sizeof(dir), "%s", cfg->socket);
    if (!mkdir_p(dirname(dir), err, errlen) || !clear_stale(cfg->socket, &sa, err, errlen))
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

/* ---- connections ---- */

#define CONN_GROUPS_MAX 64
#define ACCEPT_BURST 8 /* per wake-up, so that workers share new connections */
#define STOP_FLUSH_MS 1000

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
    p11psk_server_stats stats;
} server;

/* What one request did, for its response and its log line. */
typedef struct {
    int op;
    char ident[P11PSK_KEY_LABEL_MAX];
    p11psk_err err;
    int step;
    int close_after;
} outcome;

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long long now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static long usec_since(const struct timespec *t0)
{
    struct timespec t1;

    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) * 1000000L + (t1.tv_nsec - t0->tv_nsec) / 1000L;
}

/* Connection buffers carry (EC)DHE secrets and derived keys: their pages are locked in
 * RAM and left out of core dumps. */
static conn *conn_new(server *s)
{
    size_t len = (sizeof(conn) + 4095) & ~(size_t)4095;
    conn *c = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (c == MAP_FAILED)
        return NULL;
    madvise(c, len, MADV_DONTDUMP);
    if (mlock(c, len) != 0 && atomic_exchange(&s->lock_warned, 1) == 0)
        p11psk_log(P11PSK_LOG_WARN,
                   "cannot lock connection buffers in memory (%s); raise LimitMEMLOCK / "
                   "RLIMIT_MEMLOCK so that secrets cannot be swapped out",
                   strerror(errno));
    c->fd = -1;
    return c; /* mmap gives zeroed pages */
}

static void conn_free(conn *c)
{
    size_t len = (sizeof(conn) + 4095) & ~(size_t)4095;

    if (c->fd >= 0)
        close(c->fd);
    OPENSSL_cleanse(c->in, sizeof(c->in)); /* requests may carry (EC)DHE secrets */
    p11psk_frame_cleanse(&c->out);
    munlock(c, len);
    munmap(c, len);
}

/* ---- connection limits ---- */

/* Counts a new connection from uid; 0 (and *why) when a limit says no. */
static int peer_admit(server *s, uid_t uid, char *why, size_t whylen)
{
    peer_count *p = NULL, *np;
    size_t i;
    int ok = 0;

    pthread_mutex_lock(&s->peerlock);
    for (i = 0; i < s->npeers; i++)
        if (s->peers[i].uid == uid)
            p = &s->peers[i];
    if (s->nconns >= s->cfg->max_connections) {
        snprintf(why, whylen, "%zu connections open (max-connections = %u in %s)", s->nconns,
                 s->cfg->max_connections, s->cfg->path);
    } else if (p != NULL && p->n >= s->cfg->max_connections_peer) {
        snprintf(why, whylen,
                 "uid %lu has %u connections open (max-connections-per-peer = %u in %s)",
                 (unsigned long)uid, p->n, s->cfg->max_connections_peer, s->cfg->path);
    } else if (p == NULL && (np = realloc(s->peers, (s->npeers + 1) * sizeof(*np))) == NULL) {
        snprintf(why, whylen, "out of memory");
    } else {
        if (p == NULL) {
            s->peers = np;
            p = &s->peers[s->npeers++];
            p->uid = uid;
            p->n = 0;
        }
        p->n++;
        s->nconns++;
        ok = 1;
    }
    pthread_mutex_unlock(&s->peerlock);
    return ok;
}

static void peer_release(server *s, uid_t uid)
{
    size_t i;

    pthread_mutex_lock(&s->peerlock);
    for (i = 0; i < s->npeers; i++) {
        if (s->peers[i].uid != uid)
            continue;
        if (--s->peers[i].n == 0)
            s->peers[i] = s->peers[--s->npeers];
        s->nconns--;
        break;
    }
    pthread_mutex_unlock(&s->peerlock);
}

static int fail(outcome *o, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(outcome *o, int status, const char *fmt, ...)
{
    va_list ap;

    o->err.status = status;
    o->err.ckr = CKR_OK;
    va_start(ap, fmt);
    vsnprintf(o->err.msg, sizeof(o->err.msg), fmt, ap);
    va_end(ap);
    if (status == P11PSK_ST_BAD_REQUEST)
        o->close_after = 1;
    return status;
}

/* The peer as the ACL sees it. */
static p11psk_acl_peer conn_peer(const conn *c)
{
    p11psk_acl_peer p = {c->cred.uid, c->cred.gid, c->groups, c->ngroups};

    return p;
}

static int field_eq(const p11psk_field *f, const char *s)
{
    return f->present && f->len == strlen(s) && memcmp(f->p, s, f->len) == 0;
}

/* Checks DIGEST and HANDLE, finds the key and applies the ACL. */
static int key_for(server *s, conn *c, const p11psk_msg *m, int want_type, p11psk_key *key, int *md,
                   outcome *o)
{
    const p11psk_field *hf = &m->f[P11PSK_T_HANDLE];
    p11psk_acl_peer peer;
    p11psk_handle h;
    uint8_t d;
    int rc, st;

    if (!p11psk_msg_u8(m, P11PSK_T_DIGEST, &d))
        return fail(o, P11PSK_ST_BAD_REQUEST, "missing or malformed DIGEST field");
    if (!hf->present)
        return fail(o, P11PSK_ST_BAD_REQUEST, "missing HANDLE field");
    if (p11psk_md_size(d) == 0)
        return fail(o, P11PSK_ST_UNSUPPORTED, "digest id %u not supported (SHA256 or SHA384)", d);
    if (!p11psk_policy_digest_ok(&s->cfg->policy, d)) {
        char allowed[32];

        p11psk_policy_digests_str(&s->cfg->policy, allowed, sizeof(allowed));
        return fail(o, P11PSK_ST_POLICY, "%s is not in `digests = %s` (%s)", p11psk_md_name(d),
                    allowed, s->cfg->path);
    }
    *md = d;
    rc = p11psk_handle_decode(hf->p, hf->len, &h);
    if (rc != P11PSK_HANDLE_OK)
        return fail(o, P11PSK_ST_BAD_HANDLE, "%s", p11psk_handle_strerror(rc));
    p11psk_hex_encode(h.id, h.idlen, o->ident);
    if (h.type != want_type)
        return fail(o, P11PSK_ST_BAD_HANDLE, "expected a %s handle, got a %s handle",
                    want_type == P11PSK_HT_PSK ? "PSK" : "TLS 1.3 early-secret",
                    h.type == P11PSK_HT_PSK ? "PSK" : "TLS 1.3 early-secret");
    if (h.type == P11PSK_HT_TLS13_ES && h.digest != d)
        return fail(o, P11PSK_ST_BAD_HANDLE,
                    "early-secret handle is for %s but the request uses %s",
                    p11psk_md_name(h.digest), p11psk_md_name(d));
    st = p11psk_token_find_id(s->tok, h.id, h.idlen, key, &o->err);
    if (st != P11PSK_ST_OK)
        return st;
    snprintf(o->ident, sizeof(o->ident), "%s", key->label);
    peer = conn_peer(c);
    if (p11psk_acl_check(&s->cfg->acl, key->label, &peer) == NULL)
        return fail(
            o, P11PSK_ST_ACCESS_DENIED, "uid %lu gid %lu may not use '%s'; add an allow rule to %s",
            (unsigned long)c->cred.uid, (unsigned long)c->cred.gid, key->label, s->cfg->path);
    if (!s->cfg->policy.readable_keys)
        key->readable = 0; /* strict HSM mode: ladder step 3 never runs */
    return P11PSK_ST_OK;
}

static const char *const expand_labels[] = {"ext binder", "res binder", "c e traffic",
                                            "e exp master"};

/* Runs one key operation, looking the key up again once if its object handle went stale. */
typedef int (*key_op)(server *s, const p11psk_msg *m, const p11psk_key *key, int md,
                      p11psk_frame *resp, outcome *o);

static int with_key(server *s, conn *c, const p11psk_msg *m, int want_type, key_op fn,
                    p11psk_frame *resp, outcome *o)
{
    p11psk_key key;
    int attempt, st, md = 0;

    for (attempt = 0;; attempt++) {
        st = key_for(s, c, m, want_type, &key, &md, o);
        if (st != P11PSK_ST_OK)
            return st;
        st = fn(s, m, &key, md, resp, o);
        if (st == P11PSK_ST_NEED_READABLE && !s->cfg->policy.readable_keys) {
            char why[sizeof(o->err.msg)];

            snprintf(why, sizeof(why), "%s", o->err.msg);
            fail(o, P11PSK_ST_POLICY, "readable-keys = no (%s) forbids reading key values: %s",
                 s->cfg->path, why);
            st = P11PSK_ST_POLICY;
        }
        if (st == P11PSK_ST_TOKEN && p11psk_ckr_stale_handle(o->err.ckr) && attempt == 0) {
            p11psk_token_forget(s->tok, key.id, key.idlen);
            continue;
        }
        OPENSSL_cleanse(&key, sizeof(key));
        return st;
    }
}

static int do_early(server *s, const p11psk_msg *m, const p11psk_key *key, int md,
                    p11psk_frame *resp, outcome *o)
{
    uint8_t es[48], hb[P11PSK_HANDLE_MAX];
    p11psk_handle h;
    int st;

    /* Computing the ES here proves the key is usable before the handshake goes on. */
    st = p11psk_ladder_tls13_early(s->lad, s->tok, key, md, es, &o->step, &o->err);
    OPENSSL_cleanse(es, sizeof(es));
    if (st != P11PSK_ST_OK)
        return st;
    memset(&h, 0, sizeof(h));
    h.type = P11PSK_HT_TLS13_ES;
    h.digest = (uint8_t)md;
    h.idlen = (uint8_t)key->idlen;
    memcpy(h.id, key->id, key->idlen);
    if (!p11psk_handle_encode(&h, hb, p11psk_md_size(md)))
        return fail(o, P11PSK_ST_INTERNAL, "cannot encode early-secret handle");
    p11psk_frame_add(resp, P11PSK_T_HANDLE, hb, p11psk_md_size(md));
    return P11PSK_ST_OK;
}

static int do_expand(server *s, const p11psk_msg *m, const p11psk_key *key, int md,
                     p11psk_frame *resp, outcome *o)
{
    const p11psk_field *pf = &m->f[P11PSK_T_PREFIX], *lf = &m->f[P11PSK_T_LABEL],
                       *df = &m->f[P11PSK_T_DATA];
    uint8_t out[P11PSK_WIRE_OUT_MAX];
    uint16_t outlen = 0;
    int st;

    p11psk_msg_u16(m, P11PSK_T_OUTLEN, &outlen);
    st = p11psk_ladder_tls13_expand(s->lad, s->tok, key, md, pf->p, pf->len, lf->p, lf->len,
                                    df->present ? df->p : NULL, df->len, out, outlen, &o->step,
                                    &o->err);
    if (st == P11PSK_ST_OK)
        p11psk_frame_add(resp, P11PSK_T_OUT, out, outlen);
    OPENSSL_cleanse(out, sizeof(out));
    return st;
}

static int do_extract(server *s, const p11psk_msg *m, const p11psk_key *key, int md,
                      p11psk_frame *resp, outcome *o)
{
    const p11psk_field *pf = &m->f[P11PSK_T_PREFIX], *lf = &m->f[P11PSK_T_LABEL],
                       *kf = &m->f[P11PSK_T_IKM];
    uint8_t out[48];
    int st;

    st = p11psk_ladder_tls13_extract(s->lad, s->tok, key, md, pf->p, pf->len, lf->p, lf->len,
                                     kf->present ? kf->p : NULL, kf->len, out, &o->step, &o->err);
    if (st == P11PSK_ST_OK)
        p11psk_frame_add(resp, P11PSK_T_OUT, out, p11psk_md_size(md));
    OPENSSL_cleanse(out, sizeof(out));
    return st;
}

static int do_prf(server *s, const p11psk_msg *m, const p11psk_key *key, int md, p11psk_frame *resp,
                  outcome *o)
{
    const p11psk_field *of = &m->f[P11PSK_T_OTHER], *sf = &m->f[P11PSK_T_SEED];
    uint8_t out[P11PSK_WIRE_OUT_MAX];
    uint16_t outlen = 0;
    int st;

    p11psk_msg_u16(m, P11PSK_T_OUTLEN, &outlen);
    st = p11psk_ladder_tls12_prf(s->lad, s->tok, key, md, of->p, of->len, sf->p, sf->len, out,
                                 outlen, &o->step, &o->err);
    if (st == P11PSK_ST_OK)
        p11psk_frame_add(resp, P11PSK_T_OUT, out, outlen);
    OPENSSL_cleanse(out, sizeof(out));
    return st;
}

static int outlen_ok(const p11psk_msg *m, outcome *o)
{
    uint16_t n;

    if (!p11psk_msg_u16(m, P11PSK_T_OUTLEN, &n)) {
        fail(o, P11PSK_ST_BAD_REQUEST, "missing or malformed OUTLEN field");
        return 0;
    }
    if (n == 0 || n > P11PSK_WIRE_OUT_MAX) {
        fail(o, P11PSK_ST_BAD_REQUEST, "OUTLEN %u outside 1..%d", n, P11PSK_WIRE_OUT_MAX);
        return 0;
    }
    return 1;
}

static int need(const p11psk_msg *m, int tag, const char *name, outcome *o)
{
    if (m->f[tag].present)
        return 1;
    fail(o, P11PSK_ST_BAD_REQUEST, "missing %s field", name);
    return 0;
}

/* Status and admin permissions; root and p11pskd's own user hold both. */
static int may(server *s, const conn *c, int kind)
{
    p11psk_acl_peer peer = conn_peer(c);

    return c->cred.uid == 0 || c->cred.uid == geteuid() ||
           p11psk_acl_check_perm(&s->cfg->acl, kind, &peer);
}

static const char *const stat_ops[P11PSK_STAT_OPS] = {
    "ping",      "tls13-early", "tls13-expand", "tls13-extract",
    "tls12-prf", "status",      "flush",        "other"};

/* One "name value" line per metric; the CLI turns them into text, JSON or Prometheus. */
static int do_status(server *s, p11psk_frame *resp, outcome *o)
{
    char *txt = malloc(P11PSK_WIRE_MAX - 64), res[48];
    size_t cap = P11PSK_WIRE_MAX - 64, off = 0, i, j, k;
    p11psk_token_info ti;
    p11psk_cache_stats cs;
    struct timespec now;
    unsigned long n;

    if (txt == NULL)
        return fail(o, P11PSK_ST_INTERNAL, "out of memory");
#define ADD(...)                                                                                   \
    do {                                                                                           \
        int w_ = snprintf(txt + off, cap - off, __VA_ARGS__);                                      \
        if (w_ > 0 && (size_t)w_ < cap - off)                                                      \
            off += (size_t)w_;                                                                     \
    } while (0)
    clock_gettime(CLOCK_MONOTONIC, &now);
    p11psk_token_state(s->tok, &ti);
    p11psk_cache_get_stats(s->cache, &cs);
    ADD("version %s\n", P11PSK_VERSION);
    ADD("uptime_seconds %ld\n", (long)(now.tv_sec - s->started.tv_sec));
    ADD("token_label %s\n", ti.label);
    ADD("token_model %s\n", ti.model);
    ADD("token_module %s\n", p11psk_token_module(s->tok));
    ADD("token_available %d\n", ti.available);
    ADD("token_logged_in %d\n", ti.logged_in);
    ADD("token_sessions %zu\n", ti.sessions);
    ADD("token_recoveries %lu\n", ti.recoveries);
    if (!ti.available)
        ADD("token_fault %s\n", ti.down_why);
    ADD("threads %zu\n", s->nworkers);
    pthread_mutex_lock(&s->peerlock);
    ADD("connections_open %zu\n", s->nconns);
    pthread_mutex_unlock(&s->peerlock);
    ADD("connections_total %lu\n", atomic_load(&s->stats.connections));
    ADD("cache_enabled %d\n", cs.max_entries > 0);
    ADD("cache_entries %lu\n", cs.entries);
    ADD("cache_hits %lu\n", cs.hits);
    ADD("cache_misses %lu\n", cs.misses);
    ADD("cache_ttl_seconds %lu\n", cs.ttl_s);
    ADD("cache_size %lu\n", cs.max_entries);
    ADD("max_connections %u\n", s->cfg->max_connections);
    ADD("max_connections_per_peer %u\n", s->cfg->max_connections_peer);
    for (i = 0; i < P11PSK_STAT_OPS; i++)
        for (j = 0; j < P11PSK_ST_MAX_; j++) {
            if ((n = atomic_load(&s->stats.req[i][j])) == 0)
                continue;
            snprintf(res, sizeof(res), "%s", p11psk_status_str((int)j));
            for (k = 0; res[k] != '\0'; k++)
                if (res[k] == ' ')
                    res[k] = '-';
            ADD("requests{op=\"%s\",result=\"%s\"} %lu\n", stat_ops[i], res, n);
        }
#undef ADD
    p11psk_frame_add(resp, P11PSK_T_INFO, txt, off);
    free(txt);
    return P11PSK_ST_OK;
}

static int do_flush(server *s, const p11psk_msg *m, p11psk_frame *resp, outcome *o)
{
    const p11psk_field *hf = &m->f[P11PSK_T_HANDLE];
    p11psk_handle h;
    char msg[64];
    size_t n;
    int rc;

    if (!hf->present) {
        n = p11psk_cache_flush(s->cache, NULL, 0);
        snprintf(o->ident, sizeof(o->ident), "*");
    } else {
        if ((rc = p11psk_handle_decode(hf->p, hf->len, &h)) != P11PSK_HANDLE_OK)
            return fail(o, P11PSK_ST_BAD_HANDLE, "%s", p11psk_handle_strerror(rc));
        p11psk_hex_encode(h.id, h.idlen, o->ident);
        n = p11psk_cache_flush(s->cache, h.id, h.idlen);
        p11psk_token_forget(s->tok, h.id, h.idlen); /* the object may have changed too */
    }
    snprintf(msg, sizeof(msg), "flushed %zu", n);
    p11psk_frame_add_str(resp, P11PSK_T_INFO, msg);
    return P11PSK_ST_OK;
}

static int serve(server *s, conn *c, const p11psk_msg *m, p11psk_frame *resp, outcome *o)
{
    const p11psk_field *pf = &m->f[P11PSK_T_PREFIX], *lf = &m->f[P11PSK_T_LABEL];
    char label[64];
    size_t i;

    switch (m->code) {
    case P11PSK_OP_STATUS:
        if (!may(s, c, P11PSK_ACL_STATUS))
            return fail(o, P11PSK_ST_ACCESS_DENIED,
                        "uid %lu may not read the status; add allow-status uid=... to %s",
                        (unsigned long)c->cred.uid, s->cfg->path);
        return do_status(s, resp, o);
    case P11PSK_OP_FLUSH:
        if (!may(s, c, P11PSK_ACL_ADMIN))
            return fail(o, P11PSK_ST_ACCESS_DENIED,
                        "uid %lu may not flush the cache; add allow-admin uid=... to %s",
                        (unsigned long)c->cred.uid, s->cfg->path);
        return do_flush(s, m, resp, o);
    case P11PSK_OP_PING:
        p11psk_frame_add_str(resp, P11PSK_T_INFO, "p11pskd " P11PSK_VERSION);
        return P11PSK_ST_OK;
    case P11PSK_OP_TLS13_EARLY:
        return with_key(s, c, m, P11PSK_HT_PSK, do_early, resp, o);
    case P11PSK_OP_TLS13_EXPAND:
        if (!need(m, P11PSK_T_PREFIX, "PREFIX", o) || !need(m, P11PSK_T_LABEL, "LABEL", o) ||
            !outlen_ok(m, o))
            return o->err.status;
        if (!field_eq(pf, "tls13 "))
            return fail(o, P11PSK_ST_UNSUPPORTED, "only the \"tls13 \" label prefix is served");
        for (i = 0; i < sizeof(expand_labels) / sizeof(expand_labels[0]); i++)
            if (field_eq(lf, expand_labels[i]))
                break;
        if (i == sizeof(expand_labels) / sizeof(expand_labels[0])) {
            p11psk_msg_str(m, P11PSK_T_LABEL, label, sizeof(label));
            return fail(o, P11PSK_ST_UNSUPPORTED,
                        "label \"%s\" is not served from an early secret (allowed: ext binder, "
                        "res binder, c e traffic, e exp master)",
                        label);
        }
        return with_key(s, c, m, P11PSK_HT_TLS13_ES, do_expand, resp, o);
    case P11PSK_OP_TLS13_EXTRACT:
        if (!need(m, P11PSK_T_PREFIX, "PREFIX", o) || !need(m, P11PSK_T_LABEL, "LABEL", o))
            return o->err.status;
        if (!field_eq(pf, "tls13 ") || !field_eq(lf, "derived"))
            return fail(o, P11PSK_ST_UNSUPPORTED,
                        "only the \"tls13 \" prefix with label \"derived\" is served");
        if (m->f[P11PSK_T_IKM].present &&
            p11psk_handle_has_magic(m->f[P11PSK_T_IKM].p, m->f[P11PSK_T_IKM].len))
            return fail(o, P11PSK_ST_BAD_HANDLE,
                        "IKM carries the p11psk handle magic; a handle is never key material");
        /* psk_ke: no (EC)DHE input, so the handshake secret would be a PSK-equivalent
         * in the application. */
        if (!s->cfg->policy.allow_psk_ke &&
            (!m->f[P11PSK_T_IKM].present ||
             p11psk_all_zero(m->f[P11PSK_T_IKM].p, m->f[P11PSK_T_IKM].len)))
            return fail(o, P11PSK_ST_POLICY,
                        "TLS 1.3 psk_ke (PSK without (EC)DHE) is refused by allow-psk-ke = no "
                        "(%s); let the peers use psk_dhe_ke, or set allow-psk-ke = yes",
                        s->cfg->path);
        return with_key(s, c, m, P11PSK_HT_TLS13_ES, do_extract, resp, o);
    case P11PSK_OP_TLS12_PRF:
        if (!need(m, P11PSK_T_OTHER, "OTHER", o) || !need(m, P11PSK_T_SEED, "SEED", o) ||
            !outlen_ok(m, o))
            return o->err.status;
        return with_key(s, c, m, P11PSK_HT_PSK, do_prf, resp, o);
    }
    return fail(o, P11PSK_ST_BAD_REQUEST, "unknown operation 0x%02x", m->code);
}

/* The audit line: one per request, key=value words; result is one word and the reason
 * follows in parentheses. Never key bytes. */
static void log_outcome(const conn *c, const outcome *o, long us)
{
    int ok = o->err.status == P11PSK_ST_OK;
    char result[48];
    size_t i;

    snprintf(result, sizeof(result), "%s", p11psk_status_str(o->err.status));
    for (i = 0; result[i] != '\0'; i++)
        if (result[i] == ' ')
            result[i] = '-';

    p11psk_log(ok ? P11PSK_LOG_INFO : P11PSK_LOG_WARN,
               "pid=%ld uid=%lu gid=%lu exe=%s op=%s key=%s result=%s%s%s%s%s%s latency=%ldus",
               (long)c->cred.pid, (unsigned long)c->cred.uid, (unsigned long)c->cred.gid, c->exe,
               p11psk_op_str(o->op), o->ident[0] ? o->ident : "-", result, ok ? "" : " (",
               ok ? "" : o->err.msg, ok ? "" : ")", o->step ? " step=" : "",
               o->step ? p11psk_ladder_step_str(o->step) : "", us);
}

static void stats_count(server *s, int op, int st)
{
    int i;

    switch (op) {
    case P11PSK_OP_PING:
        i = P11PSK_STAT_PING;
        break;
    case P11PSK_OP_TLS13_EARLY:
        i = P11PSK_STAT_EARLY;
        break;
    case P11PSK_OP_TLS13_EXPAND:
        i = P11PSK_STAT_EXPAND;
        break;
    case P11PSK_OP_TLS13_EXTRACT:
        i = P11PSK_STAT_EXTRACT;
        break;
    case P11PSK_OP_TLS12_PRF:
        i = P11PSK_STAT_PRF;
        break;
    case P11PSK_OP_STATUS:
        i = P11PSK_STAT_STATUS;
        break;
    case P11PSK_OP_FLUSH:
        i = P11PSK_STAT_FLUSH;
        break;
    default:
        i = P11PSK_STAT_OTHER;
    }
    if (st >= 0 && st < P11PSK_ST_MAX_)
        atomic_fetch_add(&s->stats.req[i][st], 1);
}

/* Builds the response to the frame in c->in (header included, complete or rejected). */
static void respond(server *s, conn *c, int header_rc)
{
    struct timespec t0;
    p11psk_msg m;
    outcome o;
    int rc, st;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    memset(&o, 0, sizeof(o));
    o.op = -1;
    p11psk_frame_start(&c->out, P11PSK_ST_OK);
    if (header_rc != P11PSK_WIRE_OK) {
        st = fail(&o, P11PSK_ST_BAD_REQUEST, "bad frame header: %s",
                  p11psk_wire_strerror(header_rc));
    } else if ((rc = p11psk_msg_parse(c->in + P11PSK_WIRE_HDR, c->need - P11PSK_WIRE_HDR, &m)) !=
               P11PSK_WIRE_OK) {
        st = fail(&o, P11PSK_ST_BAD_REQUEST, "malformed request: %s", p11psk_wire_strerror(rc));
    } else if (o.op = m.code, !p11psk_ratelimit_take(
                                  &s->rate, s->cfg->policy.rate_limit, c->cred.uid,
                                  (uint64_t)t0.tv_sec * 1000000u + (uint64_t)t0.tv_nsec / 1000u)) {
        st = fail(&o, P11PSK_ST_POLICY,
                  "rate limit: uid %lu made more than %u requests per second (rate-limit in %s)",
                  (unsigned long)c->cred.uid, s->cfg->policy.rate_limit, s->cfg->path);
    } else {
        st = serve(s, c, &m, &c->out, &o);
    }
    o.err.status = st;
    if (st != P11PSK_ST_OK) {
        p11psk_frame_cleanse(&c->out); /* drop any partial success fields */
        p11psk_frame_start(&c->out, (uint8_t)st);
        if (st == P11PSK_ST_TOKEN && o.err.ckr != CKR_OK)
            p11psk_frame_add_u32(&c->out, P11PSK_T_CKR, (uint32_t)o.err.ckr);
        p11psk_frame_add_str(&c->out, P11PSK_T_MSG, o.err.msg);
    }
    c->outlen = p11psk_frame_finish(&c->out);
    c->outoff = 0;
    if (c->outlen == 0) { /* cannot happen with bounded fields; never hang the peer */
        p11psk_frame_start(&c->out, P11PSK_ST_INTERNAL);
        c->outlen = p11psk_frame_finish(&c->out);
        o.close_after = 1;
    }
    c->closing = o.close_after;
    stats_count(s, o.op, st);
    if (header_rc != P11PSK_WIRE_OK || c->need > c->inlen) { /* bad header: closing */
        OPENSSL_cleanse(c->in, sizeof(c->in));
        c->inlen = 0;
    } else { /* keep what followed the frame (a client that did not wait for the answer) */
        memmove(c->in, c->in + c->need, c->inlen - c->need);
        OPENSSL_cleanse(c->in + (c->inlen - c->need), c->need);
        c->inlen -= c->need;
    }
    c->need = 0;
    log_outcome(c, &o, usec_since(&t0));
}

/* Returns 0 to keep the connection, -1 to drop it. */
static int conn_flush(conn *c)
{
    while (c->outoff < c->outlen) {
        ssize_t w = send(c->fd, c->out.buf + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);

        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (w <= 0)
            return -1;
        c->outoff += (size_t)w;
    }
    p11psk_frame_cleanse(&c->out);
    c->outlen = c->outoff = 0;
    c->deadline_ms = 0;
    return c->closing ? -1 : 0;
}

static void respond_locked(server *s, conn *c, int header_rc)
{
    pthread_rwlock_rdlock(&s->cfglock);
    respond(s, c, header_rc);
    pthread_rwlock_unlock(&s->cfglock);
}

/* Answers the frame buffered in c->in if it is complete, then sends the answer. Requests
 * are answered one at a time: a second frame waits until the first answer is out. */
static int conn_process(server *s, conn *c)
{
    size_t bodylen = 0;
    int rc;

    while (c->outlen == 0 && c->inlen > 0) {
        if (c->need == 0) {
            if (c->inlen < P11PSK_WIRE_HDR)
                break;
            rc = p11psk_wire_header(c->in, &bodylen);
            if (rc != P11PSK_WIRE_OK) {
                respond_locked(s, c, rc);
                break;
            }
            c->need = P11PSK_WIRE_HDR + bodylen;
        }
        if (c->inlen < c->need)
            break;
        respond_locked(s, c, P11PSK_WIRE_OK);
        if (conn_flush(c) < 0)
            return -1;
    }
    if (c->outlen > 0) /* the answer must be read in time, or the connection goes */
        c->deadline_ms = now_ms() + s->cfg->request_timeout_ms;
    else if (c->inlen > 0 && c->deadline_ms == 0) /* a request has started */
        c->deadline_ms = now_ms() + s->cfg->request_timeout_ms;
    return c->outlen > 0 ? conn_flush(c) : 0;
}

/* One recv for whatever has arrived (usually a whole request), then process it. */
static int conn_read(server *s, conn *c)
{
    ssize_t r;

    if (c->outlen > 0)
        return 0; /* no new request before the last answer is out */
    for (;;) {
        r = recv(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (r <= 0)
            return -1; /* EOF or error: the peer is gone */
        break;
    }
    c->inlen += (size_t)r;
    return conn_process(s, c);
}

/* Supplementary groups and executable: for group rules and the audit log. */
static void peer_details(conn *c)
{
    socklen_t len = sizeof(c->groups);
    char path[64];
    ssize_t n;

    if (getsockopt(c->fd, SOL_SOCKET, SO_PEERGROUPS, c->groups, &len) == 0)
        c->ngroups = len / sizeof(gid_t);
    else
        c->ngroups = 0; /* more than CONN_GROUPS_MAX: only the primary group counts */
    snprintf(path, sizeof(path), "/proc/%ld/exe", (long)c->cred.pid);
    n = readlink(path, c->exe, sizeof(c->exe) - 1);
    if (n <= 0)
        snprintf(c->exe, sizeof(c->exe), "?");
    else
        c->exe[n] = '\0';
    for (n = 0; c->exe[n] != '\0'; n++) /* one word in the log line */
        if (c->exe[n] == ' ' || (unsigned char)c->exe[n] < 0x20)
            c->exe[n] = '_';
}

/* At most one line per second for refused connections (a flood would fill the log); the
 * line says how many were not logged. */
static void refuse_log(const struct ucred *cr, const char *why)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static long long last_ms;
    static unsigned long quiet;
    long long now = now_ms();
    unsigned long n = 0;
    int log = 0;

    pthread_mutex_lock(&lock);
    if (now - last_ms >= 1000) {
        log = 1;
        n = quiet;
        quiet = 0;
        last_ms = now;
    } else {
        quiet++;
    }
    pthread_mutex_unlock(&lock);
    if (log)
        p11psk_log(P11PSK_LOG_WARN,
                   "pid=%ld uid=%lu gid=%lu connection refused: %s (%lu more refused since the "
                   "last such line)",
                   (long)cr->pid, (unsigned long)cr->uid, (unsigned long)cr->gid, why, n);
}

/* A refused peer gets one answer frame (its first request reads it) and a closed socket. */
static void refuse(int fd, const struct ucred *cr, const char *why)
{
    p11psk_frame f;
    size_t n;

    p11psk_frame_start(&f, P11PSK_ST_POLICY);
    p11psk_frame_add_str(&f, P11PSK_T_MSG, why);
    if ((n = p11psk_frame_finish(&f)) > 0 && send(fd, f.buf, n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        /* the peer is gone already */
    }
    refuse_log(cr, why);
    close(fd);
}

/* Which events a connection waits for: its answer to go out, or a request. */
static void conn_watch(worker *w, conn *c, int op)
{
    struct epoll_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.events = c->outlen > 0 ? EPOLLOUT : EPOLLIN;
    ev.data.ptr = c;
    c->watching = ev.events;
    epoll_ctl(w->ep, op, c->fd, &ev);
}

static void accept_some(worker *w)
{
    server *s = w->s;
    char why[200];
    socklen_t len;
    struct ucred cr;
    int i, fd;
    conn *c;

    for (i = 0; i < ACCEPT_BURST; i++) {
        fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                p11psk_log(P11PSK_LOG_ERROR, "accept: %s", strerror(errno));
            return;
        }
        /* Credentials first: every decision about this peer rests on them. */
        len = sizeof(cr);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0) {
            p11psk_log(P11PSK_LOG_ERROR, "SO_PEERCRED: %s", strerror(errno));
            close(fd);
            continue;
        }
        pthread_rwlock_rdlock(&s->cfglock);
        if (!peer_admit(s, cr.uid, why, sizeof(why))) {
            pthread_rwlock_unlock(&s->cfglock);
            refuse(fd, &cr, why);
            continue;
        }
        pthread_rwlock_unlock(&s->cfglock);
        if ((c = conn_new(s)) == NULL) {
            peer_release(s, cr.uid);
            refuse(fd, &cr, "out of memory");
            continue;
        }
        c->fd = fd;
        c->cred = cr;
        peer_details(c);
        atomic_fetch_add(&s->stats.connections, 1);
        c->idx = w->nconns;
        w->conns[w->nconns++] = c;
        conn_watch(w, c, EPOLL_CTL_ADD);
    }
}

static void worker_drop(worker *w, conn *c)
{
    size_t i = c->idx;

    epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
    peer_release(w->s, c->cred.uid);
    w->conns[i] = w->conns[--w->nconns];
    w->conns[i]->idx = i;
    conn_free(c);
}

/* On stop: answer what has fully arrived, flush answers for a bounded time, close all. */
static void worker_finish(worker *w)
{
    long long end = now_ms() + STOP_FLUSH_MS;
    struct pollfd p;

    while (w->nconns > 0) {
        conn *c = w->conns[w->nconns - 1];
        int drop = c->outlen > 0 ? conn_flush(c) < 0 : conn_read(w->s, c) < 0;

        while (!drop && c->outlen > 0 && now_ms() < end) {
            p.fd = c->fd;
            p.events = POLLOUT;
            if (poll(&p, 1, (int)(end - now_ms())) <= 0)
                break;
            drop = conn_flush(c) < 0;
        }
        worker_drop(w, c);
    }
}

/* Drops connections whose started request or pending answer is overdue; returns the
 * next deadline (0: none). */
static long long worker_deadlines(worker *w, long long now)
{
    long long next = 0;
    size_t i;

    for (i = w->nconns; i-- > 0;) {
        conn *c = w->conns[i];

        if (c->deadline_ms == 0)
            continue;
        if (c->deadline_ms <= now) {
            p11psk_log(P11PSK_LOG_WARN,
                       "pid=%ld uid=%lu gid=%lu exe=%s dropped: %s not done within "
                       "request-timeout-ms = %u",
                       (long)c->cred.pid, (unsigned long)c->cred.uid, (unsigned long)c->cred.gid,
                       c->exe, c->outlen > 0 ? "answer not read" : "request",
                       w->s->cfg->request_timeout_ms);
            worker_drop(w, c);
        } else if (next == 0 || c->deadline_ms < next) {
            next = c->deadline_ms;
        }
    }
    return next;
}

#define EVENTS_MAX 64

static void *worker_main(void *arg)
{
    worker *w = arg;
    server *s = w->s;
    struct epoll_event ev[EVENTS_MAX], lev;
    long long now, next = 0, last_work_us = 0;
    int i, n, timeout;

    /* The listening socket is shared: EPOLLEXCLUSIVE wakes one worker per connection. */
    memset(&lev, 0, sizeof(lev));
    lev.events = EPOLLIN | EPOLLEXCLUSIVE;
    lev.data.ptr = &s->lfd;
    epoll_ctl(w->ep, EPOLL_CTL_ADD, s->lfd, &lev);
    lev.events = EPOLLIN;
    lev.data.ptr = &s->wake[0];
    epoll_ctl(w->ep, EPOLL_CTL_ADD, s->wake[0], &lev);
    while (!atomic_load(&s->stopping)) {
        now = now_ms();
        timeout = next == 0 ? -1 : next <= now ? 0 : (int)(next - now);
        /* busy-poll-us: right after work, poll without sleeping for a while. A sleeping
         * thread is slow to wake on some VMs, and handshakes ask again within ~100 us. */
        if (s->cfg->busy_poll_us > 0 && now_us() - last_work_us < (long long)s->cfg->busy_poll_us)
            timeout = 0;
        n = epoll_wait(w->ep, ev, EVENTS_MAX, timeout);
        if (n > 0)
            last_work_us = now_us();
        if (n < 0 && errno != EINTR) {
            p11psk_log(P11PSK_LOG_ERROR, "epoll_wait: %s", strerror(errno));
            break;
        }
        for (i = 0; i < n; i++) {
            conn *c;
            int drop;

            if (ev[i].data.ptr == &s->wake[0])
                goto stop;
            if (ev[i].data.ptr == &s->lfd) {
                accept_some(w);
                continue;
            }
            c = ev[i].data.ptr;
            if (ev[i].events & EPOLLERR)
                drop = 1;
            else if (c->outlen > 0)
                drop = conn_flush(c) < 0 || (c->outlen == 0 && conn_process(s, c) < 0);
            else
                drop = conn_read(s, c) < 0;
            if (drop) {
                worker_drop(w, c);
                continue;
            }
            if (c->outlen == 0 && c->inlen == 0)
                c->deadline_ms = 0; /* idle: persistent connections may stay */
            if ((c->outlen > 0 ? EPOLLOUT : EPOLLIN) != c->watching)
                conn_watch(w, c, EPOLL_CTL_MOD);
        }
        next = worker_deadlines(w, now_ms());
    }
stop:
    worker_finish(w);
    return NULL;
}

/* ---- reload ---- */

static int same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static p11psk_reload_hook reload_hook;

void p11psk_server_set_reload_hook(p11psk_reload_hook hook)
{
    reload_hook = hook;
}

/* SIGHUP: a new ACL, policy, log level and limits, without dropping connections. What needs
 * a restart (module, token, PIN source, socket, threads) is kept, with a warning. */
static void server_reload(server *s)
{
    p11psk_config nc, *cur = s->cfg;
    p11psk_acl old;
    char err[600];

    if (reload_hook != NULL)
        reload_hook(0, NULL);
    if (!p11psk_config_load(cur->path, &nc, err, sizeof(err))) {
        p11psk_log(P11PSK_LOG_ERROR, "reload refused, keeping the running configuration: %s", err);
        if (reload_hook != NULL)
            reload_hook(1, err);
        return;
    }
    if (!same_str(nc.module, cur->module) || !same_str(nc.token_uri, cur->token_uri) ||
        !same_str(nc.p11kit_server, cur->p11kit_server) ||
        !same_str(nc.pin_source, cur->pin_source) || !same_str(nc.socket, cur->socket) ||
        nc.socket_mode != cur->socket_mode || nc.has_socket_group != cur->has_socket_group ||
        nc.socket_gid != cur->socket_gid || nc.threads != cur->threads || nc.cache != cur->cache ||
        nc.cache_ttl_s != cur->cache_ttl_s || nc.cache_size != cur->cache_size)
        p11psk_log(P11PSK_LOG_WARN,
                   "reload: module, token, pin-source, socket*, threads and cache* changes take "
                   "effect only after a restart of p11pskd");
    pthread_rwlock_wrlock(&s->cfglock);
    old = cur->acl;
    cur->acl = nc.acl;
    nc.acl = old; /* freed with nc below */
    cur->policy = nc.policy;
    cur->log_level = nc.log_level;
    cur->max_connections = nc.max_connections;
    cur->max_connections_peer = nc.max_connections_peer;
    cur->request_timeout_ms = nc.request_timeout_ms;
    cur->busy_poll_us = nc.busy_poll_us;
    p11psk_log_set_level(nc.log_level);
    pthread_rwlock_unlock(&s->cfglock);
    p11psk_log(P11PSK_LOG_INFO, "reloaded %s: %zu allow rules, log-level %s", cur->path, cur->acl.n,
               p11psk_log_level_name(cur->log_level));
    if (cur->acl.n == 0)
        p11psk_log(P11PSK_LOG_WARN, "no allow rules in %s: every key request will be refused",
                   cur->path);
    p11psk_config_free(&nc);
    if (reload_hook != NULL)
        reload_hook(1, NULL);
}

/* ---- run ---- */

static unsigned default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    return n < 1 ? 1 : n > 16 ? 16 : (unsigned)n;
}

unsigned p11psk_server_threads(const p11psk_config *cfg)
{
    return cfg->threads > 0 ? cfg->threads : default_threads();
}

int p11psk_server_run(p11psk_config *cfg, p11psk_token *tok, p11psk_ladder *lad,
                      p11psk_cache *cache, int listen_fd)
{
    static server s; /* large: keep it off the stack */
    sigset_t sigs;
    size_t i, started = 0;
    int sig = 0, rc = 0;

    memset(&s, 0, sizeof(s));
    s.cfg = cfg;
    s.tok = tok;
    s.lad = lad;
    s.cache = cache;
    s.lfd = listen_fd;
    clock_gettime(CLOCK_MONOTONIC, &s.started);
    p11psk_ratelimit_init(&s.rate);
    pthread_mutex_init(&s.peerlock, NULL);
    {
        pthread_rwlockattr_t ra;

        /* A reload must not wait behind a steady stream of requests. */
        pthread_rwlockattr_init(&ra);
        pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
        pthread_rwlock_init(&s.cfglock, &ra);
        pthread_rwlockattr_destroy(&ra);
    }
    if (pipe2(s.wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        p11psk_log(P11PSK_LOG_ERROR, "pipe: %s", strerror(errno));
        return -1;
    }
    /* Signals go to this thread only, through sigwait; workers inherit the mask. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    s.nworkers = p11psk_server_threads(cfg);
    s.workers = calloc(s.nworkers, sizeof(*s.workers));
    for (i = 0; s.workers != NULL && i < s.nworkers; i++) {
        worker *w = &s.workers[i];

        w->s = &s;
        w->conns = calloc(cfg->max_connections, sizeof(*w->conns));
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        if (w->conns == NULL || w->ep < 0 || pthread_create(&w->th, NULL, worker_main, w) != 0)
            break;
        started++;
    }
    if (started < s.nworkers) {
        p11psk_log(P11PSK_LOG_ERROR, "cannot start %zu worker threads", s.nworkers);
        rc = -1;
    } else {
        p11psk_log(P11PSK_LOG_INFO, "serving with %zu worker threads", s.nworkers);
    }
    while (rc == 0) {
        if (sigwait(&sigs, &sig) != 0)
            continue;
        if (sig != SIGHUP)
            break;
        server_reload(&s);
    }
    atomic_store(&s.stopping, 1);
    if (write(s.wake[1], "x", 1) < 0) {
        /* cannot happen on a fresh non-full pipe */
    }
    for (i = 0; i < started; i++)
        pthread_join(s.workers[i].th, NULL);
    for (i = 0; s.workers != NULL && i < s.nworkers; i++) {
        free(s.workers[i].conns);
        if (s.workers[i].ep > 0)
            close(s.workers[i].ep);
    }
    free(s.workers);
    free(s.peers);
    close(s.wake[0]);
    close(s.wake[1]);
    p11psk_ratelimit_destroy(&s.rate);
    pthread_rwlock_destroy(&s.cfglock);
    pthread_mutex_destroy(&s.peerlock);
    if (sig != 0 && sig != SIGHUP)
        p11psk_log(P11PSK_LOG_INFO, "stopping on signal %d", sig);
    return rc;
}
