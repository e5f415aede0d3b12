/* SPDX-License-Identifier: Apache-2.0 */
#define _GNU_SOURCE /* ppoll */
/*
 * Service load for p11psk-bench: N client threads, each on its own connection to p11pskd,
 * issue derivations back to back for a fixed time; every request's latency is recorded.
 * Keys are created in the token by the benchmark itself (keysvc's token layer).
 */
#include "bench.h"

#include <errno.h>
#include <openssl/rand.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "handlekey.h"
#include "p11psk/clock.h"
#include "p11psk/handle.h"
#include "p11psk/wire.h"
#include "token.h"

double bench_now(void)
{
    return (double)p11psk_mono_us() / 1e6;
}

/* ---- keys ---- */

/* The token of config conf, read/write. On failure says why and frees what it made. */
static int bench_token_open(const char *conf, p11psk_config *cfg, p11psk_token **tok)
{
    p11psk_token_params prm;
    p11psk_err err;
    char err2[512];

    *tok = NULL;
    if (!p11psk_config_load(p11psk_config_path(conf), cfg, err2, sizeof(err2))) {
        fprintf(stderr, "p11psk-bench: %s\n", err2);
        return 0;
    }
    p11psk_token_params_from_config(&prm, cfg);
    prm.rw = 1;
    if (p11psk_token_open(&prm, tok, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk-bench: %s\n", err.msg);
        p11psk_config_free(cfg);
        return 0;
    }
    return 1;
}

/* The PSK handle of key k, tagged with the token's handle key (created if missing). mk is
 * derived once per bench run: every run opens the same configured token. */
static int key_handle(p11psk_token *tok, const p11psk_key *k, uint8_t out[P11PSK_HANDLE_LEN])
{
    static p11psk_handlekey *hk;
    p11psk_err err;

    if (hk == NULL && (hk = p11psk_handlekey_new()) == NULL)
        return 0;
    if (!p11psk_handlekey_ready(hk) && p11psk_handlekey_load(hk, tok, 1, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk-bench: handle key: %s\n", err.msg);
        return 0;
    }
    return p11psk_handlekey_make(hk, k->id, k->idlen, out) == 0; /* 1: made */
}

int bench_keys_make(const char *conf, size_t n, const char *prefix, int create, bench_keys *out)
{
    p11psk_config cfg;
    p11psk_token *tok = NULL;
    p11psk_key *have = NULL;
    p11psk_err err;
    char label[64];
    size_t nhave = 0, i;
    int ok = 0;

    memset(out, 0, sizeof(*out));
    if (!bench_token_open(conf, &cfg, &tok))
        return 0;
    /* Reuse keys of earlier runs: creating 10,000 token objects takes a while. */
    if (p11psk_token_list(tok, NULL, &have, &nhave, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk-bench: %s\n", err.msg);
        goto out;
    }
    out->handles = calloc(n, sizeof(*out->handles));
    if (out->handles == NULL)
        goto out;
    if (!create) {
        size_t found = 0, j;

        for (j = 0; j < nhave; j++) { /* PREFIX and 6 digits below n */
            const char *d = have[j].label + strlen(prefix);

            found += strncmp(have[j].label, prefix, strlen(prefix)) == 0 && strlen(d) == 6 &&
                     strspn(d, "0123456789") == 6 && strtoul(d, NULL, 10) < n;
        }
        if (found < n) {
            free(out->handles);
            out->handles = NULL;
            out->n = found;
            ok = -1;
            goto out;
        }
    }
    for (i = 0; i < n; i++) {
        p11psk_key k;
        size_t j;
        int found = 0;

        snprintf(label, sizeof(label), "%s%06zu", prefix, i);
        for (j = 0; j < nhave && !found; j++)
            if (strcmp(have[j].label, label) == 0 && have[j].idlen <= P11PSK_ID_MAX) {
                k = have[j];
                found = 1;
            }
        if (!found) {
            p11psk_new_key nk;
            uint8_t id[8];

            memset(&nk, 0, sizeof(nk));
            RAND_bytes(id, sizeof(id));
            nk.label = label;
            nk.id = id;
            nk.idlen = sizeof(id);
            nk.value_len = 32;
            if (p11psk_token_create_key(tok, &nk, &k, &err) != P11PSK_ST_OK) {
                fprintf(stderr, "p11psk-bench: creating %s: %s\n", label, err.msg);
                goto out;
            }
        }
        if (!key_handle(tok, &k, out->handles[i].b))
            goto out;
        out->n++;
    }
    ok = 1;
out:
    free(have);
    p11psk_token_close(tok);
    p11psk_config_free(&cfg);
    return ok;
}

int bench_key_known(const char *conf, const char *label, uint8_t *value, size_t len,
                    uint8_t handle[P11PSK_HANDLE_LEN])
{
    p11psk_config cfg;
    p11psk_token *tok = NULL;
    p11psk_key *have = NULL, k;
    p11psk_new_key nk;
    p11psk_err err;
    size_t nhave = 0, i;
    uint8_t id[8];
    int ok = 0;

    if (!bench_token_open(conf, &cfg, &tok))
        return 0;
    if (p11psk_token_list(tok, label, &have, &nhave, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk-bench: %s\n", err.msg);
        goto out;
    }
    for (i = 0; i < nhave; i++) /* a fresh value each run: the old one is unknown */
        p11psk_token_destroy_key(tok, &have[i], &err);
    memset(&nk, 0, sizeof(nk));
    RAND_bytes(value, (int)len);
    RAND_bytes(id, sizeof(id));
    nk.label = label;
    nk.id = id;
    nk.idlen = sizeof(id);
    nk.value = value;
    nk.value_len = len;
    if (p11psk_token_create_key(tok, &nk, &k, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk-bench: creating %s: %s\n", label, err.msg);
        goto out;
    }
    ok = key_handle(tok, &k, handle);
out:
    free(have);
    p11psk_token_close(tok);
    p11psk_config_free(&cfg);
    return ok;
}

void bench_keys_free(bench_keys *k)
{
    free(k->handles);
    memset(k, 0, sizeof(*k));
}

/* ---- load threads ---- */

/* One connection of a load thread: at most one request in flight, as with the provider. */
typedef struct {
    int fd;
    int busy;
    double sent_at, next_at; /* next_at: paced send time */
    size_t got;              /* bytes of the answer read so far */
    uint8_t resp[P11PSK_WIRE_HDR + P11PSK_WIRE_MAX];
} lconn;

typedef struct {
    const bench_svc_params *p;
    const bench_keys *keys;
    double stop_at;
    unsigned seed;
    size_t nconn;
    size_t next_key, key_step; /* warm-up: keys in order */
    float *lat_us;             /* one per answered request */
    size_t nlat, caplat;
    unsigned long errors;
    char first_error[200];
} loader;

static int svc_connect(const char *path)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static int send_request(loader *l, lconn *c, p11psk_frame *fr)
{
    static const uint8_t seed[64] = {0x5a}, other[32] = {0};
    size_t k = l->p->warm ? l->next_key : rand_r(&l->seed) % l->keys->n;
    const uint8_t *h = l->keys->handles[k].b;
    size_t len;

    l->next_key += l->key_step;

    if (l->p->op == BENCH_OP_PRF) {
        p11psk_frame_start(fr, P11PSK_OP_TLS12_PRF);
        p11psk_frame_add_u8(fr, P11PSK_T_DIGEST, P11PSK_MD_SHA256);
        p11psk_frame_add(fr, P11PSK_T_HANDLE, h, P11PSK_HANDLE_LEN);
        p11psk_frame_add(fr, P11PSK_T_OTHER, other, sizeof(other));
        p11psk_frame_add(fr, P11PSK_T_SEED, seed, sizeof(seed));
        p11psk_frame_add_u16(fr, P11PSK_T_OUTLEN, 48);
    } else { /* the binder key of a TLS 1.3 handshake: an expand of the early secret, which
              * the provider asks for with the PSK handle */
        uint8_t hash[32] = {0};

        p11psk_frame_start(fr, P11PSK_OP_TLS13_EXPAND);
        p11psk_frame_add_u8(fr, P11PSK_T_DIGEST, P11PSK_MD_SHA256);
        p11psk_frame_add(fr, P11PSK_T_HANDLE, h, P11PSK_HANDLE_LEN);
        p11psk_frame_add(fr, P11PSK_T_PREFIX, "tls13 ", 6);
        p11psk_frame_add(fr, P11PSK_T_LABEL, "ext binder", 10);
        p11psk_frame_add(fr, P11PSK_T_DATA, hash, sizeof(hash));
        p11psk_frame_add_u16(fr, P11PSK_T_OUTLEN, 32);
    }
    len = p11psk_frame_finish(fr);
    c->sent_at = bench_now();
    /* Small frames on a unix socket go out whole or not at all. */
    if (len == 0 || send(c->fd, fr->buf, len, MSG_NOSIGNAL) != (ssize_t)len)
        return 0;
    c->busy = 1;
    c->got = 0;
    return 1;
}

static void record(loader *l, double us)
{
    if (l->nlat == l->caplat) {
        size_t cap = l->caplat ? l->caplat * 2 : 65536;
        float *nl = realloc(l->lat_us, cap * sizeof(*nl));

        if (nl == NULL)
            return;
        l->lat_us = nl;
        l->caplat = cap;
    }
    l->lat_us[l->nlat++] = (float)us;
}

/* Reads what has arrived; 1 when a whole answer is in (checked and recorded). */
static int read_answer(loader *l, lconn *c)
{
    size_t body = 0, want;
    p11psk_msg m;
    ssize_t r;

    want = c->got < P11PSK_WIRE_HDR ? P11PSK_WIRE_HDR - c->got : 0;
    if (want == 0) {
        if (p11psk_wire_header(c->resp, &body) != P11PSK_WIRE_OK)
            return -1;
        want = P11PSK_WIRE_HDR + body - c->got;
    }
    r = recv(c->fd, c->resp + c->got, want, MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (r <= 0)
        return -1;
    c->got += (size_t)r;
    if (c->got < P11PSK_WIRE_HDR)
        return 0;
    if (p11psk_wire_header(c->resp, &body) != P11PSK_WIRE_OK)
        return -1;
    if (c->got < P11PSK_WIRE_HDR + body)
        return 0;
    c->busy = 0;
    if (p11psk_msg_parse(c->resp + P11PSK_WIRE_HDR, body, &m) != P11PSK_WIRE_OK)
        return -1;
    if (m.code != P11PSK_ST_OK) {
        if (l->errors++ == 0)
            p11psk_msg_str(&m, P11PSK_T_MSG, l->first_error, sizeof(l->first_error));
        return 1;
    }
    record(l, (bench_now() - c->sent_at) * 1e6);
    return 1;
}

static void *loader_main(void *arg)
{
    loader *l = arg;
    lconn *cs = calloc(l->nconn, sizeof(*cs));
    p11psk_frame *fr = calloc(1, sizeof(*fr));
    struct pollfd *pf = calloc(l->nconn, sizeof(*pf));
    double interval = l->p->rate > 0 ? (double)l->p->clients / l->p->rate : 0, now;
    size_t i;

    if (cs == NULL || fr == NULL || pf == NULL)
        goto out;
    for (i = 0; i < l->nconn; i++) {
        if ((cs[i].fd = svc_connect(l->p->socket)) < 0) {
            snprintf(l->first_error, sizeof(l->first_error), "cannot connect to %s: %s",
                     l->p->socket, strerror(errno));
            l->errors++;
            l->nconn = i;
            goto out;
        }
        /* spread the paced connections over one interval */
        cs[i].next_at = bench_now() + interval * (double)(rand_r(&l->seed) % 1000) / 1000.0;
    }
    while ((now = bench_now()) < l->stop_at) {
        size_t busy = 0;

        for (i = 0; i < l->nconn; i++)
            busy += cs[i].busy;
        if (l->p->warm && l->next_key >= l->keys->n && busy == 0)
            break;
        double next = l->stop_at, wait;
        struct timespec ts;

        for (i = 0; i < l->nconn; i++) {
            lconn *c = &cs[i];

            if (l->p->warm && l->next_key >= l->keys->n) {
                /* warm-up done: no new requests */
            } else if (!c->busy && (interval == 0 || c->next_at <= now)) {
                if (!send_request(l, c, fr)) {
                    snprintf(l->first_error, sizeof(l->first_error), "send to p11pskd failed");
                    l->errors++;
                    goto out;
                }
                c->next_at += interval;
                if (c->next_at < now - 1) /* far behind: do not burst to catch up */
                    c->next_at = now;
            }
            if (!c->busy && interval > 0 && c->next_at < next)
                next = c->next_at;
            pf[i].fd = c->fd;
            pf[i].events = c->busy ? POLLIN : 0;
            pf[i].revents = 0;
        }
        /* Microsecond timeouts: millisecond ones would bunch paced requests into bursts. */
        wait = next - bench_now();
        wait = wait < 0 ? 0 : wait > 0.1 ? 0.1 : wait;
        ts.tv_sec = 0;
        ts.tv_nsec = (long)(wait * 1e9);
        if (ppoll(pf, l->nconn, &ts, NULL) < 0 && errno != EINTR)
            break;
        for (i = 0; i < l->nconn; i++)
            if ((pf[i].revents & (POLLIN | POLLHUP | POLLERR)) && read_answer(l, &cs[i]) < 0) {
                snprintf(l->first_error, sizeof(l->first_error), "connection to p11pskd lost");
                l->errors++;
                goto out;
            }
    }
out:
    for (i = 0; cs != NULL && i < l->nconn; i++)
        close(cs[i].fd);
    free(cs);
    free(fr);
    free(pf);
    return NULL;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;

    return x < y ? -1 : x > y;
}

int bench_svc_run(const bench_svc_params *p, const bench_keys *keys, bench_svc_result *r)
{
    size_t nthreads = p->clients < p->threads ? p->clients : p->threads, i, total = 0, off = 0;
    loader *ls = calloc(nthreads, sizeof(*ls));
    pthread_t *th = calloc(nthreads, sizeof(*th));
    float *all;
    double t0, t1;

    memset(r, 0, sizeof(*r));
    if (ls == NULL || th == NULL) {
        free(ls);
        free(th);
        return 0;
    }
    t0 = bench_now();
    for (i = 0; i < nthreads; i++) { /* connections split over the load threads */
        ls[i].p = p;
        ls[i].keys = keys;
        ls[i].stop_at = t0 + p->seconds;
        ls[i].seed = (unsigned)(i * 7919 + 1);
        ls[i].nconn = p->clients / nthreads + (i < p->clients % nthreads);
        ls[i].next_key = i;
        ls[i].key_step = nthreads;
        pthread_create(&th[i], NULL, loader_main, &ls[i]);
    }
    for (i = 0; i < nthreads; i++)
        pthread_join(th[i], NULL);
    t1 = bench_now();
    for (i = 0; i < nthreads; i++) {
        total += ls[i].nlat;
        r->errors += ls[i].errors;
        if (ls[i].errors > 0 && r->first_error[0] == '\0')
            snprintf(r->first_error, sizeof(r->first_error), "%s", ls[i].first_error);
    }
    all = malloc((total ? total : 1) * sizeof(*all));
    for (i = 0; all != NULL && i < nthreads; i++) {
        memcpy(all + off, ls[i].lat_us, ls[i].nlat * sizeof(*all));
        off += ls[i].nlat;
    }
    if (all != NULL && total > 0) {
        qsort(all, total, sizeof(*all), cmp_float);
        r->p50_us = all[total / 2];
        r->p99_us = all[(size_t)((double)total * 0.99)];
        r->max_us = all[total - 1];
    }
    r->requests = total;
    r->per_s = (double)total / (t1 - t0);
    for (i = 0; i < nthreads; i++)
        free(ls[i].lat_us);
    free(all);
    free(ls);
    free(th);
    return 1;
}
