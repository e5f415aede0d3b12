/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11psk-bench: what p11psk costs, measured in one run.
 *   handshakes  in-process TLS handshakes (bench_hs.c), raw keys against a handle on one
 *               side, in >= 7 interleaved rounds per mode; TLS 1.3 X25519+PSK (psk_dhe_ke),
 *               TLS 1.2 ECDHE-PSK and plain PSK; 1 and 2 threads. Ratios are per round, and
 *               the added time per handshake is set against p11pskd's request count and a
 *               bare round trip measured in the same run.
 *   service     N connections (1, 8, 64) issuing derivations against p11pskd with 1 key,
 *               back to back and paced at a given rate (latency below saturation).
 *   scaling     the same at 64 connections with many keys in the token (default 10,000;
 *               keys are kept in the token, so only the first run creates them).
 * Output: aligned tables, then one machine-readable line per row (BENCH ..., BENCH_SVC ...).
 * It needs a running p11pskd and the p11psk provider in OPENSSL_CONF (scripts/bench.sh
 * sets both up).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "config.h"

#define SCALE_MAX 4 /* key counts the scaling part takes */
#define SCALE_KEYS_MAX 100000
#define SVC_ROWS_MAX 32

typedef struct {
    const char *conf;
    const char *socket;
    double seconds;     /* handshakes: per mode per round */
    double svc_seconds; /* service: per measurement */
    int rounds;
    double rate;
    size_t load_threads;
    size_t scale[SCALE_MAX];
    size_t nscale;
    int make_keys; /* create missing scaling keys (slow) rather than skip the row */
} opts;

/* One service measurement, kept for the BENCH_SVC lines after the table. */
typedef struct {
    const char *part;
    size_t keys, clients;
    double offered; /* 0: back to back */
    bench_svc_result r;
} svc_row;

static svc_row svc_rows[SVC_ROWS_MAX];
static size_t nsvc_rows;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: p11psk-bench [options] [handshakes] [service] [scaling]\n"
            "\n"
            "Measures p11psk against raw keys in one run (default: all three parts).\n"
            "Needs a running p11pskd and OPENSSL_CONF loading the p11psk provider;\n"
            "scripts/bench.sh sets both up on a SoftHSM2 token.\n"
            "\n"
            "  -c, --config FILE     p11pskd.conf (default $P11PSK_CONF); keys are created there\n"
            "  -r, --rounds R        interleaved rounds per handshake mode (default 7; fewer\n"
            "                        only for a smoke run)\n"
            "  -s, --seconds S       handshake time per mode per round (default 2)\n"
            "  -S, --svc-seconds S   time per service measurement (default: --seconds)\n"
            "  -R, --rate N          also measure service latency at N derivations/s offered\n"
            "                        in total (default 20000; 0: only back to back)\n"
            "  -k, --scale-keys LIST key counts for the scaling part, comma separated\n"
            "                        (default 10000; rows whose keys are not in the token\n"
            "                        yet are skipped, see --make-keys)\n"
            "  -m, --make-keys       create the missing scaling keys (about 10 s per 1,000\n"
            "                        on SoftHSM2); they stay in the token for later runs\n"
            "  -T, --load-threads N  threads driving the service connections (default 2)\n"
            "  -h, --help            this help\n"
            "\n"
            "Prints tables, then one line per row: BENCH (handshakes), BENCH_SVC (service).\n");
}

static void svc_print(const svc_row *w)
{
    char load[32];

    snprintf(load, sizeof(load), w->offered > 0 ? "%.0f/s" : "max", w->offered);
    printf("%-8s %7zu %8zu %8s %12.0f %9.1f %9.1f %9.1f%s%s\n", w->part, w->keys, w->clients, load,
           w->r.per_s, w->r.p50_us, w->r.p99_us, w->r.max_us, w->r.errors ? "  errors: " : "",
           w->r.errors ? w->r.first_error : "");
    fflush(stdout);
}

