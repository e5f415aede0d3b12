/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The handshake part of p11psk-bench: in-process handshakes with raw keys against the same
 * with a handle on one side, in interleaved rounds (round r runs both modes, the order
 * alternating), so that machine noise hits both alike and each round gives its own ratio.
 * In the same run it counts p11pskd's requests during the handle rounds and times a bare
 * round trip (PING), the floor the added time per handshake is judged against.
 */
#include <openssl/crypto.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "hs.h"

/*
 * raw:    both sides in a library context with the default provider only (before p11psk);
 * handle: the client in the configured context with a handle, the server raw as before;
 * prov:   the client in the configured context with the raw key: what the provider's
 *         delegation costs a side without any round trip (a diagnostic, not a target).
 */
enum { M_RAW, M_HANDLE, M_PROV, M_N };
static const char *const mode_name[M_N] = {"raw", "handle", "prov"};

#define THREADS_MAX 2
#define HANDLE_SIDES 1       /* the client holds the handle, the server the raw key */
#define PINGS_PER_ROUND 1000 /* about 20 ms on a quiet machine */
#define TARGET_FACTOR 1.5    /* added time may be 1.5 x the bare round trips it needs */

static const struct {
    const char *name; /* in the table */
    const char *key;  /* in the BENCH lines */
    int tls13;
    const char *cipher;
} suites[] = {
    {"TLS1.3 X25519+PSK", "tls13-x25519-psk_dhe_ke", 1, "TLS_AES_128_GCM_SHA256"},
    {"TLS1.2 ECDHE-PSK", "tls12-ecdhe-psk", 0, "ECDHE-PSK-AES128-CBC-SHA256"},
    {"TLS1.2 PSK", "tls12-psk", 0, "PSK-AES128-GCM-SHA256"},
};
#define NSUITES (sizeof(suites) / sizeof(suites[0]))

typedef struct {
    int threads;
    double raw, handle;      /* handshakes/s, medians over rounds */
    double prov;             /* raw key through the provider, handshakes/s, median */
    double prov_us;          /* (1/prov - 1/raw) x threads, median over rounds */
    double rmin, rmed, rmax; /* per-round handle/raw */
    double rt_per_side;      /* p11pskd requests per handshake per handle side */
    double added_us;         /* per handshake side, median over rounds */
    double rtt_us;           /* one PING, median */
} row;

typedef struct {
    p11psk_hs *hs;
    double stop_at;
    unsigned long ok, failed;
    char err[200];
} runner;

static void *run_main(void *arg)
{
    runner *r = arg;

    while (bench_now() < r->stop_at) {
        if (p11psk_hs_run(r->hs, r->err, sizeof(r->err)))
            r->ok++;
        else
            r->failed++;
    }
    return NULL;
}

/* Handshakes for `seconds` on `threads` threads; returns the time taken, *ok and *failed. */
static double slice(p11psk_hs *hs, int threads, double seconds, unsigned long *ok,
                    unsigned long *failed, char *err, size_t errcap)
{
    runner r[THREADS_MAX];
    pthread_t th[THREADS_MAX];
    double t0 = bench_now();
    int i, started = 0;

    memset(r, 0, sizeof(r));
    *ok = *failed = 0;
    for (i = 0; i < threads; i++) {
        r[i].hs = hs;
        r[i].stop_at = t0 + seconds;
        if (pthread_create(&th[i], NULL, run_main, &r[i]) != 0) {
            snprintf(err, errcap, "cannot start a handshake thread");
            (*failed)++;
            break;
        }
        started++;
    }
    for (i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
        *ok += r[i].ok;
        *failed += r[i].failed;
        if (r[i].failed > 0)
            snprintf(err, errcap, "%s", r[i].err);
    }
    return bench_now() - t0;
}

