#define _GNU_SOURCE /* accept4, struct ucred, ppoll */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

typedef struct {
    int fd;
    struct ucred cred;
    gid_t groups[CONN_GROUPS_MAX]; /* supplementary groups (SO_PEERGROUPS) */
    size_t ngroups;
    char exe[256]; /* /proc/PID/exe at connect time, for the audit log */
    uint8_t in[P11PSK_WIRE_HDR + P11PSK_WIRE_MAX];
    size_t inlen;
    size_t need; /* whole frame size once the header is in, else 0 */
    p11psk_frame out;
    size_t outlen, outoff;
    int closing; /* close once the response is flushed */
} conn;

typedef struct {
    const p11psk_config *cfg;
    p11psk_token *tok;
    p11psk_ladder *lad;
    conn *conns[P11PSK_SERVER_MAX_CONNS];
    size_t nconns;
    p11psk_ratelimit rate;
    int lock_warned;
} server;

/* What one request did, for its response and its log line. */
typedef struct {
    int op;
    char ident[P11PSK_KEY_LABEL_MAX];
    p11psk_err err;
    int step;
    int close_after;
} outcome;

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig)
{
    stop_signal = sig;
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
    if (mlock(c, len) != 0 && !s->lock_warned) {
        s->lock_warned = 1;
        p11psk_log(P11PSK_LOG_WARN,
                   "cannot lock connection buffers in memory (%s); raise LimitMEMLOCK / "
                   "RLIMIT_MEMLOCK so that secrets cannot be swapped out",
                   strerror(errno));
    }
    return c; /* mmap gives zeroed pages */
}

static void conn_free(conn *c)
{
    size_t len = (sizeof(conn) + 4095) & ~(size_t)4095;

    close(c->fd);
    OPENSSL_cleanse(c->in, sizeof(c->in)); /* requests may carry (EC)DHE secrets */
    p11psk_frame_cleanse(&c->out);
    munlock(c, len);
    munmap(c, len);
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

static int all_zero(const uint8_t *p, size_t n)
{
    uint8_t acc = 0;

    while (n-- > 0)
        acc |= *p++;
    return acc == 0;
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
    peer.uid = c->cred.uid;
    peer.gid = c->cred.gid;
    peer.groups = c->groups;
    peer.ngroups = c->ngroups;
    if (p11psk_acl_check(&s->cfg->acl, key->label, &peer) == NULL)
        return fail(o, P11PSK_ST_ACCESS_DENIED,
                    "uid %lu gid %lu may not use '%s'; add an allow rule to %s",
                    (unsigned long)c->cred.uid, (unsigned long)c->cred.gid, key->label,
                    s->cfg->path);
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

static int serve(server *s, conn *c, const p11psk_msg *m, p11psk_frame *resp, outcome *o)
{
    const p11psk_field *pf = &m->f[P11PSK_T_PREFIX], *lf = &m->f[P11PSK_T_LABEL];
    char label[64];
    size_t i;

    switch (m->code) {
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
            (!m->f[P11PSK_T_IKM].present || all_zero(m->f[P11PSK_T_IKM].p, m->f[P11PSK_T_IKM].len)))
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
               "pid=%ld uid=%lu gid=%lu exe=%s op=%s key=%s result=%s%s%s%s%s latency=%ldus",
               (long)c->cred.pid, (unsigned long)c->cred.uid, (unsigned long)c->cred.gid, c->exe,
               p11psk_op_str(o->op), o->ident[0] ? o->ident : "-", result,
               ok ? "" : " (", ok ? "" : o->err.msg, ok ? "" : ")",
               o->step ? (o->step == P11PSK_STEP_TOKEN ? " step=token" : " step=value") : "", us);
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
    } else if (o.op = m.code,
               !p11psk_ratelimit_take(&s->rate, s->cfg->policy.rate_limit, c->cred.uid,
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
    OPENSSL_cleanse(c->in, c->need > 0 ? c->need : sizeof(c->in));
    c->inlen = 0;
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
    return c->closing ? -1 : 0;
}

static int conn_read(server *s, conn *c)
{
    size_t want, bodylen = 0;
    ssize_t r;
    int rc;

    while (c->outlen == 0) {
        want = c->need == 0 ? P11PSK_WIRE_HDR - c->inlen : c->need - c->inlen;
        r = recv(c->fd, c->in + c->inlen, want, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (r <= 0)
            return -1; /* EOF or error: the peer is gone */
        c->inlen += (size_t)r;
        if (c->need == 0 && c->inlen == P11PSK_WIRE_HDR) {
            rc = p11psk_wire_header(c->in, &bodylen);
            if (rc != P11PSK_WIRE_OK) {
                respond(s, c, rc);
                break;
            }
            c->need = P11PSK_WIRE_HDR + bodylen;
        }
        if (c->need != 0 && c->inlen == c->need) {
            respond(s, c, P11PSK_WIRE_OK);
            break;
        }
    }
    return conn_flush(c);
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
    for (n = 0; c->exe[n] != '\0'; n++) /* one token in the log line */
        if (c->exe[n] == ' ' || (unsigned char)c->exe[n] < 0x20)
            c->exe[n] = '_';
}

static void accept_all(server *s, int lfd)
{
    socklen_t len;
    conn *c;
    int fd;

    for (;;) {
        fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
                p11psk_log(P11PSK_LOG_ERROR, "accept: %s", strerror(errno));
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return;
        }
        if (s->nconns == P11PSK_SERVER_MAX_CONNS) {
            p11psk_log(P11PSK_LOG_WARN, "refusing connection: %d connections open",
                       P11PSK_SERVER_MAX_CONNS);
            close(fd);
            continue;
        }
        if ((c = conn_new(s)) == NULL) {
            p11psk_log(P11PSK_LOG_ERROR, "refusing connection: out of memory");
            close(fd);
            continue;
        }
        c->fd = fd;
        len = sizeof(c->cred);
        /* Credentials first: every decision about this peer rests on them. */
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c->cred, &len) != 0) {
            p11psk_log(P11PSK_LOG_ERROR, "SO_PEERCRED: %s", strerror(errno));
            conn_free(c);
            continue;
        }
        peer_details(c);
        s->conns[s->nconns++] = c;
    }
}