static void svc_bench_line(const svc_row *w)
{
    printf("BENCH_SVC part=%s keys=%zu clients=%zu offered=%.0f per_s=%.0f p50_us=%.1f "
           "p99_us=%.1f max_us=%.1f requests=%zu errors=%lu\n",
           w->part, w->keys, w->clients, w->offered, w->r.per_s, w->r.p50_us, w->r.p99_us,
           w->r.max_us, w->r.requests, w->r.errors);
}

/* Measures and prints one row: back to back (rate 0) or paced. */
static int svc_measure(const char *part, const bench_keys *keys, bench_svc_params *p, double rate)
{
    svc_row w;

    memset(&w, 0, sizeof(w));
    p->rate = rate;
    if (!bench_svc_run(p, keys, &w.r))
        return 0;
    w.part = part;
    w.keys = keys->n;
    w.clients = p->clients;
    w.offered = rate;
    svc_print(&w);
    if (nsvc_rows < SVC_ROWS_MAX)
        svc_rows[nsvc_rows++] = w;
    return w.r.errors == 0;
}

static int run_service(const opts *o, const char *part, const size_t *nkeys, size_t nn,
                       const size_t *clients, size_t nc, int create)
{
    bench_svc_params p;
    bench_svc_result r;
    bench_keys keys;
    size_t i, j;
    int ok = 1;

    for (i = 0; i < nn; i++) {
        double t0 = bench_now();
        int have = bench_keys_make(o->conf, nkeys[i], "bench-", create, &keys);

        if (have == 0)
            return 0;
        if (have < 0) {
            printf("%-8s %7zu  skipped: %zu of the keys in the token; --make-keys creates "
                   "them once\n",
                   part, nkeys[i], keys.n);
            continue;
        }
        if (nkeys[i] > 1)
            fprintf(stderr, "p11psk-bench: %zu keys ready in %.1f s\n", nkeys[i], bench_now() - t0);
        for (j = 0; j < nc; j++) {
            memset(&p, 0, sizeof(p));
            p.socket = o->socket;
            p.clients = clients[j];
            p.op = BENCH_OP_EXPAND;
            p.threads = o->load_threads;
            /* Warm-up, not measured: every key once, as in steady operation, where the
             * keys in use are in p11pskd's caches. */
            p.seconds = 600;
            p.warm = 1;
            bench_svc_run(&p, &keys, &r);
            p.warm = 0;
            p.seconds = o->svc_seconds;
            ok = svc_measure(part, &keys, &p, 0) && ok;
            if (o->rate > 0) /* latency under a given load, below saturation */
                ok = svc_measure(part, &keys, &p, o->rate) && ok;
        }
        bench_keys_free(&keys);
    }
    return ok;
}

/* "1000,10000" -> scale[]. */
static int parse_scale(const char *s, opts *o)
{
    const char *p = s;

    o->nscale = 0;
    while (*p != '\0') {
        char *end;
        unsigned long v;

        errno = 0;
        v = strtoul(p, &end, 10);
        if (errno != 0 || end == p || v < 1 || v > SCALE_KEYS_MAX || o->nscale == SCALE_MAX ||
            (*end != ',' && *end != '\0'))
            return 0;
        o->scale[o->nscale++] = v;
        p = *end == ',' ? end + 1 : end;
    }
    return o->nscale > 0;
}

