/* The handshake part of p11psk-bench: in-process handshakes per mode, interleaved. */
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "hs.h"

enum { M_RAW, M_RAWP, M_HANDLE, M_BOTH, M_N };

static const char *const mode_name[M_N] = {"raw", "raw+provider", "handle/raw", "handle/handle"};
static const char *const mode_help[M_N] = {
    "raw keys, provider not loaded (the application before p11psk)",
    "raw keys, provider loaded (delegation cost only)",
    "handle on the client, raw key on the server",
    "handles on both sides",
};

static const struct {
    const char *name;
    int tls13;
    const char *cipher;
} suites[] = {
    {"TLS1.3 X25519+PSK", 1, "TLS_AES_128_GCM_SHA256"},
    {"TLS1.2 PSK-AES128-GCM-SHA256", 0, "PSK-AES128-GCM-SHA256"},
    {"TLS1.2 ECDHE-PSK-AES128-CBC-SHA256", 0, "ECDHE-PSK-AES128-CBC-SHA256"},
};

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

/* Handshakes in `seconds` with `threads` threads; adds to *ok and *failed. */
static double slice(p11psk_hs *hs, int threads, double seconds, unsigned long *ok,
                    unsigned long *failed, char *err, size_t errcap)
{
    runner r[2];
    pthread_t th[2];
    double t0 = bench_now(), t1;
    int i;

    memset(r, 0, sizeof(r));
    for (i = 0; i < threads; i++) {
        r[i].hs = hs;
        r[i].stop_at = t0 + seconds;
        pthread_create(&th[i], NULL, run_main, &r[i]);
    }
    for (i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        *ok += r[i].ok;
        *failed += r[i].failed;
        if (r[i].failed > 0 && err[0] == '\0')
            snprintf(err, errcap, "%s", r[i].err);
    }
    t1 = bench_now();
    return t1 - t0;
}

int bench_handshakes(const char *conf, double seconds, int rounds, int json)
{
    uint8_t raw[32], handle[P11PSK_HANDLE_LEN];
    OSSL_LIB_CTX *plain = OSSL_LIB_CTX_new();
    OSSL_PROVIDER *dflt = plain ? OSSL_PROVIDER_load(plain, "default") : NULL;
    char err[256];
    size_t s;
    int threads, m, round, rc = 1;

    if (dflt == NULL || !bench_key_known(conf, "bench-hs", raw, sizeof(raw), handle)) {
        fprintf(stderr, "p11psk-bench: handshake setup failed\n");
        rc = 0;
        goto out;
    }
    if (!json) {
        printf("handshakes: one process, both roles, BIO pair; %.1f s per cell in %d "
               "interleaved slices\n",
               seconds, rounds);
        for (m = 0; m < M_N; m++)
            printf("  %-14s %s\n", mode_name[m], mode_help[m]);
        printf("\n%-36s %7s %-14s %12s %8s\n", "suite", "threads", "mode", "handshakes/s",
               "vs raw");
    }
    for (s = 0; s < sizeof(suites) / sizeof(suites[0]); s++) {
        for (threads = 1; threads <= 2; threads++) {
            p11psk_hs *hs[M_N] = {NULL};
            unsigned long ok[M_N] = {0}, failed[M_N] = {0};
            double secs[M_N] = {0}, rate[M_N];
            char ferr[M_N][200];

            memset(ferr, 0, sizeof(ferr));
            for (m = 0; m < M_N; m++) {
                p11psk_hs_config hc;

                memset(&hc, 0, sizeof(hc));
                hc.tls13 = suites[s].tls13;
                hc.cipher = suites[s].cipher;
                hc.libctx = m == M_RAW ? plain : NULL;
                snprintf(hc.identity, sizeof(hc.identity), "bench-hs");
                memcpy(hc.client_psk, m >= M_HANDLE ? handle : raw, 32);
                hc.client_psk_len = 32;
                memcpy(hc.server_psk, m == M_BOTH ? handle : raw, 32);
                hc.server_psk_len = 32;
                if ((hs[m] = p11psk_hs_new(&hc, err, sizeof(err))) == NULL) {
                    fprintf(stderr, "p11psk-bench: %s %s: %s\n", suites[s].name, mode_name[m],
                            err);
                    rc = 0;
                }
            }
            /* Interleave: every mode gets a slice in every round. */
            for (round = 0; rc && round < rounds; round++)
                for (m = 0; m < M_N; m++)
                    secs[m] += slice(hs[m], threads, seconds / rounds, &ok[m], &failed[m],
                                     ferr[m], sizeof(ferr[m]));
            for (m = 0; rc && m < M_N; m++) {
                rate[m] = (double)ok[m] / secs[m];
                if (json)
                    printf("{\"part\":\"handshakes\",\"suite\":\"%s\",\"threads\":%d,"
                           "\"mode\":\"%s\",\"handshakes_per_s\":%.0f,\"ratio_to_raw\":%.3f,"
                           "\"handshakes\":%lu,\"failed\":%lu}\n",
                           suites[s].name, threads, mode_name[m], rate[m], rate[m] / rate[M_RAW],
                           ok[m], failed[m]);
                else
                    printf("%-36s %7d %-14s %12.0f %7.2fx%s%s\n", suites[s].name, threads,
                           mode_name[m], rate[m], rate[m] / rate[M_RAW],
                           failed[m] ? "  FAILED: " : "", failed[m] ? ferr[m] : "");
                if (failed[m])
                    rc = 0;
            }
            fflush(stdout);
            for (m = 0; m < M_N; m++)
                p11psk_hs_free(hs[m]);
        }
    }
out:
    OPENSSL_cleanse(raw, sizeof(raw));
    OSSL_PROVIDER_unload(dflt);
    OSSL_LIB_CTX_free(plain);
    return rc;
}
