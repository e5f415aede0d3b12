/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What p11pskd itself says during a benchmark: its request counters (STATUS), to count the
 * round trips a handshake costs, and the time of one bare round trip (PING), the floor
 * any derivation over the socket pays.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "p11psk/client.h"
#include "p11psk/wire.h"

/* The ops a handshake's derivations use; PING, STATUS and FLUSH are not handshake work. */
static int derivation_op(const char *op, size_t len)
{
    static const char *const ops[] = {"tls13-early", "tls13-expand", "tls13-extract", "tls12-prf"};
    size_t i;

    for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        if (strlen(ops[i]) == len && memcmp(ops[i], op, len) == 0)
            return 1;
    return 0;
}

/* Sums the requests{op="OP",result=".."} N lines of a STATUS answer for derivation ops. */
static unsigned long long sum_derivations(const char *txt, size_t len)
{
    static const char pre[] = "requests{op=\"";
    unsigned long long sum = 0;
    const char *p = txt, *end = txt + len;

    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p)), *eol = nl ? nl : end, *q, *sp;

        if ((size_t)(eol - p) > sizeof(pre) - 1 && memcmp(p, pre, sizeof(pre) - 1) == 0 &&
            (q = memchr(p + sizeof(pre) - 1, '"', (size_t)(eol - p) - (sizeof(pre) - 1))) &&
            derivation_op(p + sizeof(pre) - 1, (size_t)(q - p) - (sizeof(pre) - 1)) &&
            (sp = memchr(q, ' ', (size_t)(eol - q))) != NULL) {
            char num[24];
            size_t n =
                (size_t)(eol - sp - 1) < sizeof(num) - 1 ? (size_t)(eol - sp - 1) : sizeof(num) - 1;

            memcpy(num, sp + 1, n);
            num[n] = '\0';
            sum += strtoull(num, NULL, 10);
        }
        p = eol + 1;
    }
    return sum;
}

/* One request without fields; on success *m points into resp. */
static int call_simple(p11psk_conn *c, int op, uint8_t *resp, p11psk_msg *m, char *err,
                       size_t errcap)
{
    p11psk_frame fr;
    char msg[200];
    int rc, e = 0;

    p11psk_frame_start(&fr, (uint8_t)op);
    if (p11psk_frame_finish(&fr) == 0) {
        snprintf(err, errcap, "cannot build a %s request", p11psk_op_str(op));
        return 0;
    }
    if ((rc = p11psk_conn_call(c, &fr, resp, m, &e)) != P11PSK_CALL_OK) {
        snprintf(err, errcap, "%s to p11pskd at %s: %s%s%s", p11psk_op_str(op), c->path,
                 p11psk_call_strerror(rc), e ? ": " : "", e ? strerror(e) : "");
        return 0;
    }
    if (m->code != P11PSK_ST_OK) {
        p11psk_msg_str(m, P11PSK_T_MSG, msg, sizeof(msg));
        snprintf(err, errcap, "%s refused by p11pskd: %s: %s", p11psk_op_str(op),
                 p11psk_status_str(m->code), msg);
        return 0;
    }
    return 1;
}

int bench_derivations(const char *socket, unsigned long long *n, char *err, size_t errcap)
{
    static uint8_t resp[P11PSK_WIRE_MAX]; /* one caller thread: the benchmark's main */
    p11psk_conn c;
    p11psk_msg m;
    int ok;

    p11psk_conn_init(&c, socket, P11PSK_DEFAULT_TIMEOUT_MS);
    ok = call_simple(&c, P11PSK_OP_STATUS, resp, &m, err, errcap);
    p11psk_conn_close(&c);
    if (ok && !m.f[P11PSK_T_INFO].present) {
        snprintf(err, errcap, "p11pskd's STATUS answer has no counters");
        ok = 0;
    }
    if (ok)
        *n = sum_derivations((const char *)m.f[P11PSK_T_INFO].p, m.f[P11PSK_T_INFO].len);
    return ok;
}

int bench_ping_us(const char *socket, size_t n, double *out, char *err, size_t errcap)
{
    static uint8_t resp[P11PSK_WIRE_MAX];
    p11psk_conn c;
    p11psk_msg m;
    size_t i;
    int ok;

    p11psk_conn_init(&c, socket, P11PSK_DEFAULT_TIMEOUT_MS);
    /* The first call connects: not a round trip a handshake pays on a warm connection. */
    ok = call_simple(&c, P11PSK_OP_PING, resp, &m, err, errcap);
    for (i = 0; ok && i < n; i++) {
        double t0 = bench_now();

        ok = call_simple(&c, P11PSK_OP_PING, resp, &m, err, errcap);
        out[i] = (bench_now() - t0) * 1e6;
    }
    p11psk_conn_close(&c);
    return ok;
}
