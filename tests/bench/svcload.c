/*
 * Service load for p11psk-bench: N client threads, each on its own connection to p11pskd,
 * issue derivations back to back for a fixed time; every request's latency is recorded.
 * Keys are created in the token by the benchmark itself (keysvc's token layer).
 */
#include "bench.h"

#include <errno.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "p11psk/handle.h"
#include "p11psk/wire.h"
#include "token.h"

double bench_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- keys ---- */

int bench_keys_make(const char *conf, size_t n, const char *prefix, bench_keys *out)
{
    p11psk_token_params prm;
    p11psk_config cfg;
    p11psk_token *tok = NULL;
    p11psk_key *have = NULL;
    p11psk_err err;
    char err2[512], label[64];
    size_t nhave = 0, i;
    int ok = 0;

    memset(out, 0, sizeof(*out));
    if (!p11psk_config_load(p11psk_config_path(conf), &cfg, err2, sizeof(err2))) {
        fprintf(stderr, "p11psk-bench: %s\n", err2);
        return 0;
    }
    memset(&prm, 0, sizeof(prm));
    prm.module = cfg.module;
    prm.token_uri = cfg.token_uri;
    prm.pin_source = cfg.pin_source;
    prm.server_address = cfg.p11kit_server;
    prm.rw = 1;
    if (p11psk_token_open(&prm, &tok, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk-bench: %s\n", err.msg);
        goto out;
    }
    /* Reuse keys of earlier runs: creating 10,000 token objects takes a while. */
    if (p11psk_token_list(tok, NULL, &have, &nhave, &err) != P11PSK_ST_OK) {
        fprintf(stderr, "p11psk-bench: %s\n", err.msg);
        goto out;
    }
    out->handles = calloc(n, sizeof(*out->handles));
    if (out->handles == NULL)
        goto out;
    for (i = 0; i < n; i++) {
        p11psk_handle h;
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
        memset(&h, 0, sizeof(h));
        h.type = P11PSK_HT_PSK;
        h.idlen = (uint8_t)k.idlen;
        memcpy(h.id, k.id, k.idlen);
        if (!p11psk_handle_encode(&h, out->handles[i].b, P11PSK_HANDLE_LEN))
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
    p11psk_token_params prm;
    p11psk_config cfg;
    p11psk_token *tok = NULL;
    p11psk_key *have = NULL, k;
    p11psk_new_key nk;
    p11psk_handle h;
    p11psk_err err;
    char err2[512];
    size_t nhave = 0, i;
    uint8_t id[8];
    int ok = 0;

    if (!p11psk_config_load(p11psk_config_path(conf), &cfg, err2, sizeof(err2))) {
        fprintf(stderr, "p11psk-bench: %s\n", err2);
        return 0;
    }
    memset(&prm, 0, sizeof(prm));
    prm.module = cfg.module;
    prm.token_uri = cfg.token_uri;
    prm.pin_source = cfg.pin_source;
    prm.server_address = cfg.p11kit_server;
    prm.rw = 1;
    if (p11psk_token_open(&prm, &tok, &err) != P11PSK_ST_OK ||
        p11psk_token_list(tok, label, &have, &nhave, &err) != P11PSK_ST_OK) {
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
    memset(&h, 0, sizeof(h));
    h.type = P11PSK_HT_PSK;
    h.idlen = (uint8_t)k.idlen;
    memcpy(h.id, k.id, k.idlen);
    ok = p11psk_handle_encode(&h, handle, P11PSK_HANDLE_LEN);
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

/* ---- one client ---- */

typedef struct {
    const bench_svc_params *p;
    const bench_keys *keys;
    double stop_at;
    unsigned seed;
    float *lat_us; /* one per request */
    size_t nlat, caplat;
    unsigned long errors;
    char first_error[200];
} client;

static int io_all(int fd, uint8_t *p, size_t n, int writing)
{
    while (n > 0) {
        ssize_t r = writing ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, 0);

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0;
        p += r;
        n -= (size_t)r;
    }
    return 1;
}

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

static void *client_main(void *arg)
{
    client *c = arg;
    p11psk_frame *fr = calloc(1, sizeof(*fr));
    uint8_t *resp = malloc(P11PSK_WIRE_MAX), hdr[P11PSK_WIRE_HDR], seed[64], other[32];
    size_t len, body;
    int fd = svc_connect(c->p->socket);
    p11psk_msg m;

    memset(seed, 0x5a, sizeof(seed));
    memset(other, 0, sizeof(other));
    if (fd < 0 || fr == NULL || resp == NULL) {
        snprintf(c->first_error, sizeof(c->first_error), "cannot connect to %s: %s",
                 c->p->socket, strerror(errno));
        c->errors++;
        goto out;
    }
    double next = bench_now() + (c->p->rate > 0 ? (double)(c->seed % 1000) / 1000.0 *
                                                      (double)c->p->clients / c->p->rate
                                                : 0);

    while (bench_now() < c->stop_at) {
        const uint8_t *h = c->keys->handles[rand_r(&c->seed) % c->keys->n].b;
        double t0;

        if (c->p->rate > 0) { /* paced: each client sends at rate/clients per second */
            double wait = next - bench_now();

            if (wait > 0) {
                struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};

                nanosleep(&ts, NULL);
            }
            next += (double)c->p->clients / c->p->rate;
        }
        t0 = bench_now();

        if (c->p->op == BENCH_OP_PRF) {
            p11psk_frame_start(fr, P11PSK_OP_TLS12_PRF);
            p11psk_frame_add_u8(fr, P11PSK_T_DIGEST, P11PSK_MD_SHA256);
            p11psk_frame_add(fr, P11PSK_T_HANDLE, h, P11PSK_HANDLE_LEN);
            p11psk_frame_add(fr, P11PSK_T_OTHER, other, sizeof(other));
            p11psk_frame_add(fr, P11PSK_T_SEED, seed, sizeof(seed));
            p11psk_frame_add_u16(fr, P11PSK_T_OUTLEN, 48);
        } else {
            p11psk_frame_start(fr, P11PSK_OP_TLS13_EARLY);
            p11psk_frame_add_u8(fr, P11PSK_T_DIGEST, P11PSK_MD_SHA256);
            p11psk_frame_add(fr, P11PSK_T_HANDLE, h, P11PSK_HANDLE_LEN);
        }
        len = p11psk_frame_finish(fr);
        if (len == 0 || !io_all(fd, fr->buf, len, 1) || !io_all(fd, hdr, sizeof(hdr), 0) ||
            p11psk_wire_header(hdr, &body) != P11PSK_WIRE_OK || !io_all(fd, resp, body, 0) ||
            p11psk_msg_parse(resp, body, &m) != P11PSK_WIRE_OK) {
            snprintf(c->first_error, sizeof(c->first_error), "connection to p11pskd lost");
            c->errors++;
            break;
        }
        if (m.code != P11PSK_ST_OK) {
            if (c->errors++ == 0)
                p11psk_msg_str(&m, P11PSK_T_MSG, c->first_error, sizeof(c->first_error));
            continue;
        }
        if (c->nlat == c->caplat) {
            size_t cap = c->caplat ? c->caplat * 2 : 65536;
            float *nl = realloc(c->lat_us, cap * sizeof(*nl));

            if (nl == NULL)
                break;
            c->lat_us = nl;
            c->caplat = cap;
        }
        c->lat_us[c->nlat++] = (float)((bench_now() - t0) * 1e6);
    }
out:
    if (fd >= 0)
        close(fd);
    free(fr);
    free(resp);
    return NULL;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;

    return x < y ? -1 : x > y;
}

int bench_svc_run(const bench_svc_params *p, const bench_keys *keys, bench_svc_result *r)
{
    client *cl = calloc(p->clients, sizeof(*cl));
    pthread_t *th = calloc(p->clients, sizeof(*th));
    size_t i, total = 0, off = 0;
    float *all;
    double t0, t1;

    memset(r, 0, sizeof(*r));
    if (cl == NULL || th == NULL) {
        free(cl);
        free(th);
        return 0;
    }
    t0 = bench_now();
    for (i = 0; i < p->clients; i++) {
        cl[i].p = p;
        cl[i].keys = keys;
        cl[i].stop_at = t0 + p->seconds;
        cl[i].seed = (unsigned)(i * 7919 + 1);
        pthread_create(&th[i], NULL, client_main, &cl[i]);
    }
    for (i = 0; i < p->clients; i++)
        pthread_join(th[i], NULL);
    t1 = bench_now();
    for (i = 0; i < p->clients; i++) {
        total += cl[i].nlat;
        r->errors += cl[i].errors;
        if (cl[i].errors > 0 && r->first_error[0] == '\0')
            snprintf(r->first_error, sizeof(r->first_error), "%s", cl[i].first_error);
    }
    all = malloc((total ? total : 1) * sizeof(*all));
    for (i = 0; all != NULL && i < p->clients; i++) {
        memcpy(all + off, cl[i].lat_us, cl[i].nlat * sizeof(*all));
        off += cl[i].nlat;
    }
    if (all != NULL && total > 0) {
        qsort(all, total, sizeof(*all), cmp_float);
        r->p50_us = all[total / 2];
        r->p99_us = all[(size_t)((double)total * 0.99)];
        r->max_us = all[total - 1];
    }
    r->requests = total;
    r->per_s = (double)total / (t1 - t0);
    for (i = 0; i < p->clients; i++)
        free(cl[i].lat_us);
    free(all);
    free(cl);
    free(th);
    return 1;
}
