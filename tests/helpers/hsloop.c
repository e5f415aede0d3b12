/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p11psk-hsloop: TLS-PSK handshakes in one process, client and server joined by a BIO pair,
 * from any number of threads and optionally on both sides of a fork. Loads OpenSSL's
 * configuration like any application (OPENSSL_CONF), so a handle as PSK goes through the
 * p11psk provider. Each handshake ends with data both ways, proving the keys match.
 *
 * Output: with -v one line per handshake,
 *   hs pid=P role=R thread=T n=I start_ms=EPOCH_MS dur_ms=D ok
 *   hs pid=P role=R thread=T n=I start_ms=EPOCH_MS dur_ms=D fail: <first OpenSSL error>
 * then always "elapsed_ms=E rate_per_s=R" and last "handshakes=N ok=N failed=N".
 * Exit status: 0 all ok, 1 some failed, 2 usage or setup error.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>

#include "hs.h"
#include "p11psk/handle.h"

#define HSLOOP_THREADS_MAX 256

typedef struct {
    p11psk_hs *hs;
    const char *role;
    int thread;
    long count;
    int interval_ms;
    int verbose;
    long ok;
    long failed;
} hsloop_worker;

static long long hsloop_ms(clockid_t clk)
{
    struct timespec ts;

    clock_gettime(clk, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void hsloop_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void *hsloop_worker_run(void *arg)
{
    hsloop_worker *w = arg;
    char err[512];
    long i;

    for (i = 0; i < w->count; i++) {
        long long start = hsloop_ms(CLOCK_REALTIME), t0 = hsloop_ms(CLOCK_MONOTONIC);
        int ok = p11psk_hs_run(w->hs, err, sizeof(err));
        long long dur = hsloop_ms(CLOCK_MONOTONIC) - t0;

        if (ok)
            w->ok++;
        else
            w->failed++;
        /* One printf per line: stdio locks the stream, so thread lines never mix. */
        if (w->verbose)
            printf("hs pid=%ld role=%s thread=%d n=%ld start_ms=%lld dur_ms=%lld %s%s\n",
                   (long)getpid(), w->role, w->thread, i, start, dur,
                   ok ? "ok" : "fail: ", ok ? "" : err);
        if (w->interval_ms > 0 && i + 1 < w->count)
            hsloop_sleep_ms(w->interval_ms);
    }
    return NULL;
}

/* Runs nthreads workers of count handshakes each; adds their results to *ok, *failed. */
static int hsloop_run(p11psk_hs *hs, const char *role, int nthreads, long count, int interval_ms,
                      int verbose, long *ok, long *failed)
{
    hsloop_worker w[HSLOOP_THREADS_MAX];
    pthread_t tid[HSLOOP_THREADS_MAX];
    int i, started = 0, rc = 1;

    for (i = 0; i < nthreads; i++)
        w[i] = (hsloop_worker){hs, role, i, count, interval_ms, verbose, 0, 0};
    if (nthreads == 1) {
        hsloop_worker_run(&w[0]);
        started = 1;
    } else {
        for (; started < nthreads; started++) {
            if (pthread_create(&tid[started], NULL, hsloop_worker_run, &w[started]) != 0) {
                fprintf(stderr, "hsloop: cannot start thread %d\n", started);
                rc = 0;
                break;
            }
        }
        for (i = 0; i < started; i++)
            pthread_join(tid[i], NULL);
    }
    for (i = 0; i < started; i++) {
        *ok += w[i].ok;
        *failed += w[i].failed;
    }
    return rc;
}

static void hsloop_summary(long ok, long failed, long long elapsed_ms)
{
    long n = ok + failed;

    printf("elapsed_ms=%lld rate_per_s=%.1f\n", elapsed_ms,
           elapsed_ms > 0 ? (double)n * 1000.0 / (double)elapsed_ms : 0.0);
    printf("handshakes=%ld ok=%ld failed=%ld\n", n, ok, failed);
}

static int hsloop_psk(const char *opt, const char *hex, unsigned char *out, size_t *outlen)
{
    long n = p11psk_hex_decode(hex, out, P11PSK_HS_PSK_MAX);

    if (n <= 0) {
        fprintf(stderr, "hsloop: %s: expected hex of 1..%d bytes\n", opt, P11PSK_HS_PSK_MAX);
        return 0;
    }
    *outlen = (size_t)n;
    return 1;
}

static long hsloop_num(const char *opt, const char *s, long min, long max)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "hsloop: %s: expected a number in %ld..%ld\n", opt, min, max);
        exit(2);
    }
    return v;
}

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--tls13|--tls12] [--cipher LIST] --client-psk HEX --server-psk HEX\n"
            "       [--identity ID] [--threads N] [--count M] [--interval-ms MS] [--fork] [-v]\n"
            "Each of N threads runs M in-process PSK handshakes (client and server over a BIO\n"
            "pair) and checks data both ways. --fork: the parent runs them, forks, then parent\n"
            "and child both run them again. The PSKs are raw keys or p11psk handles (hex).\n",
            prog);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"tls13", no_argument, NULL, '3'},
                                         {"tls12", no_argument, NULL, '2'},
                                         {"cipher", required_argument, NULL, 'c'},
                                         {"client-psk", required_argument, NULL, 'C'},
                                         {"server-psk", required_argument, NULL, 'S'},
                                         {"identity", required_argument, NULL, 'i'},
                                         {"threads", required_argument, NULL, 't'},
                                         {"count", required_argument, NULL, 'n'},
                                         {"interval-ms", required_argument, NULL, 'I'},
                                         {"fork", no_argument, NULL, 'f'},
                                         {"verbose", no_argument, NULL, 'v'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    p11psk_hs_config cfg;
    p11psk_hs *hs = NULL;
    int o, nthreads = 1, interval_ms = 0, do_fork = 0, verbose = 0, have_c = 0, have_s = 0;
    int ret = 2, fds[2] = {-1, -1};
    long count = 1, ok = 0, failed = 0;
    long long t0;
    char err[512];

    memset(&cfg, 0, sizeof(cfg));
    cfg.tls13 = 1;
    snprintf(cfg.identity, sizeof(cfg.identity), "Client_identity");
    while ((o = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
        switch (o) {
        case '3':
            cfg.tls13 = 1;
            break;
        case '2':
            cfg.tls13 = 0;
            break;
        case 'c':
            cfg.cipher = optarg;
            break;
        case 'C':
            if (!hsloop_psk("--client-psk", optarg, cfg.client_psk, &cfg.client_psk_len))
                return 2;
            have_c = 1;
            break;
        case 'S':
            if (!hsloop_psk("--server-psk", optarg, cfg.server_psk, &cfg.server_psk_len))
                return 2;
            have_s = 1;
            break;
        case 'i':
            if (strlen(optarg) == 0 || strlen(optarg) > P11PSK_HS_IDENTITY_MAX) {
                fprintf(stderr, "hsloop: --identity: 1..%d characters\n", P11PSK_HS_IDENTITY_MAX);
                return 2;
            }
            snprintf(cfg.identity, sizeof(cfg.identity), "%s", optarg);
            break;
        case 't':
            nthreads = (int)hsloop_num("--threads", optarg, 1, HSLOOP_THREADS_MAX);
            break;
        case 'n':
            count = hsloop_num("--count", optarg, 0, 100000000);
            break;
        case 'I':
            interval_ms = (int)hsloop_num("--interval-ms", optarg, 0, 600000);
            break;
        case 'f':
            do_fork = 1;
            break;
        case 'v':
            verbose = 1;
            break;
        case 'h':
            usage(argv[0]);
            return 0;
        default:
            usage(argv[0]);
            return 2;
        }
    }
    if (optind != argc || !have_c || !have_s) {
        usage(argv[0]);
        return 2;
    }
    /* Lines must reach a pipe as they happen, and never twice (buffer copied by fork). */
    setvbuf(stdout, NULL, _IOLBF, 0);

    if (!OPENSSL_init_ssl(OPENSSL_INIT_LOAD_CONFIG, NULL)) {
        ERR_print_errors_fp(stderr);
        return 2;
    }
    if (verbose)
        printf("pid=%ld provider p11psk %s\n", (long)getpid(),
               OSSL_PROVIDER_available(NULL, "p11psk") ? "loaded" : "not loaded");
    if ((hs = p11psk_hs_new(&cfg, err, sizeof(err))) == NULL) {
        fprintf(stderr, "hsloop: %s\n", err);
        goto end;
    }
    OPENSSL_cleanse(&cfg, sizeof(cfg));

    t0 = hsloop_ms(CLOCK_MONOTONIC);
    if (!hsloop_run(hs, do_fork ? "parent" : "main", nthreads, count, interval_ms, verbose, &ok,
                    &failed))
        goto end;
    if (do_fork) {
        long cres[2] = {0, 0};
        int status = 0;
        pid_t pid;

        if (pipe(fds) != 0 || (pid = fork()) < 0) {
            perror("hsloop: fork");
            goto end;
        }
        if (pid == 0) {
            close(fds[0]);
            hsloop_run(hs, "child", nthreads, count, interval_ms, verbose, &cres[0], &cres[1]);
            if (write(fds[1], cres, sizeof(cres)) != (ssize_t)sizeof(cres))
                _exit(3);
            close(fds[1]);
            p11psk_hs_free(hs);
            /* Full exit: the provider's teardown runs in the child as in any process. */
            exit(cres[1] == 0 ? 0 : 1);
        }
        close(fds[1]);
        fds[1] = -1;
        if (verbose)
            printf("pid=%ld forked child pid=%ld\n", (long)getpid(), (long)pid);
        hsloop_run(hs, "parent", nthreads, count, interval_ms, verbose, &ok, &failed);
        if (read(fds[0], cres, sizeof(cres)) != (ssize_t)sizeof(cres)) {
            fprintf(stderr, "hsloop: child %ld reported nothing\n", (long)pid);
            cres[1] = 1;
        }
        ok += cres[0];
        failed += cres[1];
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
            (WEXITSTATUS(status) != 0 && cres[1] == 0)) {
            fprintf(stderr, "hsloop: child %ld ended abnormally (status 0x%x)\n", (long)pid,
                    status);
            failed++;
        }
    }
    hsloop_summary(ok, failed, hsloop_ms(CLOCK_MONOTONIC) - t0);
    ret = failed == 0 ? 0 : 1;
end:
    if (fds[0] >= 0)
        close(fds[0]);
    if (fds[1] >= 0)
        close(fds[1]);
    OPENSSL_cleanse(&cfg, sizeof(cfg));
    p11psk_hs_free(hs);
    return ret;
}