static int parse_seconds(const char *opt, const char *s, double *out)
{
    char *end;

    errno = 0;
    *out = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(*out > 0) || *out > 3600) {
        fprintf(stderr, "p11psk-bench: %s: expected seconds in (0, 3600]\n", opt);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"config", required_argument, NULL, 'c'},
        {"seconds", required_argument, NULL, 's'},
        {"svc-seconds", required_argument, NULL, 'S'},
        {"rounds", required_argument, NULL, 'r'},
        {"rate", required_argument, NULL, 'R'},
        {"scale-keys", required_argument, NULL, 'k'},
        {"load-threads", required_argument, NULL, 'T'},
        {"make-keys", no_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    static const size_t clients[] = {1, 8, 64}, one[] = {1};
    char err[512];
    p11psk_config cfg;
    bench_hs_params hp;
    opts o;
    size_t k;
    int c, i, parts = 0, hs = 0, svc = 0, sc = 0, ok = 1, svc_seconds_set = 0;

    memset(&o, 0, sizeof(o));
    o.seconds = 2;
    o.rounds = 7;
    o.rate = 20000;
    o.load_threads = 2;
    o.scale[0] = 10000;
    o.nscale = 1;
    while ((c = getopt_long(argc, argv, "c:s:S:r:R:k:T:mh", lo, NULL)) != -1) {
        switch (c) {
        case 'c':
            o.conf = optarg;
            break;
        case 's':
            if (!parse_seconds("--seconds", optarg, &o.seconds))
                return 2;
            break;
        case 'S':
            if (!parse_seconds("--svc-seconds", optarg, &o.svc_seconds))
                return 2;
            svc_seconds_set = 1;
            break;
        case 'r':
            o.rounds = atoi(optarg);
            if (o.rounds < 1 || o.rounds > 1000) {
                fprintf(stderr, "p11psk-bench: --rounds: expected 1..1000\n");
                return 2;
            }
            break;
        case 'R':
            o.rate = atof(optarg);
            if (o.rate < 0 || o.rate > 1e7) {
                fprintf(stderr, "p11psk-bench: --rate: expected 0..10000000\n");
                return 2;
            }
            break;
        case 'k':
            if (!parse_scale(optarg, &o)) {
                fprintf(stderr,
                        "p11psk-bench: --scale-keys: expected up to %d counts of "
                        "1..%d, comma separated\n",
                        SCALE_MAX, SCALE_KEYS_MAX);
                return 2;
            }
            break;
        case 'T':
            o.load_threads = (size_t)atoi(optarg) > 0 ? (size_t)atoi(optarg) : 1;
            break;
        case 'm':
            o.make_keys = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!svc_seconds_set)
        o.svc_seconds = o.seconds;
    for (i = optind; i < argc; i++, parts++) {
        if (strcmp(argv[i], "handshakes") == 0)
            hs = 1;
        else if (strcmp(argv[i], "service") == 0)
            svc = 1;
        else if (strcmp(argv[i], "scaling") == 0)
            sc = 1;
        else {
            fprintf(stderr, "p11psk-bench: unknown part '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (parts == 0)
        hs = svc = sc = 1;
    if (!p11psk_config_load(p11psk_config_path(o.conf), &cfg, err, sizeof(err))) {
        fprintf(stderr, "p11psk-bench: %s\n", err);
        return 1;
    }
    o.socket = cfg.socket;
    if (hs) {
        memset(&hp, 0, sizeof(hp));
        hp.conf = o.conf;
        hp.socket = o.socket;
        hp.seconds = o.seconds;
        hp.rounds = o.rounds;
        ok = bench_handshakes(&hp) && ok;
    }
    if (svc || sc) {
        printf("\nservice: derivations (TLS 1.3 binder key) on N connections to p11pskd, one\n"
               "request in flight each, %.1f s per row; offered max = back to back.\n\n",
               o.svc_seconds);
        printf("%-8s %7s %8s %8s %12s %9s %9s %9s\n", "part", "keys", "clients", "offered",
               "derivs/s", "p50 us", "p99 us", "max us");
    }
    if (svc)
        ok = run_service(&o, "service", one, 1, clients, 3, 1) && ok;
    if (sc)
        ok = run_service(&o, "scaling", o.scale, o.nscale, clients + 2, 1, o.make_keys) && ok;
    if (nsvc_rows > 0) {
        printf("\n");
        for (k = 0; k < nsvc_rows; k++)
            svc_bench_line(&svc_rows[k]);
    }
    fflush(stdout);
    p11psk_config_free(&cfg);
    return ok ? 0 : 1;
}