/* All rounds of one suite and thread count. Returns 0 (having said why) on any failure. */
static int measure(const bench_hs_params *p, const char *suite, p11psk_hs *hs[M_N], int threads,
                   row *out)
{
    size_t nr = (size_t)p->rounds, nping = 0;
    double *rate = calloc(nr * M_N, sizeof(double)), *ratio = calloc(nr, sizeof(double));
    double *added = calloc(nr, sizeof(double)), *provus = calloc(nr, sizeof(double));
    double *ping = calloc(nr * PINGS_PER_ROUND, sizeof(double));
    double *rraw = rate, *rhandle = rate + nr, *rprov = rate + 2 * nr,
           warm = p->seconds / 4 < 0.2 ? p->seconds / 4 : 0.2;
    unsigned long long reqs = 0, handled = 0, d0 = 0, d1 = 0;
    unsigned long n, failed;
    char err[256] = "";
    size_t r;
    int k, m, ok = rate && ratio && added && provus && ping;

    /* Warm-up, not measured: p11pskd's key cache, the provider's connection, CPU clocks. */
    for (m = 0; ok && m < M_N; m++)
        slice(hs[m], threads, warm, &n, &failed, err, sizeof(err));
    for (r = 0; ok && r < nr; r++) {
        for (k = 0; ok && k < M_N; k++) {
            double secs;

            m = (int)((r + (size_t)k) % M_N); /* each round starts with the next mode */
            if (m == M_HANDLE && !bench_derivations(p->socket, &d0, err, sizeof(err))) {
                ok = 0;
                break;
            }
            secs = slice(hs[m], threads, p->seconds, &n, &failed, err, sizeof(err));
            if (failed > 0 || n == 0) {
                if (n == 0 && failed == 0)
                    snprintf(err, sizeof(err), "no handshake finished in %.2f s", secs);
                fprintf(stderr,
                        "p11psk-bench: %s, %d thread(s), %s: %lu of %lu handshakes failed: %s\n",
                        suite, threads, mode_name[m], failed, n + failed, err);
                err[0] = '\0'; /* said */
                ok = 0;
                break;
            }
            if (m == M_HANDLE) {
                if (!bench_derivations(p->socket, &d1, err, sizeof(err))) {
                    ok = 0;
                    break;
                }
                reqs += d1 - d0;
                handled += n;
            }
            rate[(size_t)m * nr + r] = (double)n / secs;
        }
        if (!ok)
            break;
        ratio[r] = rhandle[r] / rraw[r];
        added[r] = (1 / rhandle[r] - 1 / rraw[r]) * threads / HANDLE_SIDES * 1e6;
        provus[r] = (1 / rprov[r] - 1 / rraw[r]) * threads / HANDLE_SIDES * 1e6;
        /* Every round, so the floor sees the same machine as that round's handshakes. */
        if (!bench_ping_us(p->socket, PINGS_PER_ROUND, ping + nping, err, sizeof(err)))
            ok = 0;
        nping += PINGS_PER_ROUND;
    }
    if (!ok && err[0] != '\0')
        fprintf(stderr, "p11psk-bench: %s, %d thread(s): %s\n", suite, threads, err);
    if (ok) {
        out->threads = threads;
        out->raw = bench_median(rraw, nr);
        out->handle = bench_median(rhandle, nr);
        out->prov = bench_median(rprov, nr);
        out->prov_us = bench_median(provus, nr);
        out->rmin = bench_min(ratio, nr);
        out->rmed = bench_median(ratio, nr);
        out->rmax = bench_max(ratio, nr);
        out->rt_per_side = (double)reqs / ((double)handled * HANDLE_SIDES);
        out->added_us = bench_median(added, nr);
        out->rtt_us = bench_median(ping, nping);
    }
    free(rate);
    free(ratio);
    free(added);
    free(provus);
    free(ping);
    return ok;
}

static double target_us(const row *w)
{
    return TARGET_FACTOR * w->rt_per_side * w->rtt_us;
}

static void print_head(const bench_hs_params *p)
{
    printf("handshakes: client and server in one process (BIO pair). The server always holds\n"
           "the raw key in a library context without the provider (a raw-key peer). The client:\n"
           "raw = raw key, provider not loaded; handle = a handle through the provider;\n"
           "prov = the raw key through the provider (delegation alone, no round trip).\n"
           "%d rounds x %.1f s per mode, the order rotating by round; rates are medians.\n",
           p->rounds, p->seconds);
    if (p->rounds < 7)
        printf("NOTE: fewer than 7 rounds: a smoke run, not figures to decide on.\n");
    printf("  ratio     handle/raw per round: min, median, max\n"
           "  rt/side   p11pskd requests per handshake and handle side (its STATUS counters)\n"
           "  added us  (1/handle - 1/raw) x threads / handle sides, median over rounds\n"
           "  prov us   (1/prov - 1/raw) x threads: the provider's own cost, no p11pskd\n"
           "  rtt us    one PING round trip, single thread, median over the run\n"
           "  target    added us <= %.1f x rt/side x rtt us\n\n",
           TARGET_FACTOR);
    printf("%-17s %7s %9s %11s %9s %9s %9s %7s %9s %8s %7s %9s %6s\n", "suite", "threads",
           "raw hs/s", "handle hs/s", "ratio min", "ratio med", "ratio max", "rt/side", "added us",
           "prov us", "rtt us", "target us", "check");
}