int p11psk_server_run(const p11psk_config *cfg, p11psk_token *tok, p11psk_ladder *lad,
                      int listen_fd)
{
    static server s; /* large: keep it off the stack */
    struct pollfd pfd[P11PSK_SERVER_MAX_CONNS + 1];
    struct sigaction sa;
    sigset_t block, waitmask;
    size_t i, n;
    int rc = 0;

    memset(&s, 0, sizeof(s));
    p11psk_ratelimit_init(&s.rate);
    s.cfg = cfg;
    s.tok = tok;
    s.lad = lad;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* Signals only arrive inside ppoll, so a stop request is never missed. */
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &waitmask);
    sigdelset(&waitmask, SIGTERM);
    sigdelset(&waitmask, SIGINT);

    while (!stop_signal) {
        pfd[0].fd = listen_fd;
        pfd[0].events = POLLIN;
        pfd[0].revents = 0;
        for (i = 0; i < s.nconns; i++) {
            pfd[i + 1].fd = s.conns[i]->fd;
            pfd[i + 1].events = s.conns[i]->outlen > 0 ? POLLOUT : POLLIN;
            pfd[i + 1].revents = 0;
        }
        n = s.nconns;
        if (ppoll(pfd, n + 1, NULL, &waitmask) < 0) {
            if (errno == EINTR)
                continue;
            p11psk_log(P11PSK_LOG_ERROR, "poll: %s", strerror(errno));
            rc = -1;
            break;
        }
        /* Walk backwards so dropping a connection (swap with the last) is safe. */
        for (i = n; i-- > 0;) {
            conn *c = s.conns[i];
            int drop = 0;

            if (pfd[i + 1].revents == 0)
                continue;
            if (pfd[i + 1].revents & (POLLERR | POLLNVAL))
                drop = 1;
            else if (c->outlen > 0)
                drop = conn_flush(c) < 0;
            else
                drop = conn_read(&s, c) < 0;
            if (drop) {
                conn_free(c);
                s.conns[i] = s.conns[--s.nconns];
            }
        }
        if (pfd[0].revents & POLLIN)
            accept_all(&s, listen_fd);
    }
    for (i = 0; i < s.nconns; i++)
        conn_free(s.conns[i]);
    s.nconns = 0;
    p11psk_ratelimit_destroy(&s.rate);
    sigprocmask(SIG_UNBLOCK, &block, NULL);
    if (stop_signal)
        p11psk_log(P11PSK_LOG_INFO, "stopping on signal %d", (int)stop_signal);
    return rc;
}
