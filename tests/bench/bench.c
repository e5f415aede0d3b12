/*
 * p11psk-bench: what p11psk costs, measured in one run.
 *   handshakes  in-process TLS handshakes (hs.c): raw keys on both sides, a handle on one
 *               side, handles on both; TLS 1.3 (X25519 + PSK), TLS 1.2 PSK-AES128-GCM-SHA256
 *               and ECDHE-PSK-AES128-CBC-SHA256; 1 and 2 threads. Modes are interleaved in
 *               short slices so that machine noise hits them alike; ratios are to raw.
 *   service     N clients (1, 8, 64) issuing derivations against p11pskd.
 *   scaling     the service load with 1, 1,000 and 10,000 keys in the token.
 * It needs a running p11pskd and the p11psk provider in OPENSSL_CONF (scripts/bench.sh
 * sets both up on a throwaway token).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "config.h"
#include "p11psk/client.h"

typedef struct {
    const char *conf;
    const char *socket;
    double seconds;
    int rounds;
    int json;
    double rate;
    size_t load_threads;
    int first_json;
} opts;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: p11psk-bench [options] [handshakes] [service] [scaling]\n"
            "\n"
            "Measures p11psk against raw keys in one run (default: all three parts).\n"
            "Needs a running p11pskd and OPENSSL_CONF loading the p11psk provider;\n"
            "scripts/bench.sh sets both up on a throwaway SoftHSM2 token.\n"
            "\n"
            "  -c, --config FILE   p11pskd.conf (default $P11PSK_CONF); keys are created there\n"
            "  -s, --seconds S     time per measurement (default 3)\n"
            "  -r, --rounds R      interleaved slices per handshake measurement (default 6)\n"
            "  -R, --rate N        also measure service latency at N derivations/s offered\n"
            "                      in total (default 20000; 0: only back to back)\n"
            "  -T, --load-threads N  threads driving the service connections (default 2)\n"
            "  -j, --json          one JSON object per line instead of tables\n"
            "  -h, --help          this help\n");
}

static void svc_line(const opts *o, const char *part, size_t keys, size_t clients, double rate,
                     const bench_svc_result *r)
{
    char load[32];

    snprintf(load, sizeof(load), rate > 0 ? "%.0f/s" : "max", rate);
    if (o->json) {
        printf("{\"part\":\"%s\",\"keys\":%zu,\"clients\":%zu,\"offered\":\"%s\","
               "\"derivations_per_s\":%.0f,"
               "\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,\"requests\":%zu,"
               "\"errors\":%lu}\n",
               part, keys, clients, load, r->per_s, r->p50_us, r->p99_us, r->max_us, r->requests,
               r->errors);
    } else {
        printf("%-8s %7zu %8zu %8s %12.0f %9.1f %9.1f %9.1f%s%s\n", part, keys, clients, load,
               r->per_s,
               r->p50_us, r->p99_us, r->max_us, r->errors ? "  errors: " : "",
               r->errors ? r->first_error : "");
    }
    fflush(stdout);
}

static int run_service(const opts *o, const char *part, const size_t *nkeys, size_t nn,
                       const size_t *clients, size_t nc)
{
    bench_svc_params p;
    bench_svc_result r;
    bench_keys keys;
    size_t i, j;

    if (!o->json)
        printf("\n%-8s %7s %8s %8s %12s %9s %9s %9s\n", part, "keys", "clients", "offered",
               "derivs/s",
               "p50 us", "p99 us", "max us");
    for (i = 0; i < nn; i++) {
        if (!bench_keys_make(o->conf, nkeys[i], "bench-", &keys))
            return 0;
        for (j = 0; j < nc; j++) {
            memset(&p, 0, sizeof(p));
            p.socket = o->socket;
            p.clients = clients[j];
            p.seconds = o->seconds;
            p.op = BENCH_OP_EXPAND;
            p.threads = o->load_threads;
            /* Warm-up, not measured: every key once, as in steady operation, where the
             * keys in use are in p11pskd's caches. */
            p.seconds = 600;
            p.warm = 1;
            bench_svc_run(&p, &keys, &r);
            p.warm = 0;
            p.seconds = o->seconds;
            if (!bench_svc_run(&p, &keys, &r)) {
                bench_keys_free(&keys);
                return 0;
            }
            svc_line(o, part, keys.n, clients[j], 0, &r);
            if (o->rate > 0) { /* latency under a given load, below saturation */
                p.rate = o->rate;
                if (!bench_svc_run(&p, &keys, &r)) {
                    bench_keys_free(&keys);
                    return 0;
                }
                svc_line(o, part, keys.n, clients[j], o->rate, &r);
            }
        }
        bench_keys_free(&keys);
    }
    return 1;
}

int bench_handshakes(const char *conf, double seconds, int rounds, int json);

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"config", required_argument, NULL, 'c'}, {"seconds", required_argument, NULL, 's'},
        {"rounds", required_argument, NULL, 'r'}, {"json", no_argument, NULL, 'j'},
        {"rate", required_argument, NULL, 'R'}, {"load-threads", required_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    static const size_t clients[] = {1, 8, 64}, one[] = {1}, scale[] = {1, 1000, 10000};
    char err[512];
    p11psk_config cfg;
    opts o;
    int c, i, parts = 0, hs = 0, svc = 0, sc = 0, ok = 1;

    memset(&o, 0, sizeof(o));
    o.seconds = 3;
    o.rounds = 6;
    o.rate = 20000;
    o.load_threads = 2;
    while ((c = getopt_long(argc, argv, "c:s:r:R:T:jh", lo, NULL)) != -1) {
        switch (c) {
        case 'R':
            o.rate = atof(optarg);
            break;
        case 'T':
            o.load_threads = (size_t)atoi(optarg) > 0 ? (size_t)atoi(optarg) : 1;
            break;
        case 'c':
            o.conf = optarg;
            break;
        case 's':
            o.seconds = atof(optarg);
            break;
        case 'r':
            o.rounds = atoi(optarg);
            break;
        case 'j':
            o.json = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
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
    if (o.seconds <= 0 || o.rounds < 1) {
        fprintf(stderr, "p11psk-bench: --seconds and --rounds must be positive\n");
        return 2;
    }
    if (!p11psk_config_load(p11psk_config_path(o.conf), &cfg, err, sizeof(err))) {
        fprintf(stderr, "p11psk-bench: %s\n", err);
        return 1;
    }
    o.socket = cfg.socket;
    if (hs)
        ok = bench_handshakes(o.conf, o.seconds, o.rounds, o.json) && ok;
    if (svc)
        ok = run_service(&o, "service", one, 1, clients, 3) && ok;
    if (sc)
        ok = run_service(&o, "scaling", scale, 3, clients + 2, 1) && ok;
    p11psk_config_free(&cfg);
    return ok ? 0 : 1;
}