static void print_row(const char *suite, const row *w)
{
    printf("%-17s %7d %9.0f %11.0f %9.3f %9.3f %9.3f %7.2f %9.1f %8.1f %7.1f %9.1f %6s\n", suite,
           w->threads, w->raw, w->handle, w->rmin, w->rmed, w->rmax, w->rt_per_side, w->added_us,
           w->prov_us, w->rtt_us, target_us(w), w->added_us <= target_us(w) ? "ok" : "MISS");
    fflush(stdout);
}

static void print_bench_line(const bench_hs_params *p, const char *key, const row *w)
{
    printf("BENCH suite=%s threads=%d raw=%.0f handle=%.0f ratio_min=%.3f ratio_med=%.3f "
           "ratio_max=%.3f rt_per_side=%.2f added_us=%.1f prov=%.0f prov_us=%.1f rtt_us=%.1f "
           "target_us=%.1f target=%s rounds=%d seconds=%.2f\n",
           key, w->threads, w->raw, w->handle, w->rmin, w->rmed, w->rmax, w->rt_per_side,
           w->added_us, w->prov, w->prov_us, w->rtt_us, target_us(w),
           w->added_us <= target_us(w) ? "ok" : "miss", p->rounds, p->seconds);
}

int bench_handshakes(const bench_hs_params *p)
{
    uint8_t raw[32], handle[P11PSK_HANDLE_LEN];
    OSSL_LIB_CTX *plain = OSSL_LIB_CTX_new();
    OSSL_PROVIDER *dflt = plain ? OSSL_PROVIDER_load(plain, "default") : NULL;
    row rows[NSUITES][THREADS_MAX];
    int done[NSUITES][THREADS_MAX];
    char err[256];
    size_t s;
    int threads, m, rc = 1;

    memset(done, 0, sizeof(done));
    if (dflt == NULL || !bench_key_known(p->conf, "bench-hs", raw, sizeof(raw), handle)) {
        fprintf(stderr, "p11psk-bench: handshake setup failed\n");
        rc = 0;
        goto out;
    }
    print_head(p);
    for (s = 0; s < NSUITES; s++) {
        p11psk_hs *hs[M_N] = {NULL};

        for (m = 0; m < M_N; m++) {
            p11psk_hs_config hc;

            memset(&hc, 0, sizeof(hc));
            hc.tls13 = suites[s].tls13;
            hc.cipher = suites[s].cipher;
            hc.libctx = m == M_RAW ? plain : NULL;
            hc.server_own_libctx = 1; /* the raw-key peer never sees the provider */
            hc.server_libctx = plain;
            snprintf(hc.identity, sizeof(hc.identity), "bench-hs");
            hc.client_psk_len = m == M_HANDLE ? sizeof(handle) : sizeof(raw);
            memcpy(hc.client_psk, m == M_HANDLE ? handle : raw, hc.client_psk_len);
            memcpy(hc.server_psk, raw, 32);
            hc.server_psk_len = 32;
            hs[m] = p11psk_hs_new(&hc, err, sizeof(err));
            OPENSSL_cleanse(&hc, sizeof(hc));
            if (hs[m] == NULL) {
                fprintf(stderr, "p11psk-bench: %s %s: %s\n", suites[s].name, mode_name[m], err);
                rc = 0;
            }
        }
        for (threads = 1; rc && threads <= THREADS_MAX; threads++) {
            if (!measure(p, suites[s].name, hs, threads, &rows[s][threads - 1])) {
                rc = 0;
                break;
            }
            done[s][threads - 1] = 1;
            print_row(suites[s].name, &rows[s][threads - 1]);
        }
        for (m = 0; m < M_N; m++)
            p11psk_hs_free(hs[m]);
    }
    printf("\n");
    for (s = 0; s < NSUITES; s++)
        for (threads = 1; threads <= THREADS_MAX; threads++)
            if (done[s][threads - 1])
                print_bench_line(p, suites[s].key, &rows[s][threads - 1]);
    fflush(stdout);
out:
    OPENSSL_cleanse(raw, sizeof(raw));
    OSSL_PROVIDER_unload(dflt);
    OSSL_LIB_CTX_free(plain);
    return rc;
}
