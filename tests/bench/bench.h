/* SPDX-License-Identifier: Apache-2.0 */
/* p11psk-bench: handshakes with handles against raw keys, and p11pskd under load. */
#ifndef P11PSK_BENCH_H
#define P11PSK_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "p11psk/handle.h"

double bench_now(void);

/* ---- order statistics (stats.c) ---- */

double bench_median(const double *v, size_t n); /* 0 when n is 0 */
double bench_min(const double *v, size_t n);
double bench_max(const double *v, size_t n);

/* ---- p11pskd's own view (svcprobe.c) ---- */

/* Derivation requests (TLS 1.3 and 1.2 ops, any result) p11pskd has answered so far, from
 * its STATUS counters. Needs the status permission (p11pskd's own uid has it). */
int bench_derivations(const char *socket, unsigned long long *n, char *err, size_t errcap);
/* n PINGs one after another on one warm connection; each round trip's time in out (us). */
int bench_ping_us(const char *socket, size_t n, double *out, char *err, size_t errcap);

/* ---- handshakes (bench_hs.c) ---- */

typedef struct {
    const char *conf;   /* p11pskd.conf: where the benchmark key is made */
    const char *socket; /* p11pskd's socket: counters and PING */
    double seconds;     /* per mode per round */
    int rounds;
} bench_hs_params;

/* Prints the handshake table, then one BENCH line per row. Returns 0 on any failure. */
int bench_handshakes(const bench_hs_params *p);

/* ---- service load (svcload.c) ---- */

typedef struct {
    uint8_t b[P11PSK_HANDLE_LEN];
} bench_handle;

typedef struct {
    bench_handle *handles;
    size_t n;
} bench_keys;

/* Makes sure n keys PREFIX000000.. exist in the token of config conf (NULL: default
 * lookup) and returns their handles: 1. Without create, keys missing from the token are
 * not made: returns -1 with the number found in out->n (creating 10,000 SoftHSM2 objects
 * takes many minutes, so that is done once, on request). 0 on errors, said on stderr. */
int bench_keys_make(const char *conf, size_t n, const char *prefix, int create, bench_keys *out);
void bench_keys_free(bench_keys *k);
/* Creates (again) key label with a fresh random value of len bytes, returned with its
 * handle: the raw side of a handshake needs the value. */
int bench_key_known(const char *conf, const char *label, uint8_t *value, size_t len,
                    uint8_t handle[P11PSK_HANDLE_LEN]);

enum { BENCH_OP_EXPAND, BENCH_OP_PRF }; /* a TLS 1.3 binder key, a TLS 1.2 master secret */

typedef struct {
    const char *socket;
    size_t clients;
    double seconds;
    int op;
    double rate;    /* total requests per second, spread over the clients; 0: back to back */
    size_t threads; /* load threads the connections are spread over */
    int warm;       /* ask for every key once, in order, then stop (not measured) */
} bench_svc_params;

typedef struct {
    size_t requests;
    unsigned long errors;
    double per_s, p50_us, p99_us, max_us;
    char first_error[200];
} bench_svc_result;

int bench_svc_run(const bench_svc_params *p, const bench_keys *keys, bench_svc_result *r);

#endif
